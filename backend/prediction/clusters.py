"""Clusters of a project's images, so Label Studio's uncertainty sampling spreads annotators across kinds of images.

Each image's embedding is the YOLO backbone's pooled features, read in the forward pass that predicts
it (backend/models/yolo.py). The centres of a project live in

    MODEL_ROOT/projects/<project uid>/clusters-k<K>-<model hash>.json   {"k": K, "model": "<file>@<hash>", "centres": [...]}

created once by the first /predict (or `tools.preannotate --clusters K`) of a known project that brings
at least `min_images(K)` images, and never replaced: it is linked into place only if no file of that
name exists, so when two backends sharing MODEL_ROOT race, the first one wins and both read its centres.
From then on every worker and restart gives an image the same cluster (the nearest centre). Another
model (a retrained one embeds differently) or K gets its own file; the project keeps the newest
MAX_FILES of them. K-means is seeded and its input sorted: the same images give the same centres.

Bounds: K at most MAX_CLUSTERS, a file at most MAX_FILE_BYTES (K x the backbone's channels, e.g.
64 x 256 numbers, about 0.4 MB), k-means on at most MAX_FIT_IMAGES embeddings for KMEANS_ITERATIONS rounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from backend.settings import MAX_CLUSTERS
from backend.training.registry import project_dir

logger = logging.getLogger(__name__)

MAX_FILES = 4
MAX_FILE_BYTES = 2_000_000
MAX_FIT_IMAGES = 1024
KMEANS_ITERATIONS = 20
KMEANS_SEED = 0
IMAGES_PER_CLUSTER = 3  # the fewest images per cluster that may create the centres


def min_images(k: int) -> int:
    return IMAGES_PER_CLUSTER * k


def normalized(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def kmeans(points: np.ndarray, k: int, seed: int = KMEANS_SEED, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Deterministic k-means (k-means++ start from a seeded generator, Lloyd rounds) on the rows of `points`,
    taken in sorted order so the centres do not depend on the order the images came in."""
    points = np.asarray(points, np.float64)
    points = points[np.lexsort(points.T[::-1])]
    points = points[::-(-len(points) // MAX_FIT_IMAGES)]  # an even sample of at most MAX_FIT_IMAGES, order-free
    rng = np.random.default_rng(seed)
    centres = [points[int(rng.integers(len(points)))]]
    distance = ((points - centres[0]) ** 2).sum(axis=1)  # to the nearest centre so far
    for _ in range(1, k):
        total = distance.sum()
        index = int(rng.choice(len(points), p=distance / total)) if total > 0 else int(rng.integers(len(points)))
        centres.append(points[index])
        distance = np.minimum(distance, ((points - points[index]) ** 2).sum(axis=1))
    centres = np.array(centres)
    for _ in range(iterations):
        labels = nearest(points, centres)
        moved = np.array([points[labels == j].mean(axis=0) if np.any(labels == j) else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return centres


def nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each point's nearest centre, by exact squared distances (no BLAS product whose rounding could differ
    between machines), 256 points at a time."""
    points, centres = np.asarray(points, np.float64), np.asarray(centres, np.float64)
    return np.concatenate([((points[start:start + 256, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
                           for start in range(0, len(points), 256)]) if len(points) else np.zeros(0, int)


class ProjectClusters:
    """The cluster centres of one project for one model and K."""

    def __init__(self, model_root: Path, project: str, k: int, model: str) -> None:
        if not 1 <= k <= MAX_CLUSTERS:
            raise ValueError(f"CLUSTERS must be between 1 and {MAX_CLUSTERS}, not {k}")
        digest = hashlib.sha256(model.encode()).hexdigest()[:16]
        self.path = project_dir(model_root, project) / f"clusters-k{k}-{digest}.json"  # ValueError: not a project uid
        self.k = k
        self.model = model

    def centres(self) -> np.ndarray | None:
        """The written centres of this model and K, or None."""
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                logger.warning("%s is larger than %d bytes; ignored", self.path, MAX_FILE_BYTES)
                return None
            record = json.loads(self.path.read_text())
            if record.get("k") != self.k or record.get("model") != self.model:
                return None
            centres = np.asarray(record["centres"], np.float64)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s cannot be read (%s); the clusters are made again", self.path, exc)
            return None
        return centres if centres.ndim == 2 and len(centres) == self.k else None

    def assign(self, embeddings: list[np.ndarray | None]) -> list[int | None]:
        """Each embedding's cluster; the centres are created from these embeddings when none are written
        and there are enough of them. None for a missing embedding or while there are no centres."""
        present = [e for e in embeddings if e is not None]
        if not present:
            return [None] * len(embeddings)
        centres = self.centres()
        if centres is None or centres.shape[1] != len(present[0]):
            if len(present) < min_images(self.k):
                logger.info("clusters: %d images cannot make %d clusters (at least %d needed); none assigned yet",
                            len(present), self.k, min_images(self.k))
                return [None] * len(embeddings)
            centres = self._create(normalized(np.array(present)))
        clusters = iter(nearest(normalized(np.array(present)), centres).tolist())
        return [None if e is None else int(next(clusters)) for e in embeddings]

    def _create(self, points: np.ndarray) -> np.ndarray:
        record = {"k": self.k, "model": self.model, "centres": np.round(kmeans(points, self.k), 6).tolist()}
        data = json.dumps(record).encode()
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{self.k} cluster centres of {points.shape[1]} features exceed {MAX_FILE_BYTES} bytes")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-clusters-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, self.path)  # all or nothing, and only if no backend wrote it first
            logger.info("clusters: %d centres of %d images written to %s", self.k, len(points), self.path)
            self._drop_old_files()
        except FileExistsError:
            pass
        finally:
            Path(tmp).unlink(missing_ok=True)
        written = self.centres()
        return written if written is not None else np.asarray(record["centres"])

    def _drop_old_files(self) -> None:
        files = sorted(self.path.parent.glob("clusters-k*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
        for old in files[MAX_FILES:]:
            old.unlink(missing_ok=True)
