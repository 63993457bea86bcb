"""The backend's own predictor over batches of Label Studio tasks, one outcome per task.

Predictions are what `/predict` answers for the same tasks and labeling config (the backend's
services, built from the same settings); a task whose image cannot be fetched or decoded is a
failure with the reason, not an empty prediction, so a later run tries it again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from formats.label_config import LabelConfig, LabelConfigError, parse_label_config
from backend.sources.label_studio import Credentials
from backend.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

PREDICTED = "predicted"
FAILED = "failed"
SKIPPED = "skipped"  # already holds a prediction of this model version
FAILED_IMAGE = "image cannot be read"
FAILED_MODEL = "prediction failed"
FAILED_WRITE = "writing to Label Studio failed"


class JobError(Exception):
    """The job cannot run (labeling config, models, settings, Label Studio unreachable); the message says why."""


@dataclass(frozen=True)
class Outcome:
    task_id: int
    status: str  # PREDICTED | FAILED | SKIPPED
    reason: str = ""  # FAILED: one of the FAILED_* kinds
    detail: str = ""  # FAILED: what exactly
    prediction: dict | None = None  # PREDICTED: the Label Studio prediction (result, score, model_version)


def task_for_prediction(task: dict) -> dict:
    """What /predict receives of a task: its id and data (nothing else is needed, or kept in memory)."""
    return {"id": task["id"], "data": task.get("data") or {}}


def parse_config(label_config: str) -> LabelConfig:
    try:
        config = parse_label_config(label_config)
    except LabelConfigError as exc:
        raise JobError(f"the project's labeling config: {exc}") from None
    if not config.prediction_controls:
        raise JobError("the project's labeling config has no RectangleLabels, PolygonLabels or BrushLabels on an Image: "
                       "nothing to predict")
    return config


def build_backend(settings: Settings):  # noqa: ANN201 - backend.serving.services.Services
    from backend.serving.app import build_services

    try:
        return build_services(settings)
    except (SettingsError, ImportError, OSError, ValueError, RuntimeError) as exc:
        raise JobError(f"cannot start the backend's models: {exc}") from None


def model_version(services, config: LabelConfig, project: int | None = None) -> str:  # noqa: ANN001 - Services
    """The version /predict reports for this labeling config (and the project's promoted trained model);
    a task holding a prediction of it is done."""
    return services.model_version(config, project)


class TaskPredictor:
    """One process' models and image fetcher (the backend's services) for one labeling config."""

    def __init__(self, settings: Settings, label_config: str, credentials: Credentials | None,
                 project: int | None = None) -> None:
        self.config = parse_config(label_config)
        self._project = project  # a project with a promoted trained model is predicted by that model
        self._services = build_backend(settings)
        self._services.predictor.clusters_for_any_project = True  # the project was read from Label Studio itself
        self.version = model_version(self._services, self.config, project)
        self._credentials = credentials
        self._data_keys = sorted({control.data_key for control in self.config.prediction_controls})

    def check_models(self) -> None:
        """Load every model the config needs now, so a missing model stops the job before any task."""
        from backend.models.cache import ModelPathError
        from backend.prediction.predictor import PredictionConfigError

        try:
            self._services.predictor.plan(self.config, self._project)
        except (ModelPathError, PredictionConfigError) as exc:
            raise JobError(str(exc)) from None

    def predict(self, tasks: list[dict]) -> list[Outcome]:
        outcomes = []
        for task, prediction, failure in self._predict_each([task_for_prediction(task) for task in tasks]):
            task_id = int(task["id"])
            if failure is None and not (prediction and prediction["result"]):
                image_problem = self._image_problem(task)
                if image_problem:
                    outcomes.append(Outcome(task_id, FAILED, FAILED_IMAGE, image_problem))
                    continue
                if not prediction:  # not predicted although its images load: the predictor's warning says why
                    failure = "no prediction (the backend's warning for the batch says why)"
            if failure is not None:
                outcomes.append(Outcome(task_id, FAILED, FAILED_MODEL, failure))
            else:
                outcomes.append(Outcome(task_id, PREDICTED, prediction=prediction))
        return outcomes

    def _predict_each(self, tasks: list[dict]) -> Iterator[tuple[dict, dict | None, str | None]]:
        """(task, prediction, failure) for each task: one predictor call for the batch; if that call
        fails, the batch again task by task, so a task that breaks the call costs only itself."""
        from backend.models.cache import ModelPathError
        from backend.prediction.predictor import PredictionConfigError

        try:
            predictions = self._services.predictor.predict(tasks, self.config, self._credentials, self.version,
                                                           self._project)
        except (ModelPathError, PredictionConfigError) as exc:
            raise JobError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any failure of the call: find the task that caused it
            if len(tasks) == 1:
                logger.warning("task %s: prediction failed: %s", tasks[0].get("id"), exc)
                yield tasks[0], None, f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                for task in tasks:
                    yield from self._predict_each([task])
            return
        yield from ((task, prediction, None) for task, prediction in zip(tasks, predictions))

    def _image_problem(self, task: dict) -> str | None:
        """Why one of the task's images cannot be used, if so (the predictor only logs it)."""
        from backend.sources.images import ImageError

        for key in self._data_keys:
            url = task["data"].get(key)
            if not isinstance(url, str) or not url:
                return f"task data has no '{key}' image URL"
            try:
                self._services.fetcher.load(url, task["id"], self._credentials)
            except (ImageError, PermissionError, OSError) as exc:
                return str(exc)
        return None
