"""Ultralytics YOLO (detection and segmentation) behind one small interface."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.models.cache import ModelPathError

logger = logging.getLogger(__name__)

SUPPORTED_TASKS = ("detect", "segment")


@dataclass(frozen=True)
class Detections:
    """One image's detections in pixels of the image as given (EXIF orientation already applied)."""

    boxes: np.ndarray  # (N, 4) float xyxy
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]
    masks: np.ndarray | None  # (N, H, W) bool at the image's size; None for detection models

    def __len__(self) -> int:
        return len(self.class_names)


class YoloModel:
    """A loaded YOLO model; `predict` is safe to call from several threads (calls are serialized)."""

    def __init__(self, path: Path, setting: str, device: str, half: bool, imgsz: int) -> None:
        import torch
        from ultralytics import YOLO

        # Ultralytics' CPU device setup lowers torch's thread count to cores - 1 (a training habit) in
        # whichever thread first predicts; inference here keeps the process' own count (OMP_NUM_THREADS).
        self._torch_threads = torch.get_num_threads()
        if not path.is_file() and not is_downloadable_asset(path.name):
            raise ModelPathError(f"{setting}: model file '{path}' does not exist (MODEL_ROOT is {path.parent})")
        try:
            self._model = YOLO(str(path))
        except Exception as exc:  # Ultralytics raises many types for offline downloads and bad files
            hint = " (no internet? download it elsewhere and put it in MODEL_ROOT)" if not path.is_file() else ""
            raise ModelPathError(f"{setting}: cannot load YOLO model '{path.name}'{hint}: {type(exc).__name__}: {str(exc)[:300]}") from None
        if self._model.task not in SUPPORTED_TASKS:
            raise ModelPathError(f"{setting}: '{path.name}' is a YOLO '{self._model.task}' model; detection or segmentation models are supported")
        self.path = path
        self.device = device
        self.half = half and device.startswith("cuda")
        self.imgsz = imgsz or None  # None: the size the model was trained at (Ultralytics keeps it in overrides)
        self._lock = threading.Lock()

    @property
    def task(self) -> str:
        return self._model.task

    @property
    def has_masks(self) -> bool:
        return self.task == "segment"

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self._model.names
        return tuple(names[i] for i in sorted(names))

    def predict(self, images_rgb: list[np.ndarray], conf: float) -> list[Detections]:
        """Run the model on RGB images (one forward pass for the list)."""
        if not images_rgb:
            return []
        # Ultralytics takes numpy images as BGR, like OpenCV.
        batch = [np.ascontiguousarray(image[:, :, ::-1]) for image in images_rgb]
        options = dict(conf=conf, device=self.device, retina_masks=True, verbose=False, batch=len(batch))
        if self.half:
            options["half"] = True
        if self.imgsz:
            options["imgsz"] = self.imgsz
        import torch

        with self._lock:
            torch.set_num_threads(self._torch_threads)
            results = self._model.predict(batch, **options)
        return [_to_detections(result, self.has_masks) for result in results]


def _to_detections(result, has_masks: bool) -> Detections:  # noqa: ANN001 - ultralytics Results
    boxes = result.boxes
    class_ids = boxes.cls.cpu().numpy().astype(int)
    masks = None
    if result.masks is not None:
        masks = result.masks.data.cpu().numpy() > 0.5
    elif has_masks:  # a segmentation model that found nothing
        masks = np.zeros((0, *result.orig_shape), dtype=bool)
    return Detections(
        boxes=boxes.xyxy.cpu().numpy().astype(np.float64),
        scores=boxes.conf.cpu().numpy().astype(np.float64),
        class_names=tuple(result.names[i] for i in class_ids),
        masks=masks,
    )


def is_downloadable_asset(name: str) -> bool:
    try:
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    except ImportError:
        return False
    return name in GITHUB_ASSETS_NAMES
