"""Which YOLO task a labeling-config control needs: pose, OBB and classification controls name theirs."""

from __future__ import annotations

from formats.label_config import Control

# The YOLO task each control kind needs, for controls that need one other than detection/segmentation.
TASK_CONTROLS = {"KeyPointLabels": "pose", "Choices": "classify", "Taxonomy": "classify"}


def required_task(control: Control) -> str | None:
    """The YOLO task a control needs a model of, when it is not a detection/segmentation control."""
    if control.tag == "RectangleLabels" and control.options.obb:
        return "obb"
    return TASK_CONTROLS.get(control.tag)
