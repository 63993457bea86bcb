"""A project's annotations as a YOLO dataset: Label Studio's API -> task images -> formats.yolo_dataset.

Tasks come from Label Studio's JSON export endpoint through label-studio-sdk (each task with its
annotations, the same JSON a user exports); images are fetched by the backend's own ImageFetcher,
exactly as predictions fetch them (uploads with the token, Local Storage, cloud presign, http), and
the dataset is written by `formats.yolo_dataset.write_yolo_dataset` from the latest non-cancelled
annotation of each task, with a seeded train/val split.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backend.sources.images import ImageError, ImageFetcher
from formats.label_config import LabelConfig, LabelConfigError, parse_label_config
from backend.sources.label_studio import Credentials
from formats.ls_export import ExportError, iter_export_tasks, task_image_url
from formats.export_images import ImageSources
from backend.training.tasks import project_task, task_controls
from formats.yolo_dataset import write_yolo_dataset
from formats.yolo_task_dataset import TASK_KINDS

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.2
SPLIT_SEED = 0


class DatasetError(Exception):
    """The project's data cannot be read or used for training; the message says why."""


class TooFewImages(DatasetError):
    """Fewer annotated images than TRAIN_MIN_IMAGES: a refusal, not a failure."""


@dataclass(frozen=True)
class ProjectData:
    title: str
    label_config: str
    export_path: Path  # Label Studio's JSON export of the project


@dataclass(frozen=True)
class Dataset:
    yaml_path: Path
    task: str  # detect | segment | classify | pose | obb
    classes: tuple[str, ...]
    images: int
    annotations: int
    images_failed: int
    report: str


def read_project(credentials: Credentials | None, uid: str, into: Path, timeout: float) -> ProjectData:
    """The project's labeling config and its JSON export (every task with annotations), via the SDK; refused
    when Label Studio's project of that id was created at another time than the uid says (another project)."""
    if credentials is None or not credentials.hostname or not credentials.token:
        raise DatasetError("no Label Studio URL and API key: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, "
                           "or connect the model from Label Studio so /setup sends them")
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=credentials.hostname, api_key=credentials.token, timeout=timeout)
    project = int(uid.partition(".")[0])
    try:
        details = client.projects.get(id=project)
        created = details.created_at
        if created is None or f"{project}.{int(created.timestamp())}" != uid:
            raise DatasetError(f"Label Studio at {credentials.hostname} has a project {project} created at {created}, "
                               f"not the project {uid} this job was started for")
        into.mkdir(parents=True, exist_ok=True)
        export_path = into / "export.json"
        with export_path.open("wb") as handle:
            for chunk in client.projects.exports.download_sync(project, export_type="JSON", download_all_tasks=False):
                handle.write(chunk)
    except DatasetError:
        raise
    except Exception as exc:  # the SDK raises ApiError, httpx and its own token errors
        raise DatasetError(describe_api_error(exc, credentials.hostname, project)) from None
    return ProjectData(str(details.title or ""), str(details.label_config or ""), export_path)


def describe_api_error(exc: Exception, hostname: str, project: int) -> str:
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        return (f"Label Studio at {hostname} refused the API key (HTTP {status}): set LABEL_STUDIO_API_KEY to a "
                "personal access token, or enable legacy tokens for the organization")
    if status == 404:
        return f"Label Studio at {hostname} has no project {project} (HTTP 404)"
    if status is not None:
        return f"Label Studio at {hostname} answered HTTP {status} while reading project {project}"
    return f"Label Studio at {hostname} is unreachable: {type(exc).__name__}: {str(exc)[:200]}"


def trainable_task(config: LabelConfig) -> str:
    """The YOLO task the config trains (backend/training/tasks.py says how it is chosen)."""
    task = project_task(config)
    if task is None:
        raise DatasetError("the labeling config has no trainable RectangleLabels, PolygonLabels, BrushLabels, "
                           "KeyPointLabels or Choices (model_trainable=\"false\" on all of them?)")
    if task == "classify" and len(task_controls(config, task)) > 1:
        names = ", ".join(c.name for c in task_controls(config, task))
        raise DatasetError(f"several trainable Choices ({names}): a classification model learns one of them; "
                           "set model_trainable=\"false\" on the others")
    return task


def build_dataset(data: ProjectData, fetcher: ImageFetcher, credentials: Credentials | None, out_dir: Path,
                  min_images: int, polygon_tolerance: float) -> Dataset:
    """Write the YOLO dataset into `out_dir`; raises TooFewImages or DatasetError."""
    try:
        config = parse_label_config(data.label_config)
    except LabelConfigError as exc:
        raise DatasetError(f"the project's labeling config cannot be used: {exc}") from None
    task = trainable_task(config)
    controls = task_controls(config, task)
    image_key = controls[0].data_key
    if task in TASK_KINDS:  # classes from the config as formats.yolo_dataset reads them (pose: boxes and keypoints)
        classes: tuple[str, ...] = ()
        from_names = [control.name for control in controls]
    else:
        classes = tuple(dict.fromkeys(label for control in controls for label in control.labels))
        # Naming the controls only matters when some are not trainable; otherwise each object counts once anyway.
        from_names = [control.name for control in controls] if len(controls) < len(config.prediction_controls) else []
    fetched = _FetchedImages(fetcher, credentials, image_key)
    try:
        summary = write_yolo_dataset(fetched.tasks(iter_export_tasks(data.export_path)), out_dir, task=task,
                                     classes=classes, from_names=from_names,
                                     label_config=data.label_config if task in TASK_KINDS else None,
                                     image_key=image_key, sources=ImageSources(out_dir.parent / "no-ls-data"),
                                     val_fraction=VAL_FRACTION, seed=SPLIT_SEED, polygon_tolerance=polygon_tolerance)
    except ExportError as exc:
        raise DatasetError(f"Label Studio's export cannot be read: {exc}") from None
    except Exception as exc:  # ConversionError and OSError: the message says what
        raise DatasetError(f"the dataset cannot be written: {exc}") from None
    classes = tuple(summary.categories) if task in TASK_KINDS else classes
    images = summary.tasks_converted
    if images < min_images:
        raise TooFewImages(f"{images} annotated image(s) usable, TRAIN_MIN_IMAGES={min_images}: annotate more tasks "
                           f"({fetched.failed} image(s) could not be fetched)")
    return Dataset(out_dir / "data.yaml", task, classes, images, summary.annotations_used, fetched.failed,
                   summary.report())


class _FetchedImages:
    """Replaces each task's image URL by the file the backend's ImageFetcher fetched; a task whose image
    cannot be fetched is logged and left out (one broken image does not spoil the dataset)."""

    def __init__(self, fetcher: ImageFetcher, credentials: Credentials | None, image_key: str) -> None:
        self._fetcher = fetcher
        self._credentials = credentials
        self._image_key = image_key
        self.failed = 0

    def tasks(self, tasks: Iterator[dict]) -> Iterator[dict]:
        for task in tasks:
            if not any(not annotation.get("was_cancelled") for annotation in task.get("annotations") or []):
                yield task  # not annotated: the converter counts it as skipped, no download needed
                continue
            url = task_image_url(task, self._image_key)
            task_id = task.get("id")
            try:
                if not isinstance(url, str):
                    raise ImageError(f"task data has no '{self._image_key}' image URL")
                path = self._fetcher.fetch(url, task_id if isinstance(task_id, int) else None, self._credentials)
                self._fetcher.decode(path)  # a broken image is caught here, with the reason
            except (ImageError, PermissionError, OSError) as exc:
                self.failed += 1
                logger.warning("training: task %s left out: %s", task_id, exc)
                continue
            yield {**task, "data": {**task.get("data", {}), self._image_key: str(path)}}
