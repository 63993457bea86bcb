"""A real Label Studio JSON export (annotations copied from the backend's predictions) through
convert_to_rle_mask_coco: pycocotools reads the result and every brush mask survives pixel-exact."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e.conftest import LabelStudioExport, shapes_rgb

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def export_brush_masks(task: dict) -> Counter:
    """(label, mask bytes) of every brush region of the task's annotation, decoded by the SDK."""
    (annotation,) = task["annotations"]
    masks: Counter = Counter()
    for region in annotation["result"]:
        if region["type"] == "brushlabels":
            width, height = region["original_width"], region["original_height"]
            mask = np.asarray(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3] > 0
            masks[(region["value"]["brushlabels"][0], mask.tobytes())] += 1
    return masks


def test_export_converts_to_coco_with_pixel_exact_brush_masks(ls_export: LabelStudioExport, tmp_path: Path) -> None:
    converter = pytest.importorskip("tools.convert_to_rle_mask_coco")
    from pycocotools.coco import COCO

    out_dir = tmp_path / "coco"
    code = converter.main(["--json_file_path", str(ls_export.path), "--out_dir", str(out_dir),
                           "--label_config", str(ls_export.label_config), "--ls_data_dir", str(ls_export.ls_data_dir),
                           "--strict"])
    assert code == 0
    coco = COCO(str(out_dir / "annotations" / "ann.json"))
    tasks = {task["id"]: task for task in json.loads(ls_export.path.read_text())}
    assert sorted(image["ls_task_id"] for image in coco.dataset["images"]) == sorted(tasks)
    names = {category["id"]: category["name"] for category in coco.dataset["categories"]}
    brush_regions = 0
    for image in coco.dataset["images"]:
        task = tasks[image["ls_task_id"]]
        pixels = cv2.imread(str(out_dir / "images" / image["file_name"]), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.array_equal(pixels, shapes_rgb(ls_export.project.task_seeds[task["id"]]))
        converted: Counter = Counter()
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            if isinstance(ann["segmentation"], dict):  # RLE: the brush regions
                converted[(names[ann["category_id"]], coco.annToMask(ann).astype(bool).tobytes())] += 1
        expected = export_brush_masks(task)
        assert converted == expected
        brush_regions += sum(expected.values())
    assert brush_regions > 0
