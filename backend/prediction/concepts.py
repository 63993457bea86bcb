"""Pre-annotation from label names: SAM 3 finds every instance of each label's phrases.

A RectangleLabels, PolygonLabels or BrushLabels control is answered by SAM 3 when its `model_path`
names a SAM 3 checkpoint (all its labels), or, with CONCEPT_MODEL set, for the labels that no class
of the control's YOLO model becomes (the labels the /setup log calls "never predicted"). Each label
is prompted with its `predicted_values` phrases, or its value when it has none; `model_score_threshold`
(else MODEL_SCORE_THRESHOLD) is SAM 3's confidence threshold. Per task image, SAM 3 encodes the image
once for every phrase of every control, and each phrase is run once at the lowest threshold any
control asks for. Instances of a label found by two of its phrases (masks overlapping by IoU >= 0.5)
are one region, with the higher score.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from backend.models.cache import ModelCache, ModelPathError, resolve_model_path
from backend.models.sam3 import Instances, Sam3Model, cached_sam3
from backend.models.sam3_network import looks_like_sam3
from backend.models.versions import file_fingerprint
from backend.settings import Settings
from backend.sources.images import ImageError, ImageFetcher, TaskImage
from backend.sources.label_studio import Credentials
from formats.label_config import Control, LabelConfig
from formats.mask_crop import MaskCrop
from formats.regions import mask_regions, rectangle_region

logger = logging.getLogger(__name__)

CONCEPT_TAGS = ("RectangleLabels", "PolygonLabels", "BrushLabels")
SAME_OBJECT_IOU = 0.5


class TaskOutcomes(Protocol):
    """The request's failed tasks (backend/prediction/limits.py's TaskFailures)."""

    def __contains__(self, index: int) -> bool: ...

    def add(self, index: int, task_id: object, reason: str) -> None: ...


@dataclass(frozen=True)
class ConceptControl:
    """A control (or some of its labels) that SAM 3 answers, each label with the phrases that prompt it."""

    control: Control
    checkpoint: Path
    phrases: tuple[tuple[str, tuple[str, ...]], ...]  # (label, phrases)
    threshold: float


def label_phrases(control: Control, labels: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each label's `predicted_values` as written, or the label itself when it has none."""
    written = dict(control.options.predicted_values)
    return tuple((label, written.get(label) or (label,)) for label in labels)


def unserved_labels(control: Control, class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The control's labels that no class of its YOLO model becomes."""
    produced = {control.label_for(name) for name in class_names}
    return tuple(label for label in control.labels if label not in produced)


class ConceptPredictor:
    """Which controls SAM 3 answers, and their regions for a batch of tasks."""

    def __init__(self, settings: Settings, cache: ModelCache, fetcher: ImageFetcher, device: str,
                 on_image: Callable[[TaskImage], None] | None = None) -> None:
        self._settings = settings
        self._on_image = on_image  # as BatchPredictor's: told of each image read
        self._cache = cache
        self._fetcher = fetcher
        self._device = device
        self._kinds: dict[tuple, bool] = {}
        self._kinds_lock = threading.Lock()
        self._reported: set[tuple] = set()

    def _is_sam3(self, path: Path) -> bool:
        key = (str(path), file_fingerprint(path))
        with self._kinds_lock:
            known = self._kinds.get(key)
        if known is None:
            known = looks_like_sam3(path)
            with self._kinds_lock:
                self._kinds[key] = known
        return known

    def checkpoint_of(self, control: Control) -> Path | None:
        """The SAM 3 checkpoint a control's `model_path` names, or None (a YOLO model, or no model_path)."""
        if control.tag not in CONCEPT_TAGS or not control.model_path:
            return None
        try:
            path = resolve_model_path(self._settings.model_root_path, control.model_path,
                                      f"model_path on <{control.tag} name=\"{control.name}\">")
        except ModelPathError:
            return None  # the YOLO side names the problem
        return path if self._is_sam3(path) else None

    def concept_model(self) -> Path | None:
        """CONCEPT_MODEL's file, or None when it is not set; ModelPathError when it cannot be used."""
        value = self._settings.concept_model
        if not value:
            return None
        path = resolve_model_path(self._settings.model_root_path, value, "CONCEPT_MODEL")
        if not path.is_file():
            raise ModelPathError(f"CONCEPT_MODEL='{value}' not found in MODEL_ROOT ({self._settings.model_root_path}): "
                                 "put Meta's sam3.pt there")
        if not self._is_sam3(path):
            raise ModelPathError(f"CONCEPT_MODEL='{value}' is not a SAM 3 checkpoint (Meta's file is sam3.pt)")
        return path

    def _threshold(self, control: Control) -> float:
        return control.score_threshold if control.score_threshold is not None else self._settings.model_score_threshold

    def plan(self, config: LabelConfig, served: dict[str, tuple[str, ...]]) -> list[ConceptControl]:
        """The SAM 3 part of a config: controls whose model_path is SAM 3, and (CONCEPT_MODEL) the labels
        no class of their YOLO model serves; `served` holds each YOLO-answered control's model classes by name."""
        found = []
        fallback = self.concept_model() if served else None
        for control in config.prediction_controls:
            checkpoint, labels = self.checkpoint_of(control), control.labels
            if checkpoint is None and fallback is not None and control.tag in CONCEPT_TAGS \
                    and control.name in served:
                checkpoint, labels = fallback, unserved_labels(control, served[control.name])
            if checkpoint is not None and labels:
                found.append(ConceptControl(control, checkpoint, label_phrases(control, labels),
                                            self._threshold(control)))
        return found

    def report(self, control: Control, class_names: tuple[str, ...] | None) -> None:
        """Log once which of a control's labels SAM 3 answers (`class_names`: its YOLO model's; None: no YOLO
        model, the control's model_path is SAM 3)."""
        checkpoint = self.checkpoint_of(control)
        labels, source = control.labels, f"model_path={control.model_path}"
        if checkpoint is None:
            try:
                checkpoint = self.concept_model()
            except ModelPathError as exc:
                logger.warning("<%s name=\"%s\">: %s", control.tag, control.name, exc)
                return
            if checkpoint is None or control.tag not in CONCEPT_TAGS or class_names is None:
                return
            labels, source = unserved_labels(control, class_names), f"CONCEPT_MODEL={self._settings.concept_model}"
        key = (control, labels, str(checkpoint))
        with self._kinds_lock:
            if not labels or key in self._reported:
                return
            self._reported.add(key)
        phrases = "; ".join(f"{label}: {', '.join(found)}" for label, found in label_phrases(control, labels))
        logger.info("<%s name=\"%s\">: SAM 3 (%s) answers the labels %s (phrases %s)", control.tag, control.name,
                    source, ", ".join(labels), phrases)

    def fallback_files(self, config: LabelConfig) -> list[Path]:
        """CONCEPT_MODEL's file for the model version, when it may answer some control of the config."""
        try:
            fallback = self.concept_model()
        except ModelPathError:
            return []
        wanted = any(c.tag in CONCEPT_TAGS and self.checkpoint_of(c) is None for c in config.prediction_controls)
        return [fallback] if fallback is not None and wanted else []

    def model(self, checkpoint: Path) -> Sam3Model:
        return cached_sam3(self._cache, checkpoint, self._device)

    def predict(self, tasks: list[dict], concepts: list[ConceptControl], credentials: Credentials | None,
                regions: list[list[dict]], failures: TaskOutcomes, why_not: Callable[[], str | None]) -> None:
        """Add SAM 3's regions of each task not yet failed to `regions`. A task whose image or SAM 3 call fails,
        or that the request's deadline does not reach, is added to `failures`; the others are still answered."""
        for task_index, task in enumerate(tasks):
            if task_index in failures:
                continue
            task_id = task.get("id") if isinstance(task, dict) else "?"
            reason = why_not()
            if reason is not None:
                failures.add(task_index, task_id, reason)
                continue
            try:
                regions[task_index].extend(self.task_regions(task, concepts, credentials))
            except (ImageError, PermissionError) as exc:
                failures.add(task_index, task_id, str(exc))
            except Exception as exc:  # one failing task must not lose the others
                logger.exception("SAM 3 failed on task %s", task_id)
                failures.add(task_index, task_id, f"SAM 3 failed: {type(exc).__name__}")

    def task_regions(self, task: dict, concepts: list[ConceptControl], credentials: Credentials | None) -> list[dict]:
        data = task.get("data") if isinstance(task, dict) else None
        results: list[dict] = []
        for data_key in dict.fromkeys(concept.control.data_key for concept in concepts):
            url = data.get(data_key) if isinstance(data, dict) else None
            if not isinstance(url, str):
                raise ImageError(f"task data has no '{data_key}' image URL")
            image = self._fetcher.load(url, task.get("id"), credentials)
            if self._on_image is not None:
                self._on_image(image)
            on_image = [concept for concept in concepts if concept.control.data_key == data_key]
            for checkpoint in dict.fromkeys(concept.checkpoint for concept in on_image):
                model = self.model(checkpoint)
                embedding = model.embed(image.pixels)
                served = [concept for concept in on_image if concept.checkpoint == checkpoint]
                thresholds: dict[str, float] = {}
                for concept in served:
                    for _, phrases in concept.phrases:
                        for phrase in phrases:
                            thresholds[phrase] = min(thresholds.get(phrase, 1.0), concept.threshold)
                found = {phrase: model.find(embedding, phrase, threshold) for phrase, threshold in thresholds.items()}
                for concept in served:
                    results.extend(self._control_regions(concept, found, image.width, image.height))
        return results

    def _control_regions(self, concept: ConceptControl, found: dict[str, Instances], width: int,
                         height: int) -> list[dict]:
        control, regions = concept.control, []
        for label, phrases in concept.phrases:
            for box, crop, score in merged_instances([found[phrase] for phrase in phrases], concept.threshold):
                if control.tag == "RectangleLabels":
                    regions.append(rectangle_region(control, label, tuple(box), score, width, height))
                else:
                    regions.extend(mask_regions(control, label, crop, score, self._settings.polygon_tolerance))
        return regions


def merged_instances(per_phrase: list[Instances], threshold: float) -> list[tuple[np.ndarray, MaskCrop, float]]:
    """(box, mask, score) of each instance above `threshold`; one found by several phrases once, at its best."""
    kept: list[tuple[int, np.ndarray, MaskCrop, float]] = []
    for phrase_index, instances in enumerate(per_phrase):
        for box, crop, score in zip(instances.boxes, instances.crops, instances.scores.tolist()):
            if not score > threshold:
                continue
            same = next((k for k, (other_phrase, _, other, _) in enumerate(kept)
                         if other_phrase != phrase_index and mask_iou(crop, other) >= SAME_OBJECT_IOU), None)
            if same is None:
                kept.append((phrase_index, box, crop, score))
            elif score > kept[same][3]:
                kept[same] = (phrase_index, box, crop, score)
    return [(box, crop, score) for _, box, crop, score in kept]


def mask_iou(a: MaskCrop, b: MaskCrop) -> float:
    """Intersection over union of two mask crops of the same image, computed in their common window."""
    if a.x0 >= b.x0 + b.mask.shape[1] or b.x0 >= a.x0 + a.mask.shape[1] \
            or a.y0 >= b.y0 + b.mask.shape[0] or b.y0 >= a.y0 + a.mask.shape[0]:
        return 0.0
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    x1 = max(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    y1 = max(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    window = np.zeros((2, y1 - y0, x1 - x0), dtype=bool)
    for plane, crop in zip(window, (a, b)):
        plane[crop.y0 - y0:crop.y0 - y0 + crop.mask.shape[0], crop.x0 - x0:crop.x0 - x0 + crop.mask.shape[1]] = crop.mask
    union = np.logical_or(window[0], window[1]).sum()
    return float(np.logical_and(window[0], window[1]).sum() / union) if union else 0.0

