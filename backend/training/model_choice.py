"""Which model file answers a control: the project's promoted trained model, else the config, else the settings."""

from __future__ import annotations

from dataclasses import dataclass

from backend.settings import Settings
from backend.training.registry import promoted_version
from backend.training.tasks import serves_control
from formats.control_tasks import required_task
from formats.label_config import Control

# The settings field naming a pose/OBB/classification control's model when it has no `model_path`.
DEFAULT_MODEL_SETTINGS = {"pose": "yolo_pose_model", "obb": "yolo_obb_model", "classify": "yolo_cls_model"}


def default_model_setting(control: Control) -> str | None:
    """The settings field naming a pose/OBB/classification control's model when it has no `model_path`."""
    task = required_task(control)
    return DEFAULT_MODEL_SETTINGS[task] if task else None


@dataclass(frozen=True)
class ModelChoice:
    path_value: str  # as written in the config or the settings
    setting: str  # where it came from, for error messages
    task_model: bool = False  # a pose, OBB or classification control's model (TaskYoloModel)
    trained: bool = False  # the project's trained model: predicts at the size it was trained at, not YOLO_IMGSZ


def model_choice(control: Control, settings: Settings, project: object = None) -> ModelChoice:
    """The model file a control uses: for a trainable control of a project (Label Studio's "12.<timestamp>"
    or 12) with a promoted trained model, that model; else `model_path`, else YOLO_SEG_MODEL / YOLO_DET_MODEL.
    Pose, OBB and classification controls: the project's trained model of their task, else `model_path`, else
    YOLO_POSE_MODEL / YOLO_OBB_MODEL / YOLO_CLS_MODEL."""
    task_setting = default_model_setting(control)
    promoted = promoted_version(settings, project) if project is not None and control.trainable else None
    if promoted is not None and serves_control(promoted.task, control):
        return ModelChoice(promoted.relative_path, f"trained model {promoted.name} of project {promoted.project}",
                           task_setting is not None, trained=True)
    if task_setting is not None:
        if control.model_path:
            return ModelChoice(control.model_path, f"model_path on <{control.tag} name=\"{control.name}\">", True)
        return ModelChoice(getattr(settings, task_setting), task_setting.upper(), True)
    if control.model_path:
        return ModelChoice(control.model_path, f"model_path on <{control.tag} name=\"{control.name}\">")
    if control.wants_masks:
        return ModelChoice(settings.yolo_seg_model, "YOLO_SEG_MODEL")
    return ModelChoice(settings.yolo_det_model, "YOLO_DET_MODEL")
