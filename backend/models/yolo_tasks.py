"""Ultralytics YOLO pose, OBB and classification models behind one small interface.

Their outputs, in pixels of the image as given (EXIF orientation applied), are Ultralytics' own
numbers taken from its `Results` unchanged; backend/prediction turns them into Label Studio regions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.models.yolo import INFERENCE_THREADS
from backend.models.yolo_files import load_yolo

TASK_NAMES = {"detect": "detection", "segment": "segmentation", "pose": "pose", "obb": "OBB (rotated box)",
              "classify": "classification"}


@dataclass(frozen=True)
class RotatedBoxes:
    """OBB model output: each box as (cx, cy, w, h, angle in radians clockwise on screen)."""

    xywhr: np.ndarray  # (N, 5)
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Poses:
    """Pose model output: each object's box and its keypoints."""

    boxes: np.ndarray  # (N, 4) xyxy
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]
    keypoints: np.ndarray  # (N, K, 2) x, y
    keypoint_scores: np.ndarray  # (N, K) visibility confidence; 1 where the model has none

    def __len__(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ClassProbabilities:
    """Classification model output: the probability of every class, in the model's class order."""

    class_names: tuple[str, ...]
    probs: np.ndarray  # (C,)


TaskOutput = RotatedBoxes | Poses | ClassProbabilities


class TaskYoloModel:
    """A loaded YOLO pose, OBB or classification model; `predict` is thread-safe (calls are serialized)."""

    def __init__(self, path: Path, setting: str, device: str, half: bool, imgsz: int) -> None:
        self._model, _ = load_yolo(path, setting)
        self.path = path
        self.device = device
        self.half = half and device.startswith("cuda")
        self.imgsz = imgsz or None
        self._lock = threading.Lock()

    @property
    def task(self) -> str:
        return self._model.task

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self._model.names
        return tuple(names[i] for i in sorted(names))

    @property
    def keypoint_names(self) -> dict[str, tuple[str, ...]]:
        """A pose model's keypoint names by class name (Ultralytics' `kpt_names`: "0", "1", ... unless its
        dataset named them); {} when the model file does not say (an export without that metadata)."""
        inner = self._model.model
        by_id = getattr(inner, "kpt_names", None)
        shape = getattr(inner, "kpt_shape", None)
        if not by_id and shape:
            by_id = {class_id: [str(i) for i in range(int(shape[0]))] for class_id in self._model.names}
        return {self._model.names[class_id]: tuple(names) for class_id, names in (by_id or {}).items()}

    def predict(self, images_rgb: list[np.ndarray], conf: float) -> list[TaskOutput]:
        """Ultralytics' `predict` on RGB images (one forward pass for the list)."""
        return self.infer(self.prepare(images_rgb), conf) if images_rgb else []

    def prepare(self, images_rgb: list[np.ndarray]) -> list[np.ndarray]:
        """The images as Ultralytics takes them (BGR), for `infer`; the batch predictor's pipeline step."""
        return [np.ascontiguousarray(image[:, :, ::-1]) for image in images_rgb]

    def infer(self, batch: list[np.ndarray], conf: float) -> list[TaskOutput]:
        import torch

        options = dict(conf=conf, device=self.device, verbose=False, batch=len(batch))
        if self.half:
            options["half"] = True
        if self.imgsz:
            options["imgsz"] = self.imgsz
        with self._lock:
            if self._model.predictor is None:  # Ultralytics' set-up lowers the thread count: set up first
                self._model.predict(np.zeros((32, 32, 3), np.uint8), **{**options, "batch": 1})
            torch.set_num_threads(INFERENCE_THREADS)
            results = self._model.predict(batch, **options)
        return [task_output(result) for result in results]


def _names(result, class_ids: np.ndarray) -> tuple[str, ...]:  # noqa: ANN001 - ultralytics Results
    return tuple(result.names[int(i)] for i in class_ids)


def task_output(result) -> TaskOutput:  # noqa: ANN001 - ultralytics Results
    """An Ultralytics `Results` of a pose, OBB or classification model as plain arrays."""
    if result.probs is not None:
        return ClassProbabilities(tuple(result.names[i] for i in sorted(result.names)),
                                  result.probs.data.cpu().numpy().astype(np.float64))
    if result.obb is not None:
        obb = result.obb
        return RotatedBoxes(obb.xywhr.cpu().numpy().astype(np.float64), obb.conf.cpu().numpy().astype(np.float64),
                            _names(result, obb.cls.cpu().numpy()))
    if result.keypoints is not None:
        boxes, keypoints = result.boxes, result.keypoints
        points = keypoints.xy.cpu().numpy().astype(np.float64)
        scores = keypoints.conf.cpu().numpy().astype(np.float64) if keypoints.conf is not None else np.ones(points.shape[:2])
        return Poses(boxes.xyxy.cpu().numpy().astype(np.float64), boxes.conf.cpu().numpy().astype(np.float64),
                     _names(result, boxes.cls.cpu().numpy()), points, scores)
    raise ValueError("not the result of a YOLO pose, OBB or classification model")
