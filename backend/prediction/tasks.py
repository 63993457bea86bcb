"""Whether a model can answer a control, and the one place regions of pose, OBB and classification outputs are built."""

from __future__ import annotations

from backend.prediction.classification import choices_regions
from backend.prediction.obb import rotated_box_regions
from backend.prediction.pose import pose_regions
from backend.prediction.taxonomy import taxonomy_regions
from formats.control_tasks import required_task
from formats.label_config import Control
from backend.models.yolo_tasks import TASK_NAMES, ClassProbabilities, Poses, RotatedBoxes, TaskOutput

VIDEO_TASKS = ("detect", "segment")  # models Ultralytics' trackers take boxes from


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
