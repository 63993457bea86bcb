"""Where SAM image embeddings are kept between clicks: an in-memory LRU and an optional fp16 disk cache.

Both are keyed by a hash of the image's pixels, so the same picture behind two URLs (or re-uploaded)
shares one embedding, and an edited file gets a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

STALE_TEMPORARY_SECONDS = 3600


@dataclass(frozen=True)
class ImageEmbedding:
    """What SamPredictor.set_image keeps: the encoder output and the sizes needed to map prompts and masks."""

    features: torch.Tensor  # 1 x C x h x w
    interm: tuple[torch.Tensor, ...]  # SAM-HQ's intermediate ViT features; empty for SAM and MobileSAM
    input_size: tuple[int, int]  # (H, W) after ResizeLongestSide, before padding
    original_size: tuple[int, int]  # (H, W) of the image as given


def image_key(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(str(pixels.shape).encode(), digest_size=20)
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


class MemoryEmbeddings:
    """Least recently used embeddings, at most `capacity` of them (0 keeps none)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class DiskEmbeddings:
    """fp16 embeddings in `directory/<model fingerprint>/<image key>.pt`, shared by processes.

    Files are written to a temporary name and renamed into place, so a reader in another worker
    sees a whole file or none; an unreadable file is treated as missing and rewritten. With
    `max_bytes`, each write is followed by pruning the whole `directory` (every model's entries)
    to that size, least recently used first: a disk hit refreshes its file's modification time.
    """

    def __init__(self, directory: Path, model_fingerprint: str, max_bytes: int = 0) -> None:
        self.root = directory
        self.directory = directory / model_fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes  # 0: no limit

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str, device: torch.device) -> ImageEmbedding | None:
        path = self._path(key)
        try:
            stored = torch.load(path, map_location=device, weights_only=True)
            os.utime(path)  # recently used: pruned last
            return ImageEmbedding(
                features=stored["features"].float(),
                interm=tuple(t.float() for t in stored["interm"]),
                input_size=tuple(stored["input_size"]),
                original_size=tuple(stored["original_size"]),
            )
        except FileNotFoundError:  # never written, or pruned by another worker a moment ago
            return None
        except Exception as exc:  # a truncated or foreign file must not break the click
            logger.warning("ignoring unreadable SAM embedding %s: %s: %s", path, type(exc).__name__, str(exc)[:200])
            return None

    def save(self, key: str, embedding: ImageEmbedding) -> None:
        stored = {
            "features": embedding.features.detach().to("cpu", torch.float16),
            "interm": [t.detach().to("cpu", torch.float16) for t in embedding.interm],
            "input_size": list(embedding.input_size),
            "original_size": list(embedding.original_size),
        }
        try:
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        except OSError as exc:  # a full or read-only disk costs speed, not the answer
            logger.warning("cannot write SAM embedding to %s: %s", self.directory, exc)
            return
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(stored, file)
            os.replace(temporary, self._path(key))
        except OSError as exc:
            logger.warning("cannot write SAM embedding to %s: %s", self.directory, exc)
            Path(temporary).unlink(missing_ok=True)
            return
        if self.max_bytes:
            prune(self.root, self.max_bytes)


def prune(root: Path, max_bytes: int) -> int:
    """Delete the least recently used embeddings under `root` until the rest fit in `max_bytes`; returns how many.

    Workers prune one at a time (an exclusive lock on `root/.prune.lock`; a worker that finds it taken
    leaves the pruning to its holder). Files vanishing meanwhile are fine: a reader treats them as a miss.
    Temporary files of writers that died are removed once they are an hour old; younger ones are being written.
    """
    try:
        with (root / ".prune.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return _prune_locked(root, max_bytes)
    except OSError as exc:
        logger.warning("cannot prune the SAM embedding cache %s: %s", root, exc)
        return 0


def _prune_locked(root: Path, max_bytes: int) -> int:
    entries: list[tuple[float, int, Path]] = []
    stale_before = time.time() - STALE_TEMPORARY_SECONDS
    for model_dir in root.iterdir():
        if not model_dir.is_dir():
            continue
        for path in model_dir.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.suffix == ".pt":
                entries.append((stat.st_mtime, stat.st_size, path))
            elif path.suffix == ".tmp" and stat.st_mtime < stale_before:
                path.unlink(missing_ok=True)
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed += 1
    if removed:
        logger.info("SAM embedding cache %s: removed the %d least recently used, %.1f MB left", root, removed, total / 1e6)
    return removed
