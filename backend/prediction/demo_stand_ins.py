"""Offline first start: the shipped demo models stand in for default YOLO models that cannot be downloaded.

YOLO_DET_MODEL, YOLO_SEG_MODEL, YOLO_POSE_MODEL, YOLO_OBB_MODEL and YOLO_CLS_MODEL default to Ultralytics'
yolov8n*.pt, which Ultralytics downloads on first use. When a setting is at its default, that file is not
in MODEL_ROOT and cannot be downloaded (no internet), and the demo model of the same task is in MODEL_ROOT
(the container image seeds /models with them), the demo model is served instead, and a WARNING says so once
per process and setting. A model chosen on purpose (another value, `model_path`, a trained model) is never
replaced: its failure stays an error naming the setting.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

from backend.models.cache import ModelCache, ModelPathError
from backend.models.yolo import YoloModel
from backend.models.yolo_files import model_exists
from backend.models.yolo_tasks import TaskYoloModel
from backend.prediction.predictor import YoloModels
from backend.settings import Settings
from backend.training.model_choice import ModelChoice

logger = logging.getLogger(__name__)

DEMO_MODELS = {
    "YOLO_DET_MODEL": "demo-shapes-det.pt",
    "YOLO_SEG_MODEL": "demo-shapes-seg.pt",
    "YOLO_POSE_MODEL": "demo-shapes-pose.pt",
    "YOLO_OBB_MODEL": "demo-shapes-obb.pt",
    "YOLO_CLS_MODEL": "demo-shapes-cls.pt",
}
DEFAULTS = {f.name.upper(): f.default for f in dataclasses.fields(Settings) if f.name.upper() in DEMO_MODELS}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def demo_stand_in(choice: ModelChoice, settings: Settings, error: ModelPathError) -> ModelChoice | None:
    """The demo model to serve in place of `choice`, which failed to load with `error`; None when it may not."""
    demo = DEMO_MODELS.get(choice.setting)
    if demo is None or choice.path_value != DEFAULTS[choice.setting]:
        return None
    root = settings.model_root_path
    if model_exists(root / choice.path_value) or not model_exists(root / demo):
        return None  # a file that is there but broken is an error; without the demo model there is nothing to serve
    with _warned_lock:
        first = choice.setting not in _warned
        _warned.add(choice.setting)
    if first:
        logger.warning("%s is %s (the default), which is not in MODEL_ROOT (%s) and could not be downloaded (%s): "
                       "serving the demo model %s instead, which knows only synthetic shapes. Put %s in MODEL_ROOT or "
                       "set %s to your model's file", choice.setting, choice.path_value, root, error, demo,
                       choice.path_value, choice.setting)
    return dataclasses.replace(choice, path_value=demo)


class DemoFallbackYoloModels(YoloModels):
    """YoloModels whose default models fall back to the demo models when they cannot be downloaded."""

    def __init__(self, settings: Settings, cache: ModelCache, device: str) -> None:
        super().__init__(settings, cache, device)
        # decided once per process, no download retries: the demo model, or the default itself when it loaded
        self._served_for: dict[ModelChoice, ModelChoice] = {}
        # Other threads wait here for the decision; the deciding thread's own load passes through (`_trying`).
        self._deciding = threading.RLock()
        self._trying: set[ModelChoice] = set()

    def path(self, choice: ModelChoice) -> Path:
        return super().path(self._served(choice))

    def get(self, choice: ModelChoice) -> YoloModel | TaskYoloModel:
        return super().get(self._served(choice))

    def _served(self, choice: ModelChoice) -> ModelChoice:
        """`choice`, or the demo model that stands in for it. Whether a default can be downloaded is only known
        by loading it, so the first path() or get() of a default loads it: a model version computed before the
        first load then names the demo model that answers, not the default."""
        if choice in self._served_for or not self._may_stand_in(choice):
            return self._served_for.get(choice, choice)
        with self._deciding:
            if choice in self._served_for or choice in self._trying:
                return self._served_for.get(choice, choice)
            self._trying.add(choice)
            try:
                super().get(choice)
                self._served_for[choice] = choice
            except ModelPathError as exc:
                stand_in = demo_stand_in(choice, self._settings, exc)
                if stand_in is not None:
                    self._served_for[choice] = stand_in
            finally:
                self._trying.discard(choice)
        return self._served_for.get(choice, choice)

    def _may_stand_in(self, choice: ModelChoice) -> bool:
        root = self._settings.model_root_path
        return (choice.setting in DEMO_MODELS and choice.path_value == DEFAULTS[choice.setting]
                and not model_exists(root / choice.path_value) and model_exists(root / DEMO_MODELS[choice.setting]))
