"""YOLO model files: Ultralytics checkpoints (`.pt`) and Ultralytics' exports, loaded alike.

Exports carry Ultralytics' metadata (task, class names, input size, batch, dynamic shapes): the task
and input size are read here without loading the model, the class names by Ultralytics' loader.
Formats: `.onnx` (ONNX Runtime), `*_openvino_model/` directories (OpenVINO), `.torchscript` (torch)
and `.engine` (TensorRT, NVIDIA GPUs only). An export without that metadata
(made by another tool) is refused with what to do, rather than guessed from its file name.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.models.cache import ModelPathError

OPENVINO_DIR_SUFFIX = "_openvino_model"
# export format -> (module its runtime imports as, what to install)
RUNTIMES = {
    "onnx": ("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)"),
    "openvino": ("openvino", "pip install openvino"),
    "engine": ("tensorrt", "TensorRT on an NVIDIA GPU (pip install tensorrt)"),
    "torchscript": ("torch", "torch"),
}


@dataclass(frozen=True)
class ExportInfo:
    format: str  # onnx | openvino | engine | torchscript
    task: str
    imgsz: tuple[int, int] | None
    dynamic: bool  # False: fixed input size and batch, as exported


def export_format(path: Path) -> str | None:
    """The Ultralytics export format of `path`, or None for a checkpoint (or anything else)."""
    if path.name.endswith(OPENVINO_DIR_SUFFIX):
        return "openvino"
    return {".onnx": "onnx", ".engine": "engine", ".torchscript": "torchscript"}.get(path.suffix.lower())


def model_exists(path: Path) -> bool:
    """A model file, or an exported model directory (OpenVINO)."""
    return path.is_file() or (path.is_dir() and export_format(path) == "openvino")


def not_a_model(path: Path) -> str | None:
    """Why an existing file cannot be a model (checked from its name and first bytes, nothing loaded), or None.
    Ultralytics would accept any name and fail only on the first prediction."""
    if not path.is_file() or export_format(path) is not None:
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"'{path.name}' cannot be read ({type(exc).__name__})"
    # a checkpoint is a zip file (torch.save) or a pickle (older torch)
    if path.suffix.lower() != ".pt" or not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        return (f"'{path.name}' is not a model: a YOLO model is a .pt checkpoint or an Ultralytics export "
                f"(.onnx, .torchscript, .engine, *{OPENVINO_DIR_SUFFIX}/)")
    return None


def export_info(path: Path, setting: str) -> ExportInfo | None:
    """What an Ultralytics export's metadata says; None for checkpoints. Raises ModelPathError for an
    export that cannot be used here (no metadata, its runtime not installed)."""
    from ultralytics.nn.backends.base import BaseBackend

    kind = export_format(path)
    if kind is None:
        return None
    module, install = RUNTIMES[kind]
    if importlib.util.find_spec(module) is None:
        raise ModelPathError(f"{setting}: '{path.name}' is a {kind} export, which needs {install}")
    metadata = BaseBackend.read_metadata(path)
    if not metadata.get("task") or not metadata.get("names"):
        raise ModelPathError(f"{setting}: '{path.name}' has no Ultralytics metadata (task, class names); export the "
                             f"model with Ultralytics (`yolo export model=best.pt format={kind}`)")
    args = _literal(metadata.get("args")) or {}
    imgsz = _literal(metadata.get("imgsz"))
    return ExportInfo(kind, str(metadata["task"]), tuple(int(side) for side in imgsz) if imgsz else None,
                      bool(args.get("dynamic", False)))


def _literal(value: Any) -> Any:
    """Metadata values are Python literals as text in some formats (ONNX), parsed values in others."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def load_yolo(path: Path, setting: str) -> tuple[Any, ExportInfo | None]:
    """Ultralytics' `YOLO` for a checkpoint or an export, and the export's metadata (None for a checkpoint).

    Raises ModelPathError naming `setting` for a missing file, an unusable export or a file Ultralytics
    cannot load."""
    from ultralytics import YOLO

    if not model_exists(path) and not is_downloadable_asset(path.name):
        raise ModelPathError(f"{setting}: model file '{path}' does not exist (MODEL_ROOT is {path.parent})")
    if problem := not_a_model(path):
        raise ModelPathError(f"{setting}: {problem}")
    export = export_info(path, setting)
    try:
        return YOLO(str(path), task=export.task if export else None), export
    except Exception as exc:  # Ultralytics raises many types for offline downloads and bad files
        hint = " (no internet? download it elsewhere and put it in MODEL_ROOT)" if not model_exists(path) else ""
        raise ModelPathError(f"{setting}: cannot load YOLO model '{path.name}'{hint}: {type(exc).__name__}: "
                             f"{str(exc)[:300]}") from None


def is_downloadable_asset(name: str) -> bool:
    """A name Ultralytics downloads on first use (yolov8n.pt ...), when online."""
    try:
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    except ImportError:
        return False
    return name in GITHUB_ASSETS_NAMES
