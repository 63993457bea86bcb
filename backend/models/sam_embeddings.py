"""Where SAM image embeddings are kept between clicks: an in-memory LRU and an optional fp16 disk cache.

Both are keyed by a hash of the image's pixels, so the same picture behind two URLs (or re-uploaded)
shares one embedding, and an edited file gets a new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.models.lru_folder import prune

logger = logging.getLogger(__name__)

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
            prune(self.root, self.max_bytes, "SAM embedding cache", ".pt", depth=1)
