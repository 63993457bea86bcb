"""What the batch predictor gathers about each task besides its regions, and the task `score` and `cluster`
made from it (TASK_SCORE, CLUSTERS; see backend/prediction/quality.py and backend/prediction/clusters.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.models.versions import model_tag
from backend.models.yolo import Detections
from backend.prediction.clusters import ProjectClusters
from backend.prediction.quality import ControlFindings, task_quality
from backend.settings import Settings
from backend.sources.label_studio import SetupStore
from formats.label_config import Control

logger = logging.getLogger(__name__)


class TaskEvidence:
    """Per task of one /predict: each control's findings and the image embedding of the first model that
    saw it. Filled by one thread at a time (the predictor's loop)."""

    def __init__(self, count: int) -> None:
        self.findings: list[list[ControlFindings]] = [[] for _ in range(count)]
        self.controls: list[set[str]] = [set() for _ in range(count)]
        self.embeddings: list[np.ndarray | None] = [None] * count
        self.embedding_model = ""  # "<stem>@<content hash>" of the model whose features the embeddings are

    def embedded(self, index: int, model_path: Path, found: object) -> None:
        embedding = getattr(found, "embedding", None)
        if embedding is None or self.embeddings[index] is not None:
            return
        key = model_tag(model_path)  # the file's content hash: the same on every backend sharing MODEL_ROOT
        if self.embedding_model in ("", key):  # one model's features for all tasks, or none
            self.embedding_model = key
            self.embeddings[index] = embedding

    def found(self, index: int, control: Control, threshold: float, found: object, regions: Sequence[dict]) -> None:
        """Record what `control` found on task `index`: its regions' scores, and for box models the kept
        boxes and the candidates just below the threshold."""
        self.controls[index].add(control.name)
        if not isinstance(found, Detections):
            self.findings[index].append(ControlFindings([r["score"] for r in regions], threshold, control.data_key))
            return
        named = np.array([bool(control.label_for(name)) for name in found.class_names], bool)
        kept = named & (found.scores >= threshold)
        below = named & (found.scores < threshold)
        candidates = found.candidates
        if candidates is not None and len(candidates.scores):
            cand_named = np.array([bool(control.label_for(name)) for name in candidates.class_names], bool)
            cand_boxes = np.concatenate([found.boxes[below], candidates.boxes[cand_named]])
            cand_scores = np.concatenate([found.scores[below], candidates.scores[cand_named]])
            cand_classes = _pick(found.class_names, below) + _pick(candidates.class_names, cand_named)
        else:
            cand_boxes, cand_scores, cand_classes = found.boxes[below], found.scores[below], _pick(found.class_names, below)
        self.findings[index].append(ControlFindings(
            found.scores[kept].tolist(), threshold, control.data_key, found.boxes[kept], _pick(found.class_names, kept),
            cand_boxes, cand_scores.tolist(), cand_classes))

    def scores(self, regions: list[list[dict]], task_score: str, default_threshold: float) -> list[float | None]:
        """Each task's score: TASK_SCORE=quality over every control (controls not seen by the image models,
        video tracks for instance, count their regions' scores); None for `mean`, the mean of its region scores."""
        if task_score == "mean":
            return [None] * len(regions)
        scores = []
        for index, found in enumerate(regions):
            others: dict[str, list[float]] = {}
            for region in found:
                if region.get("from_name") not in self.controls[index]:
                    others.setdefault(region.get("from_name"), []).append(region["score"])
            extra = [ControlFindings(values, default_threshold) for values in others.values()]
            scores.append(task_quality(self.findings[index] + extra))
        return scores

    def clusters(self, settings: Settings, project: object, any_project: bool = False) -> list[int | None]:
        """Each task's cluster (CLUSTERS=K), None when off, the project is not known, or no centres exist yet.

        A known project is one Label Studio connected to this backend (its /setup is kept in CACHE_DIR/setup),
        or any project when `any_project` (a job that read the project from Label Studio with its own key): a
        /predict naming made-up project uids must not create folders and files in MODEL_ROOT."""
        count = len(self.embeddings)
        if not settings.clusters or not self.embedding_model or project is None:
            return [None] * count
        if not any_project and not SetupStore(settings.cache_path / "setup").load(str(project)):
            logger.debug("clusters: project %s has no /setup here; no clusters", str(project)[:60])
            return [None] * count
        try:
            clusters = ProjectClusters(settings.model_root_path, str(project), settings.clusters, self.embedding_model)
        except ValueError:
            logger.debug("clusters: '%s' is not a project uid; no clusters", str(project)[:60])
            return [None] * count
        try:
            return clusters.assign(self.embeddings)
        except (OSError, ValueError) as exc:  # the predictions are still answered, without clusters
            logger.warning("clusters of project %s: %s", str(project)[:60], exc)
            return [None] * count


def _pick(names: tuple[str, ...], chosen: np.ndarray) -> tuple[str, ...]:
    return tuple(name for name, keep in zip(names, chosen) if keep)
