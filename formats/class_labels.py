"""Image-level classes (Choices and Taxonomy predictions) as files: COCO has no image labels, so

- `annotations/classification_default.json` is COCO-shaped: `images`, `categories` (the Choice values;
  a Taxonomy node as its path joined with "/"), and one `annotations` entry per chosen class of an image,
  `{"id", "image_id", "category_id", "score"}`, without bbox or segmentation (pycocotools loads it;
  detection tools do not apply);
- `annotations/classification_default.csv` has one row per image: `file_name,label,score`, the label
  empty when no class reached the threshold, and one row per class when several were chosen.

`score` is the region's score: the class's probability (the mean of the chosen ones with choice="multiple").
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from formats.label_config import Control
from formats.coco import CocoWriter, coco_categories, coco_image

CLASS_TAGS = ("Choices", "Taxonomy")
JSON_NAME = "classification_default.json"
CSV_NAME = "classification_default.csv"


def class_categories(controls: Sequence[Control]) -> list[str]:
    """The category names of the classification controls, in config order."""
    return list(dict.fromkeys(label for control in controls if control.tag in CLASS_TAGS for label in control.labels))


def chosen_classes(regions: list[dict], controls: Sequence[Control]) -> list[tuple[str, float]]:
    """(category name, score) of each class the classification regions chose."""
    names = {c.name for c in controls if c.tag in CLASS_TAGS}
    chosen = []
    for region in regions:
        if region.get("from_name") not in names:
            continue
        value = region.get("value") or {}
        labels = value.get("choices") or ["/".join(path) for path in value.get("taxonomy") or []]
        chosen += [(label, region.get("score", 0.0)) for label in labels]
    return chosen


class ClassLabelsWriter:
    """Writes the two files from images given one at a time (the JSON through CocoWriter's line files)."""

    def __init__(self, controls: Sequence[Control], work_dir: Path) -> None:
        self._controls = [c for c in controls if c.tag in CLASS_TAGS]
        self._names = class_categories(self._controls)
        self._ids = {name: category_id for category_id, name in enumerate(self._names)}
        self._coco = CocoWriter(work_dir / "classes")
        self._csv_path = work_dir / CSV_NAME
        self._csv_file = open(self._csv_path, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["file_name", "label", "score"])

    def add(self, file_name: str, width: int, height: int, regions: list[dict]) -> int:
        """Record one image's chosen classes; how many there were."""
        image_id = self._coco.n_images + 1
        self._coco.add_image(coco_image(image_id, file_name, width, height))
        chosen = chosen_classes(regions, self._controls)
        for label, score in chosen:
            self._coco.add_annotation({"id": self._coco.n_annotations + 1, "image_id": image_id,
                                       "category_id": self._ids[label], "score": score})
            self._csv.writerow([file_name, label, score])
        if not chosen:
            self._csv.writerow([file_name, "", ""])
        return len(chosen)

    def write(self, annotations_dir: Path, info: dict) -> list[Path]:
        self._coco.write(annotations_dir / JSON_NAME, coco_categories(self._names), info)
        self._csv_file.close()
        self._csv_path.replace(annotations_dir / CSV_NAME)
        return [annotations_dir / JSON_NAME, annotations_dir / CSV_NAME]
