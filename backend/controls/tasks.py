"""Which YOLO task a control needs, and the one place regions of pose, OBB and classification outputs are built."""

from __future__ import annotations

from backend.controls.classification import choices_regions
from backend.controls.obb import rotated_box_regions
from backend.controls.pose import pose_regions
from backend.controls.taxonomy import taxonomy_regions
from backend.label_config import Control
from backend.models.yolo_tasks import TASK_NAMES, ClassProbabilities, Poses, RotatedBoxes, TaskOutput

# The YOLO task each control kind needs, for controls that need one other than detection/segmentation.
TASK_CONTROLS = {"KeyPointLabels": "pose", "Choices": "classify", "Taxonomy": "classify"}
VIDEO_TASKS = ("detect", "segment")  # models Ultralytics' trackers take boxes from


def required_task(control: Control) -> str | None:
    """The YOLO task a control needs a model of, when it is not a detection/segmentation control."""
    if control.tag == "RectangleLabels" and control.options.obb:
        return "obb"
    return TASK_CONTROLS.get(control.tag)


def task_mismatch(control: Control, model_task: str, model_setting: str, model_file: str) -> str | None:
    """Why the model cannot answer the control (a 4xx message naming both), or None when it can."""
    wanted = VIDEO_TASKS if control.tag == "VideoRectangle" else (required_task(control),)
    if wanted == (None,) or model_task in wanted:
        return None
    names = " or ".join(TASK_NAMES[task] for task in wanted)
    hint = {"obb": ' (for rotated boxes set model_obb="true" on a RectangleLabels)', "pose": " (for KeyPointLabels)",
            "classify": " (for Choices or Taxonomy)"}.get(model_task, "")
    return (f"<{control.tag} name=\"{control.name}\"> needs a YOLO {names} model, but {model_setting}='{model_file}' "
            f"is a YOLO {TASK_NAMES.get(model_task, model_task)} model{hint}")


def task_regions(control: Control, output: TaskOutput, threshold: float,
                 width: int, height: int) -> list[dict]:
    """The regions of one image for a pose, OBB or classification control."""
    if isinstance(output, ClassProbabilities):
        if control.tag == "Taxonomy":
            return taxonomy_regions(control, output, threshold)
        return choices_regions(control, output, threshold)
    if isinstance(output, RotatedBoxes):
        return rotated_box_regions(control, output, threshold, width, height)
    if isinstance(output, Poses):
        return pose_regions(control, output, threshold, width, height)
    raise TypeError(f"no regions for {type(output).__name__}")


DEFAULT_MODEL_SETTINGS = {"pose": "yolo_pose_model", "obb": "yolo_obb_model", "classify": "yolo_cls_model"}


def default_model_setting(control: Control) -> str | None:
    """The settings field naming a pose/OBB/classification control's model when it has no `model_path`."""
    task = required_task(control)
    return DEFAULT_MODEL_SETTINGS[task] if task else None
