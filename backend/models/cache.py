"""The one piece of mutable global state: models loaded in this process, each loaded once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


# Linux NAME_MAX and a margin under PATH_MAX: longer names make stat() fail with ENAMETOOLONG.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 2048
TRAINED_MODELS_DIR = "projects"  # MODEL_ROOT/projects/<uid>/: backend/training/registry.py


class ModelPathError(ValueError):
    """A model path is refused or cannot be found; the message names the setting to change."""


def resolve_model_path(model_root: Path, name: str, setting: str, trained: bool = False) -> Path:
    """Map a `model_path` value to a file (or an exported model's directory, `*_openvino_model/`) inside `model_root`.

    Absolute paths, `..` and symlinks leading outside the root are refused, so a labeling config
    cannot make the backend unpickle an arbitrary file (Ultralytics checkpoints are pickles) or run
    an arbitrary TorchScript, ONNX, OpenVINO or TensorRT model. MODEL_ROOT/projects/ holds the projects'
    trained models: only `trained` (a project's own promoted model) may name them, so a config cannot
    serve another project's model, nor a rejected candidate.
    """
    if not name or "\x00" in name:
        raise ModelPathError(f"{setting} is empty")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in name.split("/")) or len(name.encode()) > MAX_PATH_BYTES:
        raise ModelPathError(f"{setting}='{name[:100]}...' is refused: longer than the filesystem allows")
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts or name.startswith("~"):
        raise ModelPathError(f"{setting}='{name}' is refused: model paths must be relative to MODEL_ROOT ({model_root}) without '..'")
    resolved = (model_root / candidate).resolve()
    if not resolved.is_relative_to(model_root.resolve()):
        raise ModelPathError(f"{setting}='{name}' is refused: it leads outside MODEL_ROOT ({model_root})")
    if not trained and resolved.is_relative_to(model_root.resolve() / TRAINED_MODELS_DIR):
        raise ModelPathError(f"{setting}='{name}' is refused: MODEL_ROOT/{TRAINED_MODELS_DIR}/ holds the projects' "
                             "trained models, which serve only their own project (promoted by training); copy a "
                             "model elsewhere in MODEL_ROOT to use it in another config")
    return resolved


def select_device(requested: str) -> str:
    """`auto` -> `cuda:0` when CUDA is available, else `cpu`; other values are checked."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelPathError(f"DEVICE={requested} but CUDA is not available; use DEVICE=auto or cpu")
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ModelPathError(f"DEVICE={requested} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return f"cuda:{index}"
    return "cpu"


class ModelCache:
    """Loaded models keyed by (kind, path, options); concurrent first requests load a model once."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}
        self._load_seconds: dict[tuple, float] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: tuple, load: Callable[[], Any]) -> Any:
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                started = time.perf_counter()
                self._models[key] = load()
                self._load_seconds[key] = time.perf_counter() - started
                logger.info("loaded %s in %.2f s", key, self._load_seconds[key])
            return self._models[key]

    def discard(self, stale: Callable[[tuple], bool]) -> None:
        """Forget the loaded models whose key `stale` accepts (they are freed once no request holds them)."""
        with self._guard:
            for key in [key for key in list(self._models) if stale(key)]:
                self._models.pop(key, None)
                self._load_seconds.pop(key, None)

    def loaded(self) -> dict[tuple, float]:
        """Keys of loaded models with their load time in seconds."""
        return dict(self._load_seconds)
