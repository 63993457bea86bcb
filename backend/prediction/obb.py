"""RectangleLabels model_obb="true": a YOLO OBB model's rotated boxes as rotated Label Studio rectangles."""

from __future__ import annotations

from formats.geometry import rotated_box_to_ls_rect
from formats.label_config import Control
from backend.models.yolo_tasks import RotatedBoxes
from formats.regions import result_region


def rotated_box_regions(control: Control, found: RotatedBoxes, threshold: float, width: int, height: int) -> list[dict]:
    """One rectangle per rotated box whose class the control has a label for and whose score reaches the threshold."""
    regions = []
    for (cx, cy, w, h, angle), score, class_name in zip(found.xywhr, found.scores, found.class_names):
        label = control.label_for(class_name)
        if label is None or score < threshold:
            continue
        value = {**rotated_box_to_ls_rect((cx, cy), (w, h), angle, width, height), control.type: [label]}
        regions.append(result_region(control, width, height, value, score))
    return regions
