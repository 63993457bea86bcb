"""Which YOLO task a project trains, which controls a trained model serves, and how each task is scored.

A config's trainable controls name the task: KeyPointLabels -> pose (its RectangleLabels are the
objects' boxes), RectangleLabels model_obb="true" -> obb, PolygonLabels/BrushLabels -> segment,
RectangleLabels -> detect, Choices -> classify. When several kinds are trainable the first of
TASK_PRIORITY trains; `model_trainable="false"` on the others chooses another.
"""

from __future__ import annotations

from formats.control_tasks import required_task
from formats.label_config import Control, LabelConfig

TASK_PRIORITY = ("pose", "obb", "segment", "detect", "classify")
# What the val split scores each task by (the promotion rule compares these figures).
METRICS = {"detect": "box mAP50-95", "segment": "mask mAP50-95", "pose": "pose mAP50-95",
           "obb": "box mAP50-95 (rotated)", "classify": "top-1 accuracy"}


def control_task(control: Control) -> str | None:
    """The YOLO task a control's annotations train; None for controls training does not read (video)."""
    if control.tag == "VideoRectangle":
        return None
    return required_task(control) or ("segment" if control.wants_masks else "detect")


def trainable_controls(config: LabelConfig) -> tuple[Control, ...]:
    return tuple(c for c in config.prediction_controls if c.trainable and control_task(c) is not None)


def project_task(config: LabelConfig) -> str | None:
    """The task the config trains (TASK_PRIORITY among its trainable controls), None when nothing trains."""
    tasks = {control_task(c) for c in trainable_controls(config)}
    return next((task for task in TASK_PRIORITY if task in tasks), None)


def task_controls(config: LabelConfig, task: str) -> tuple[Control, ...]:
    """The trainable controls whose annotations make the dataset of `task` (detect also reads masks' boxes)."""
    kinds = ("segment", "detect") if task in ("segment", "detect") else (task,)
    return tuple(c for c in trainable_controls(config) if control_task(c) in kinds)


def serves_control(model_task: str, control: Control) -> bool:
    """Whether a project's trained model of `model_task` answers `control` (a trainable control)."""
    wanted = required_task(control)
    if wanted is not None:
        return model_task == wanted
    return model_task == "segment" or (model_task == "detect" and not control.wants_masks)


def base_model_problem(model_task: str, task: str, model_name: str) -> str | None:
    """One sentence when a model cannot be fine-tuned on a dataset of `task`, else None (detection and
    segmentation datasets are given to either kind of model, as before pose, OBB and classification trained)."""
    if model_task == task or {model_task, task} <= {"detect", "segment"}:
        return None
    return (f"the labeling config trains a YOLO {task} model but its base model {model_name} is a {model_task} "
            f"model: set the control's model_path to a {task} model")
