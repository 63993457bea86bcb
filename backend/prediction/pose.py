"""KeyPointLabels with a YOLO pose model: one keypoint region per detected keypoint.

Each `<Label model_index="i">` names keypoint i (of the classes in its `predicted_values`, else of
any class). With `model_add_bboxes` (the default) the object's box goes to the config's
RectangleLabels on the same image that has a label for the object's class, and the object's
keypoints carry that box's id as `parentID`, which is how Label Studio groups regions; without a
box, the object's later keypoints carry its first keypoint's id.
"""

from __future__ import annotations

from formats.label_config import Control
from backend.models.yolo_tasks import Poses
from formats.regions import result_region, rectangle_region


def box_control(keypoints: Control, class_name: str) -> Control | None:
    """The RectangleLabels on the keypoints' image with a label for `class_name`."""
    return next((c for c in keypoints.options.box_controls if c.label_for(class_name) is not None), None)


def keypoint_region(control: Control, label: str, point: tuple[float, float], score: float,
                    width: int, height: int) -> dict:
    x, y = point
    value = {"x": x * 100.0 / width, "y": y * 100.0 / height, "width": control.options.point_size,
             control.type: [label]}
    return result_region(control, width, height, value, score)


def pose_regions(control: Control, found: Poses, threshold: float,
                 width: int, height: int) -> list[dict]:
    regions: list[dict] = []
    options = control.options
    for k, class_name in enumerate(found.class_names):
        if found.scores[k] < threshold:
            continue
        points = []
        for index, (point, point_score) in enumerate(zip(found.keypoints[k], found.keypoint_scores[k])):
            label = options.keypoint_label(class_name, index)
            if label is not None and point_score >= options.point_threshold:
                points.append(keypoint_region(control, label, tuple(point), point_score, width, height))
        if not points:
            continue
        target = box_control(control, class_name) if options.add_bboxes else None
        parent = None
        if target is not None:
            box = rectangle_region(target, target.label_for(class_name), tuple(found.boxes[k]), found.scores[k],
                                   width, height)
            regions.append(box)
            parent = box["id"]
        for point in points:
            if parent is not None:
                point["parentID"] = parent
            parent = parent or point["id"]
        regions.extend(points)
    return regions
