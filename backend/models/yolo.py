"""Ultralytics YOLO (detection and segmentation) behind one small interface."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from formats.mask_crop import MaskCrops
from backend.models.cache import ModelPathError
from backend.models.yolo_files import load_yolo
from backend.models.yolo_masks import retina_mask_crops

logger = logging.getLogger(__name__)

SUPPORTED_TASKS = ("detect", "segment")

# torch's intra-op threads for inference: the process' own count (OMP_NUM_THREADS, else torch's default,
# the physical cores), read at import. Ultralytics' CPU device setup lowers the count to cores - 1 (a
# training habit) in whichever thread sets up a predictor, so a count read later, in a worker thread
# that already set up another model, could be that one.
INFERENCE_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class Detections:
    """One image's detections in pixels of the image as given (EXIF orientation already applied)."""

    boxes: np.ndarray  # (N, 4) float xyxy
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]
    masks: MaskCrops | None  # each object's mask, at the image's resolution; None for detection models
    # What NMS kept between the candidate floor and the threshold (no masks): the task score reads them.
    candidates: Candidates | None = None
    embedding: np.ndarray | None = None  # the backbone's pooled features of the image (C,), for clusters

    def __len__(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Candidates:
    """Detections scored below the threshold the caller asked for, and at least its candidate floor."""

    boxes: np.ndarray  # (N, 4) float xyxy
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class PreparedBatch:
    """Images letterboxed into the model's input tensor, ready for `YoloModel.infer`."""

    tensor: torch.Tensor
    shapes: list[tuple[int, int, int]]  # each original image's (height, width, channels)


class YoloModel:
    """A loaded YOLO model; `predict` is safe to call from several threads (calls are serialized)."""

    def __init__(self, path: Path, setting: str, device: str, half: bool, imgsz: int) -> None:
        self._model, export = load_yolo(path, setting)
        if self._model.task not in SUPPORTED_TASKS:
            raise ModelPathError(f"{setting}: '{path.name}' is a YOLO '{self._model.task}' model; detection or segmentation models are supported")
        self.path = path
        self.device = device
        self.half = half and device.startswith("cuda")
        self.imgsz = imgsz or None  # None: the size the model was trained at (Ultralytics keeps it in overrides)
        if export and not export.dynamic and self.imgsz and export.imgsz and export.imgsz != (imgsz, imgsz):
            logger.warning("%s: '%s' was exported for a fixed %dx%d input; YOLO_IMGSZ=%d does not apply to it",
                           setting, path.name, *export.imgsz, imgsz)
            self.imgsz = None
        self._lock = threading.Lock()
        self._predictor = None  # Ultralytics' predictor, set up on first use (see _setup)
        self._keep_conf = 0.0  # the threshold of the running `infer`: detections below it are candidates
        self._pooled: np.ndarray | None = None  # the running forward pass' pooled backbone features (B, C)
        if export:
            try:  # start the export's runtime now: a model that cannot run fails here, not on a request
                self._setup()
            except Exception as exc:  # onnxruntime, OpenVINO and TensorRT raise their own types
                raise ModelPathError(f"{setting}: cannot run {export.format} model '{path.name}' on {device}: "
                                     f"{type(exc).__name__}: {str(exc)[:300]}") from None

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
        return self.infer(self.prepare(images_rgb), conf)

    def prepare(self, images_rgb: list[np.ndarray]) -> PreparedBatch:
        """Letterbox the images into one input tensor (Ultralytics' own preprocessing). Needs no lock:
        a pipeline prepares the next batch while `infer` runs the current one."""
        predictor = self._setup()
        # Ultralytics' `preprocess` without its BGR -> RGB swap: letterboxing treats channels alike, so
        # RGB images give the tensor it makes from BGR ones, without a BGR copy of each image.
        with torch.inference_mode():
            letterboxed = predictor.pre_transform(list(images_rgb))
            batch = torch.from_numpy(np.stack(letterboxed)) if len(letterboxed) > 1 else torch.from_numpy(letterboxed[0])[None]
            tensor = batch.to(predictor.device).permute(0, 3, 1, 2).contiguous()
            tensor = (tensor.half() if predictor.model.fp16 else tensor.float()).div_(255)
        return PreparedBatch(tensor, [image.shape for image in images_rgb])

    def infer(self, prepared: PreparedBatch, conf: float, candidate_floor: float | None = None) -> list[Detections]:
        """Forward pass, NMS (Ultralytics' own) and, for segmentation models, each object's retina mask
        computed inside its box only (backend/models/yolo_masks.py).

        With candidate_floor below conf, NMS runs at the floor and the detections in [floor, conf) come
        back as `candidates` (no masks): NMS never lets a lower score suppress a higher one, so the
        detections at or above conf are the same as without. Each image's pooled backbone features come
        back as `embedding`, read by a hook in the same forward pass."""
        predictor = self._setup()
        with self._lock, torch.inference_mode():
            torch.set_num_threads(INFERENCE_THREADS)
            floor = conf if candidate_floor is None else min(candidate_floor, conf)
            predictor.args.conf = floor
            self._keep_conf = conf
            self._pooled = None
            preds = predictor.inference(prepared.tensor)
            # NMS and the per-object masks are many small operations, faster on one thread than on a
            # team that has to be woken for each (several times faster on a busy 2-core machine).
            torch.set_num_threads(1)
            try:
                # Shapes stand in for the original images: postprocess reads nothing else of them.
                return predictor.postprocess(preds, prepared.tensor, [np.empty(shape, np.uint8) for shape in prepared.shapes])
            finally:
                torch.set_num_threads(INFERENCE_THREADS)

    def _setup(self):  # noqa: ANN202 - an Ultralytics predictor
        """Ultralytics' predictor, configured by one `predict` call on a blank image (which also warms it
        up), with its result construction replaced by `_detections`: same preprocessing, model and NMS."""
        with self._lock:
            if self._predictor is None:
                options = dict(device=self.device, retina_masks=True, verbose=False)
                if self.half:
                    options["half"] = True
                if self.imgsz:
                    options["imgsz"] = self.imgsz
                self._model.predict(np.zeros((64, 64, 3), dtype=np.uint8), **options)
                predictor = self._model.predictor
                predictor.construct_results = self._detections
                self._hook_backbone(predictor.model)
                self._predictor = predictor
            return self._predictor

    def _hook_backbone(self, backend: torch.nn.Module) -> None:
        """Keep the last backbone layer's output, averaged over the image, of every forward pass (the
        image's embedding). Exported models (ONNX, TensorRT ...) have no layers to hook: no embedding."""
        network = getattr(backend, "model", None)
        layers = getattr(network, "model", None)
        backbone = getattr(network, "yaml", {}).get("backbone") if isinstance(getattr(network, "yaml", None), dict) else None
        if not isinstance(layers, torch.nn.Sequential) or not backbone or len(layers) < len(backbone):
            return

        def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                self._pooled = output.float().mean(dim=(2, 3)).cpu().numpy()

        layers[len(backbone) - 1].register_forward_hook(keep)

    def _detections(self, preds: list[torch.Tensor], img: torch.Tensor, orig_imgs: list[np.ndarray],
                    protos: torch.Tensor | None = None) -> list[Detections]:
        from ultralytics.utils import ops

        names = self._predictor.model.names
        pooled = self._pooled if self._pooled is not None and len(self._pooled) == len(preds) else None
        found = []
        for index, (pred, orig) in enumerate(zip(preds, orig_imgs)):
            height, width = orig.shape[:2]
            pred[:, :4] = ops.scale_boxes(img.shape[2:], pred[:, :4], orig.shape)
            below = pred[:, 4] < self._keep_conf
            candidates = Candidates(pred[below, :4].cpu().numpy().astype(np.float64),
                                    pred[below, 4].cpu().numpy().astype(np.float64),
                                    tuple(names[int(i)] for i in pred[below, 5].tolist()))
            pred = pred[~below]
            masks = None
            if self.has_masks:
                crops = retina_mask_crops(protos[index], pred[:, 6:], pred[:, :4], (height, width))
                keep = [k for k, crop in enumerate(crops) if crop is not None]  # Ultralytics drops empty masks too
                pred = pred[keep]
                masks = MaskCrops([crops[k] for k in keep], width, height)
            found.append(Detections(
                boxes=pred[:, :4].cpu().numpy().astype(np.float64),
                scores=pred[:, 4].cpu().numpy().astype(np.float64),
                class_names=tuple(names[int(i)] for i in pred[:, 5].tolist()),
                masks=masks,
                candidates=candidates,
                embedding=None if pooled is None else pooled[index].astype(np.float64),
            ))
        return found


def preparing_thread() -> None:
    """Initializer of a thread that letterboxes batches while another runs inference: one torch thread,
    so the light preprocessing does not contend with the inference's threads for the cores."""
    torch.set_num_threads(1)
