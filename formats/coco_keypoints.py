"""Label Studio keypoint regions -> COCO keypoints (`person_keypoints_*.json`, as CVAT's "COCO Keypoints"
import and pycocotools' COCOeval with iouType="keypoints" read it).

Each object is the keypoints Label Studio links into one group (the backend sets each point's `parentID`
to its object's box, or to its first point) with that box. Its annotation has `keypoints` [x, y, v] for
every keypoint of its category in pixels, v=2 for the points present (those above the control's
`model_point_threshold`) and x=y=v=0 for the others, `num_keypoints`, and `bbox`/`area` of its box (of
its points when it has no box). Categories are the pose model's classes, each with its keypoint names:
the labels of the config's KeyPointLabels (`model_index`), else the model's keypoint names (COCO's
person keypoints and skeleton for a 17-keypoint "person" model whose names are its indices).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from formats.label_config import Control
from formats.coco import coco_annotation

COCO_PERSON_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                         "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                         "right_knee", "left_ankle", "right_ankle")
COCO_PERSON_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
                        (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))  # 1-based, as COCO's


@dataclass(frozen=True)
class PoseCategory:
    name: str  # the model's class
    keypoints: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()  # 1-based keypoint pairs


def model_keypoint_names(class_name: str, names: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """A class's keypoint names and skeleton from the model: COCO's for a person model with unnamed keypoints."""
    unnamed = all(name == str(i) for i, name in enumerate(names))
    if unnamed and class_name.lower() == "person" and len(names) == len(COCO_PERSON_KEYPOINTS):
        return COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON
    return tuple(names), ()


def pose_categories(keypoint_names: dict[str, tuple[str, ...]], controls: Sequence[Control] = ()) -> list[PoseCategory]:
    """The categories of a pose model (class -> its keypoint names), with the names the KeyPointLabels
    `controls` give its keypoints where they name them (the first control naming one wins)."""
    categories = []
    for class_name, names in keypoint_names.items():
        names, skeleton = model_keypoint_names(class_name, names)
        labelled = [next((label for c in controls if (label := c.options.keypoint_label(class_name, i)) is not None), None)
                    for i in range(len(names))]
        categories.append(PoseCategory(class_name, tuple(label or name for label, name in zip(labelled, names)), skeleton))
    return categories


def coco_keypoint_categories(categories: Sequence[PoseCategory]) -> list[dict]:
    return [{"id": category_id, "name": c.name, "supercategory": "none", "keypoints": list(c.keypoints),
             "skeleton": [list(pair) for pair in c.skeleton]} for category_id, c in enumerate(categories)]


class KeypointDecoder:
    """Turns one prediction's regions into COCO keypoint annotations for a config's KeyPointLabels."""

    def __init__(self, categories: Sequence[PoseCategory], controls: Sequence[Control]) -> None:
        self._categories = list(categories)
        self._controls = {c.name: c for c in controls}

    def annotations(self, regions: list[dict], image_id: int, first_id: int) -> list[dict]:
        """The COCO annotations of the keypoint objects among `regions`, numbered from `first_id`."""
        boxes = {r.get("id"): r for r in regions if r.get("type") == "rectanglelabels"}
        groups: dict[object, list[dict]] = defaultdict(list)
        for region in regions:
            if region.get("type") == "keypointlabels" and region.get("from_name") in self._controls:
                groups[region.get("parentID") or region.get("id")].append(region)
        annotations = []
        for parent, points in groups.items():
            annotation = self._object(points, boxes.get(parent), image_id, first_id + len(annotations))
            if annotation is not None:
                annotations.append(annotation)
        return annotations

    def _object(self, points: list[dict], box: dict | None, image_id: int, annotation_id: int) -> dict | None:
        control = self._controls[points[0]["from_name"]]
        category_id = self._category_of(control, points, box)
        if category_id is None:
            return None
        category = self._categories[category_id]
        keypoints = [0.0] * (3 * len(category.keypoints))
        for point in points:
            index = self._index_of_label(control, category.name, point["value"]["keypointlabels"][0])
            if index is None or index >= len(category.keypoints):
                continue
            width, height = point["original_width"], point["original_height"]
            keypoints[3 * index:3 * index + 3] = [point["value"]["x"] * width / 100, point["value"]["y"] * height / 100, 2]
        bbox = _box_xywh(box) if box is not None else _points_xywh(keypoints)
        annotation = coco_annotation(annotation_id, image_id, category_id, [], bbox, bbox[2] * bbox[3])
        del annotation["segmentation"]  # a keypoint object has no outline
        scores = [point["score"] for point in points]
        return {**annotation, "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
                "score": box["score"] if box is not None else round(sum(scores) / len(scores), 6)}

    def _category_of(self, control: Control, points: list[dict], box: dict | None) -> int | None:
        """The first category (model order) every point's label and the box's label can belong to."""
        labels = [point["value"]["keypointlabels"][0] for point in points]
        box_label = box["value"]["rectanglelabels"][0] if box is not None else None
        box_control = next((c for c in control.options.box_controls if box is not None and c.name == box["from_name"]), None)
        for category_id, category in enumerate(self._categories):
            if box_control is not None and box_control.label_for(category.name) != box_label:
                continue
            if all(self._index_of_label(control, category.name, label) is not None for label in labels):
                return category_id
        return None

    @staticmethod
    def _index_of_label(control: Control, class_name: str, label: str) -> int | None:
        lowered = class_name.lower()
        for wanted in (lowered, ""):
            for keypoint in control.options.keypoints:
                if keypoint.label == label and keypoint.class_name == wanted:
                    return keypoint.index
        return None


def _box_xywh(box: dict) -> list[float]:
    value, width, height = box["value"], box["original_width"], box["original_height"]
    return [value["x"] * width / 100, value["y"] * height / 100, value["width"] * width / 100, value["height"] * height / 100]


def _points_xywh(keypoints: list[float]) -> list[float]:
    present = [(x, y) for x, y, v in zip(keypoints[0::3], keypoints[1::3], keypoints[2::3]) if v > 0]
    xs, ys = [x for x, _ in present], [y for _, y in present]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
