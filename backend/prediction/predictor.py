"""Batch pre-annotation: tasks in, one Label Studio prediction per task out, in task order.

Images are fetched concurrently, each YOLO model used by the config runs once per batch of images
(controls sharing a model share its forward pass), and each control turns the detections into
its own region type. A task whose image cannot be used gets an empty prediction; the others are
still answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from backend.sources.images import ImageError, ImageFetcher, TaskImage
from formats.label_config import Control, LabelConfig
from backend.prediction.limits import PixelBudget, RequestLimits, TaskFailures, TaskNotPredicted, TaskQueue
from backend.prediction.concepts import ConceptPredictor
from backend.prediction.quality import candidate_floor
from backend.prediction.task_evidence import TaskEvidence
from backend.prediction.tasks import task_mismatch, task_regions
from backend.sources.label_studio import Credentials
from backend.models.cache import ModelCache, ModelPathError, resolve_model_path
from formats.mask_crop import MaskCrops
from backend.models.yolo import Detections, PreparedBatch, YoloModel, preparing_thread
from backend.models.yolo_track import VideoError
from backend.models.yolo_tasks import TaskYoloModel
from formats.regions import mask_regions, prediction, rectangle_region
from backend.settings import Settings
from backend.training.model_choice import ModelChoice, model_choice
from backend.models.versions import file_fingerprint
from backend.prediction.video import VideoPredictor

logger = logging.getLogger(__name__)


class PredictionConfigError(ValueError):
    """The labeling config asks for something the configured models cannot do (answered as 4xx)."""


class YoloModels:
    """YOLO models by config value, loaded once per process through the model cache."""

    def __init__(self, settings: Settings, cache: ModelCache, device: str) -> None:
        self._settings = settings
        self._cache = cache
        self._device = device

    def path(self, choice: ModelChoice) -> Path:
        return resolve_model_path(self._settings.model_root_path, choice.path_value, choice.setting, choice.trained)

    @property
    def device(self) -> str:
        return self._device

    @property
    def cache(self) -> ModelCache:
        return self._cache

    def get(self, choice: ModelChoice) -> YoloModel | TaskYoloModel:
        path = self.path(choice)
        kind = TaskYoloModel if choice.task_model else YoloModel
        # A file replaced under the same name (a retrained model) is loaded again, and the old one dropped.
        imgsz = 0 if choice.trained else self._settings.yolo_imgsz  # 0: the size the model was trained at
        key = ("yolo-task" if choice.task_model else "yolo", str(path), file_fingerprint(path), self._device,
               self._settings.half, imgsz)
        self._cache.discard(lambda other: other[:2] == key[:2] and other != key)
        return self._cache.get(key, lambda: kind(path, choice.setting, self._device, self._settings.half, imgsz))


class BatchPredictor:
    def __init__(self, settings: Settings, models: YoloModels, fetcher: ImageFetcher,
                 box_segmenter: Callable[[TaskImage, np.ndarray], np.ndarray] | None = None,
                 on_image: Callable[[TaskImage], None] | None = None) -> None:
        self._settings = settings
        self._models = models
        self._fetcher = fetcher
        self._box_segmenter = box_segmenter  # SAM: boxes -> masks, when YOLO_SAM is on
        self._on_image = on_image  # e.g. SAM embedding prefetch
        self._video = VideoPredictor(settings, fetcher, models.device)
        # CLUSTERS: centres only for projects Label Studio set up here, unless the caller vouches for the project
        self.clusters_for_any_project = False
        self.concepts = ConceptPredictor(settings, models.cache, fetcher, models.device, on_image)  # SAM 3

    def plan(self, config: LabelConfig, project: object = None) -> dict[YoloModel, list[Control]]:
        """Which model serves which controls; raises ModelPathError / PredictionConfigError up front.

        Keyed by the loaded model, so controls naming the same file through different settings
        share one forward pass."""
        plan: dict[YoloModel, list[Control]] = {}
        for control in config.prediction_controls:
            if self.concepts.checkpoint_of(control) is not None:
                continue  # model_path names a SAM 3 checkpoint: backend/prediction/concepts.py
            choice = model_choice(control, self._settings, project)
            try:
                model = self._models.get(choice)
            except ModelPathError as exc:
                named = f"<{control.tag} name=\"{control.name}\">"
                if named in str(exc):  # model_path on the control already names it
                    raise
                raise ModelPathError(f"{named}: {exc}") from exc
            mismatch = task_mismatch(control, model.task, choice.setting, choice.path_value)
            if mismatch is not None:
                raise PredictionConfigError(mismatch)
            if control.tag == "VideoRectangle":
                self._video.check(control)
                continue  # tracked per video, not in the image batches
            if control.wants_masks and not model.has_masks and self._box_segmenter is None:
                raise PredictionConfigError(
                    f"<{control.tag} name=\"{control.name}\"> needs masks but {choice.setting}='{choice.path_value}' is a "
                    "detection model: use a segmentation model (e.g. yolov8n-seg.pt) or enable YOLO_SAM with a SAM model")
            plan.setdefault(model, []).append(control)
        return plan

    def model_files(self, config: LabelConfig, project: object = None) -> list[Path]:
        """The model file each prediction control resolves to, in config order (nothing is loaded)."""
        files = []
        for control in config.prediction_controls:
            choice = model_choice(control, self._settings, project)
            try:
                files.append(self._models.path(choice))
            except ModelPathError:  # refused paths never predict; /predict answers them with a 4xx
                continue
        return files + self.concepts.fallback_files(config)

    def predict(self, tasks: list[dict], config: LabelConfig, credentials: Credentials | None,
                model_version: str, project: object = None, limits: RequestLimits | None = None) -> list[dict | list]:
        """One prediction per task, in task order; a task that could not be predicted (its image, the request's
        deadline, a disconnected client) gets an empty list instead, and one warning line says why."""
        limits = limits or RequestLimits()
        plan = self.plan(config, project)
        videos = [control for control in config.prediction_controls if control.tag == "VideoRectangle"]
        concepts = self.concepts.plan(config, {control.name: getattr(model, "class_names", ())
                                                for model, controls in plan.items() for control in controls})
        if not plan and not videos and not concepts:
            logger.info("the labeling config has no control to predict")
            return [prediction([], model_version) for _ in tasks]
        regions: list[list[dict]] = [[] for _ in tasks]
        failures = TaskFailures(len(tasks))
        evidence = TaskEvidence(len(tasks))
        if plan:
            self._predict_images(tasks, plan, credentials, limits, failures, regions, evidence)
        if concepts:
            self.concepts.predict(tasks, concepts, credentials, regions, failures, limits.why_not)
        for control in videos:
            model_path = self._models.path(model_choice(control, self._settings, project))
            for task_index, task in enumerate(tasks):
                if task_index in failures:
                    continue
                try:
                    if stop := limits.why_not():
                        raise TaskNotPredicted(stop)
                    regions[task_index].extend(self._video.task_regions(task, control, model_path, credentials))
                except (ImageError, PermissionError, VideoError, TaskNotPredicted) as exc:
                    failures.add(task_index, task_id(task), str(exc))
        failures.log(limits.why_not())
        scores = evidence.scores(regions, self._settings.task_score, self._settings.model_score_threshold)
        clusters = evidence.clusters(self._settings, project, self.clusters_for_any_project)
        return [[] if index in failures else prediction(found, model_version, scores[index], clusters[index])
                for index, found in enumerate(regions)]

    def _predict_images(self, tasks: list[dict], plan: dict[YoloModel, list[Control]], credentials: Credentials | None,
                        limits: RequestLimits, failures: TaskFailures, regions: list[list[dict]],
                        evidence: TaskEvidence) -> None:
        data_keys = sorted({control.data_key for controls in plan.values() for control in controls})
        queue = TaskQueue(len(tasks), self._settings.batch_size)
        budget = PixelBudget(self._settings.max_decoded_pixels)
        workers = max(1, min(self._settings.fetch_workers, self._settings.batch_size * len(data_keys)))
        # A bounded pipeline: while one group of tasks runs through the models, the next is fetched,
        # decoded and letterboxed; the decoded pixels of both together stay under MAX_DECODED_PIXELS. On
        # CUDA that overlaps the forward passes; on CPU, where a forward pass keeps every core busy (and
        # contention slows its thread team more than preparing in parallel saves), it overlaps building the
        # regions, one thread.
        overlap_forward = self._models.device.startswith("cuda")
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as fetch_pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare", initializer=preparing_thread) as prepare_pool:
            def prepare() -> TaskGroup | None:
                return self._prepare_group(tasks, queue, plan, data_keys, credentials, fetch_pool, budget, limits, failures)

            group = prepare()  # the first group is prepared in this thread: nothing runs meanwhile
            while group is not None:
                upcoming = prepare_pool.submit(prepare) if overlap_forward else None
                try:
                    upcoming = self._run_group(group, tasks, failures, regions, evidence,
                                               lambda: upcoming or prepare_pool.submit(prepare))
                finally:
                    pixels, group = group.pixels, None  # its images are freed before the next group's are decoded
                    budget.release(pixels)
                group = upcoming.result()

    def _run_group(self, group: TaskGroup, tasks: list[dict], failures: TaskFailures, regions: list[list[dict]],
                   evidence: TaskEvidence, prepare_next: Callable[[], Future]) -> Future:
        """The group through its models; `prepare_next()` (once the forward passes are done) gives the next group."""
        found = [self._infer(batch, tasks, failures) for batch in group.batches]
        upcoming = prepare_next()
        for batch, detections in zip(group.batches, found):
            self._batch_regions(batch, detections, regions, evidence)
        return upcoming

    def _threshold(self, control: Control) -> float:
        return control.score_threshold if control.score_threshold is not None else self._settings.model_score_threshold

    def _prepare_group(self, tasks: list[dict], queue: TaskQueue, plan: dict[YoloModel, list[Control]],
                       data_keys: list[str], credentials: Credentials | None, fetch_pool: ThreadPoolExecutor,
                       budget: PixelBudget, limits: RequestLimits, failures: TaskFailures) -> TaskGroup | None:
        """The next tasks whose images fit the pixel budget, fetched concurrently, decoded, and letterboxed as
        one batch per model and image key; None when no task is left (or the request must stop)."""
        if stop := limits.why_not():
            for index in queue.drain():
                failures.add(index, task_id(tasks[index]), stop)
            return None
        fresh = queue.take_fresh()
        located = fetch_pool.map(lambda index: self._locate(tasks[index], data_keys, credentials, limits), fresh)
        for index, result in zip(fresh, located):
            if isinstance(result, Exception):
                failures.add(index, task_id(tasks[index]), str(result))
            else:
                queue.fetched(index, result)
        chosen, pixels = queue.group_under(budget)
        if not chosen:
            return None if queue.empty else TaskGroup([], 0)
        if not budget.acquire(pixels, give_up=lambda: limits.why_not() is not None):
            for index, _ in chosen:
                failures.add(index, task_id(tasks[index]), limits.why_not() or "stopped")
            return TaskGroup([], 0)
        jobs = [(index, key, source) for index, sources in chosen for key, (source, _) in sources.items()]
        decoded = fetch_pool.map(lambda job: self._decode(tasks[job[0]], job[1], job[2]), jobs)
        images: dict[tuple[int, str], TaskImage] = {}
        for (index, key, _), image in zip(jobs, decoded):
            if isinstance(image, Exception):
                failures.add(index, task_id(tasks[index]), str(image))
            else:
                images[index, key] = image
        batches = []
        for model, controls in plan.items():
            for data_key in sorted({control.data_key for control in controls}):
                items = [(index, images[index, data_key]) for index, _ in chosen if index not in failures]
                if not items:
                    continue
                try:
                    prepared = model.prepare([image.pixels for _, image in items])
                except Exception as exc:  # one failing batch must not lose the other tasks
                    logger.exception("YOLO preprocessing failed on tasks %s", [task_id(tasks[i]) for i, _ in items])
                    for index, _ in items:
                        failures.add(index, task_id(tasks[index]), f"YOLO preprocessing failed: {type(exc).__name__}")
                    continue
                batches.append(ModelBatch(model, controls, data_key, items, prepared))
        return TaskGroup(batches, pixels)

    def _locate(self, task: dict, data_keys: list[str], credentials: Credentials | None,
                limits: RequestLimits) -> dict[str, tuple[Path | BytesIO, int]] | Exception:
        """Each image of the task fetched (not decoded) with its pixel count; the first failure instead."""
        data = task.get("data") if isinstance(task, dict) else None
        sources = {}
        try:
            for key in data_keys:
                if stop := limits.why_not():
                    raise TaskNotPredicted(stop)
                url = data.get(key) if isinstance(data, dict) else None
                if not isinstance(url, str):
                    raise ImageError(f"task data has no '{key}' image URL")
                source = self._fetcher.locate(url, task.get("id"), credentials, limits.deadline)
                sources[key] = (source, self._fetcher.pixel_count(source))
        except (ImageError, PermissionError, TaskNotPredicted) as exc:
            return exc
        except Exception as exc:  # one broken task must not cost the batch
            logger.exception("task %s: fetching its image failed", task_id(task))
            return ImageError(f"fetching its image failed: {type(exc).__name__}")
        return sources

    def _decode(self, task: dict, key: str, source: Path | BytesIO) -> TaskImage | Exception:
        try:
            image = TaskImage(url=task["data"][key], pixels=self._fetcher.decode(source))
        except ImageError as exc:
            return exc
        except Exception as exc:  # e.g. MemoryError for one huge image: the other tasks are still answered
            logger.exception("task %s: decoding its image failed", task_id(task))
            return ImageError(f"decoding its image failed: {type(exc).__name__}")
        if self._on_image is not None:
            self._on_image(image)
        return image

    def _infer(self, batch: ModelBatch, tasks: list[dict], failures: TaskFailures) -> list:
        conf = min(self._threshold(control) for control in batch.controls)
        try:
            if isinstance(batch.model, YoloModel) and self._settings.task_score == "quality":
                return batch.model.infer(batch.prepared, conf, candidate_floor(conf))
            return batch.model.infer(batch.prepared, conf)
        except Exception as exc:  # one failing batch must not lose the other tasks
            logger.exception("YOLO failed on tasks %s", [task_id(tasks[i]) for i, _ in batch.items])
            for index, _ in batch.items:
                failures.add(index, task_id(tasks[index]), f"YOLO failed: {type(exc).__name__}")
            return []

    def _batch_regions(self, batch: ModelBatch, detections: list, regions: list[list[dict]],
                       evidence: TaskEvidence) -> None:
        for (task_index, image), found in zip(batch.items, detections):
            evidence.embedded(task_index, batch.model.path, found)
            for control in batch.controls:
                if control.data_key == batch.data_key:
                    control_regions = self._control_regions(control, image, found)
                    regions[task_index].extend(control_regions)
                    evidence.found(task_index, control, self._threshold(control), found, control_regions)

    def _control_regions(self, control: Control, image: TaskImage, found: Detections) -> list[dict]:
        threshold = self._threshold(control)
        if not isinstance(found, Detections):  # a pose, OBB or classification model's output
            return task_regions(control, found, threshold, image.width, image.height)
        keep = [k for k in range(len(found)) if found.scores[k] >= threshold and control.label_for(found.class_names[k])]
        if not keep:
            return []
        crops = dict(enumerate(found.masks.crops)) if found.masks is not None else None
        if control.wants_masks and crops is None:  # YOLO_SAM: each kept box prompts SAM
            crops = dict(zip(keep, MaskCrops.of(self._box_segmenter(image, found.boxes[keep])).crops))
        regions: list[dict] = []
        for k in keep:
            label = control.label_for(found.class_names[k])
            score = float(found.scores[k])
            if control.wants_masks:
                regions.extend(mask_regions(control, label, crops[k], score, self._settings.polygon_tolerance))
            else:
                regions.append(rectangle_region(control, label, tuple(found.boxes[k]), score, image.width, image.height))
        return regions


def task_id(task: object) -> object:
    return task.get("id") if isinstance(task, dict) else "?"


@dataclass(frozen=True)
class TaskGroup:
    """The model batches of tasks decoded together, and the decoded pixels they hold (of the request's budget)."""

    batches: list[ModelBatch]
    pixels: int


@dataclass(frozen=True)
class ModelBatch:
    """One chunk's images for one model and image key, letterboxed, and the controls they serve."""

    model: YoloModel
    controls: list[Control]
    data_key: str
    items: list[tuple[int, TaskImage]]  # (task index, image)
    prepared: PreparedBatch

__all__ = ["BatchPredictor", "ModelPathError", "PredictionConfigError", "YoloModels"]
