"""Segment Anything behind one small interface: load a checkpoint, embed an image once, decode prompts.

`SamModel` does SamPredictor's math (ResizeLongestSide, `Sam.preprocess`, `predict_torch`) on an
embedding that it hands out instead of keeping, so one loaded model can serve many images from
many threads. `SamSegmenter` adds the embedding caches (see backend/models/sam_embeddings.py) and
makes sure each image goes through the expensive image encoder once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.models.cache import ModelPathError
from backend.models.sam_embeddings import DiskEmbeddings, ImageEmbedding, MemoryEmbeddings, image_key

logger = logging.getLogger(__name__)

CHECKPOINT_SETTING = "SAM_CHECKPOINT_FILE (sam_checkpoint_file)"
DEMO_CONFIG = "demo"
# The Python package that holds each model family's `sam_model_registry`, and how to install it.
FAMILIES: dict[str, tuple[str, str]] = {
    "sam": ("segment_anything", "pip install segment-anything"),
    "mobile_sam": ("mobile_sam", "pip install git+https://github.com/ChaoningZhang/MobileSAM.git"),
    "sam_hq": ("segment_anything_hq", "pip install segment-anything-hq timm"),
}
CONFIGS: dict[str, tuple[str, ...]] = {
    "sam": ("vit_b", "vit_l", "vit_h", DEMO_CONFIG),
    "mobile_sam": ("vit_t",),
    "sam_hq": ("vit_b", "vit_l", "vit_h", "vit_tiny"),
}
ENCODER_WIDTHS = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}  # ViT embedding width of each SAM size
BOX_BATCH = 16  # box prompts decoded together; bounds the full-resolution float masks held at once


class SamLoadError(ModelPathError):
    """The SAM model cannot be loaded; the message names the setting to change."""


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of a segment-anything `Sam` (defaults: vit_b); the demo checkpoint stores its own."""

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_use_rel_pos: bool = True
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    @classmethod
    def from_dict(cls, values: dict) -> SamArchitecture:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SAM architecture fields {unknown}")
        values = dict(values)
        if "encoder_global_attn_indexes" in values:
            values["encoder_global_attn_indexes"] = tuple(values["encoder_global_attn_indexes"])
        return cls(**values)

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return values

    def build(self) -> torch.nn.Module:
        """A randomly initialized `Sam`, built like segment_anything.build_sam._build_sam."""
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        embedding_size = self.img_size // self.patch_size
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=self.encoder_depth, embed_dim=self.encoder_embed_dim, img_size=self.img_size, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=self.encoder_num_heads,
                patch_size=self.patch_size, qkv_bias=True, use_rel_pos=self.encoder_use_rel_pos,
                global_attn_indexes=self.encoder_global_attn_indexes, window_size=self.encoder_window_size,
                out_chans=self.prompt_embed_dim),
            prompt_encoder=PromptEncoder(
                embed_dim=self.prompt_embed_dim, image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(self.img_size, self.img_size), mask_in_chans=self.mask_in_chans),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=self.decoder_depth, embedding_dim=self.prompt_embed_dim,
                                              mlp_dim=self.decoder_mlp_dim, num_heads=self.decoder_num_heads),
                transformer_dim=self.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=self.iou_head_hidden_dim),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        return sam.eval()


# ---------------------------------------------------------------- loading


def resolve_checkpoint(value: str, model_root: Path) -> Path:
    """SAM_CHECKPOINT_FILE as given: absolute, else relative to the working directory, then to MODEL_ROOT.

    Unlike label-config `model_path` values, this comes from the operator, so any path is allowed.
    """
    if not value:
        raise SamLoadError(f"{CHECKPOINT_SETTING} is empty: set it to a SAM checkpoint, e.g. ./sam_vit_b_01ec64.pth")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, model_root / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = " and ".join(str(c) for c in candidates)
    raise SamLoadError(f"{CHECKPOINT_SETTING}='{value}' not found (looked at {looked})")


def check_choice(model_name: str, config: str) -> None:
    if model_name not in CONFIGS:
        raise SamLoadError(f"MODEL_NAME (model_name) must be one of {', '.join(CONFIGS)}, not '{model_name}'")
    if config not in CONFIGS[model_name]:
        owner = next((name for name, configs in CONFIGS.items() if config in configs), None)
        hint = f"; '{config}' belongs to MODEL_NAME={owner}" if owner else ""
        raise SamLoadError(f"SAM_CONFIG (sam_config)='{config}' is not a {model_name} architecture: use one of "
                           f"{', '.join(CONFIGS[model_name])}{hint}")


def _registry(model_name: str) -> dict[str, Callable[..., torch.nn.Module]]:
    package, install = FAMILIES[model_name]
    try:
        return importlib.import_module(package).sam_model_registry
    except ImportError as exc:  # the package itself, or one of its own dependencies (SAM-HQ needs timm)
        raise SamLoadError(f"MODEL_NAME (model_name)={model_name} needs the optional '{package}' package, which "
                           f"cannot be imported ({exc}): {install}") from None


def _read_checkpoint(path: Path) -> dict:
    try:
        # weights_only: a checkpoint is data, and must not be able to run code when it is read.
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors of many types
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{path}' is not a PyTorch weights file: "
                           f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(content, dict):
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{path}' holds a {type(content).__name__}, not a state dict")
    return content


def _check_encoder_width(state_dict: dict, model_name: str, config: str, checkpoint: Path) -> None:
    """Catch the usual mistake (a vit_h file with SAM_CONFIG=vit_b) before building a large network."""
    weight = state_dict.get("image_encoder.patch_embed.proj.weight")
    expected = ENCODER_WIDTHS.get(config)
    if expected is None or not isinstance(weight, torch.Tensor) or int(weight.shape[0]) == expected:
        return
    width = int(weight.shape[0])
    looks_like = next((name for name, value in ENCODER_WIDTHS.items() if value == width), None)
    hint = f"; it looks like a {looks_like} checkpoint" if looks_like else ""
    raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' does not fit MODEL_NAME={model_name} SAM_CONFIG={config}: "
                       f"its image encoder is {width} wide, {config}'s is {expected}{hint}")


def load_sam_network(model_name: str, config: str, checkpoint: Path) -> torch.nn.Module:
    """Build the network for (MODEL_NAME, SAM_CONFIG) and load the checkpoint's weights into it."""
    check_choice(model_name, config)
    content = _read_checkpoint(checkpoint)
    if config == DEMO_CONFIG:
        if "sam_architecture" not in content or "state_dict" not in content:
            raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' is not a demo SAM checkpoint (SAM_CONFIG=demo "
                               "expects the file written by tools/make_demo_models.py, e.g. models/demo-tiny-sam.pt)")
        try:
            network = SamArchitecture.from_dict(content["sam_architecture"]).build()
        except (TypeError, ValueError) as exc:
            raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}': bad demo architecture: {exc}") from None
        state_dict = content["state_dict"]
    else:
        _check_encoder_width(content, model_name, config, checkpoint)
        network = _registry(model_name)[config](checkpoint=None)
        state_dict = content
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_lines = "; ".join(str(exc).splitlines()[:3])[:400]
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' does not fit MODEL_NAME={model_name} "
                           f"SAM_CONFIG={config}: {first_lines}") from None
    return network.eval()


def checkpoint_fingerprint(path: Path, samples: int = 16, sample_bytes: int = 1 << 16) -> str:
    """Identifies a checkpoint's content for the disk cache without reading gigabytes at start-up."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as file:
        for index in range(samples):
            file.seek(max(0, size - sample_bytes) * index // max(1, samples - 1))
            digest.update(file.read(sample_bytes))
    return digest.hexdigest()


# ---------------------------------------------------------------- the model


class SamModel:
    """A loaded SAM network and SamPredictor's math, with the image embedding passed in and out."""

    def __init__(self, network: torch.nn.Module, device: str, name: str) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.network = network.to(device)
        self.device = torch.device(device)
        self.name = name
        self.transform = ResizeLongestSide(network.image_encoder.img_size)
        # SAM-HQ's encoder also returns intermediate ViT features, and its decoder takes them.
        self._hq = "interm_embeddings" in network.mask_decoder.forward.__code__.co_varnames
        # Ultralytics lowers torch's CPU thread count to cores - 1 when YOLO first predicts on CPU; SAM
        # calls (request or prefetch threads) keep the count the process had when SAM was loaded.
        self._torch_threads = torch.get_num_threads()

    @torch.no_grad()
    def embed(self, pixels: np.ndarray) -> ImageEmbedding:
        """Run the image encoder on HxWx3 uint8 RGB pixels (SamPredictor.set_image)."""
        torch.set_num_threads(self._torch_threads)
        resized = self.transform.apply_image(pixels)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        encoded = self.network.image_encoder(self.network.preprocess(tensor))
        features, interm = (encoded[0], tuple(encoded[1])) if self._hq else (encoded, ())
        return ImageEmbedding(features, interm, tuple(tensor.shape[-2:]), tuple(pixels.shape[:2]))

    @torch.no_grad()
    def decode(self, embedding: ImageEmbedding, points: np.ndarray | None, point_labels: np.ndarray | None,
               box: np.ndarray | None, multimask: bool, best_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Masks (C, H, W) bool and their predicted IoU (C,) for one prompt (SamPredictor.predict);
        with `best_only`, only the candidate with the highest predicted IoU (C = 1)."""
        coords = labels = boxes = None
        if points is not None:
            coords = torch.as_tensor(self.transform.apply_coords(points, embedding.original_size),
                                     dtype=torch.float, device=self.device)[None, :, :]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None, :]
        if box is not None:
            boxes = torch.as_tensor(self.transform.apply_boxes(box, embedding.original_size),
                                    dtype=torch.float, device=self.device)[None, :]
        masks, scores = self._predict_torch(embedding, coords, labels, boxes, multimask, best_only)
        return masks[0].cpu().numpy(), scores[0].cpu().numpy()

    @torch.no_grad()
    def decode_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        """One mask per xyxy pixel box: (N, H, W) bool (SamPredictor.predict_torch with N boxes)."""
        height, width = embedding.original_size
        masks = np.zeros((len(boxes), height, width), dtype=bool)
        for start in range(0, len(boxes), BOX_BATCH):
            chunk = self.transform.apply_boxes(np.asarray(boxes[start:start + BOX_BATCH], dtype=np.float64),
                                               embedding.original_size)
            chunk_masks, _ = self._predict_torch(embedding, None, None,
                                                 torch.as_tensor(chunk, dtype=torch.float, device=self.device), False)
            masks[start:start + len(chunk)] = chunk_masks[:, 0].cpu().numpy()
        return masks

    def _predict_torch(self, embedding: ImageEmbedding, coords: torch.Tensor | None, labels: torch.Tensor | None,
                       boxes: torch.Tensor | None, multimask: bool,
                       best_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        torch.set_num_threads(self._torch_threads)
        network = self.network
        sparse, dense = network.prompt_encoder(points=(coords, labels) if coords is not None else None,
                                               boxes=boxes, masks=None)
        extra: dict[str, Any] = {"hq_token_only": False, "interm_embeddings": list(embedding.interm)} if self._hq else {}
        low_res, scores = network.mask_decoder(image_embeddings=embedding.features,
                                               image_pe=network.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=multimask, **extra)
        if best_only:  # choose before upscaling: postprocessing is per mask, so the chosen mask is the same
            best = scores.argmax(dim=1, keepdim=True)
            low_res = torch.take_along_dim(low_res, best[:, :, None, None], dim=1)
            scores = torch.take_along_dim(scores, best, dim=1)
        masks = network.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        return masks > network.mask_threshold, scores


def load_sam(model_name: str, config: str, checkpoint: Path, device: str) -> SamModel:
    network = load_sam_network(model_name, config, checkpoint)
    return SamModel(network, device, f"{model_name}:{config}:{checkpoint.name}")


# ---------------------------------------------------------------- cached embeddings


class SamSegmenter:
    """A SamModel whose image embeddings are computed once per image and shared by all threads.

    Lookups go memory LRU, then disk, then the image encoder. The encoder runs under one lock,
    and the caches are checked again once it is held, so concurrent clicks on a new image wait
    for the first one's embedding instead of computing their own.
    """

    def __init__(self, model: SamModel, memory: MemoryEmbeddings, disk: DiskEmbeddings | None,
                 on_lookup: Callable[[str], None] = lambda result: None) -> None:
        self.model = model
        self._memory = memory
        self._disk = disk
        self._on_lookup = on_lookup  # called with "hit" or "miss"
        self._encoder_lock = threading.Lock()
        self.encoder_calls = 0
        self.disk_hits = 0

    def embedding(self, pixels: np.ndarray, key: str | None = None) -> ImageEmbedding:
        """The image's embedding; `key` is image_key(pixels) when the caller already has it."""
        key = key or image_key(pixels)
        found = self._memory.get(key)
        if found is None:
            with self._encoder_lock:
                found = self._memory.get(key)
                if found is None:
                    found = self._from_disk(key)
                if found is None:
                    self._on_lookup("miss")
                    found = self.model.embed(pixels)
                    self.encoder_calls += 1
                    self._memory.put(key, found)
                    if self._disk is not None:
                        self._disk.save(key, found)
                    return found
        self._on_lookup("hit")
        return found

    def _from_disk(self, key: str) -> ImageEmbedding | None:
        if self._disk is None:
            return None
        found = self._disk.load(key, self.model.device)
        if found is not None:
            self.disk_hits += 1
            self._memory.put(key, found)
        return found

    def masks(self, pixels: np.ndarray, points: np.ndarray | None, point_labels: np.ndarray | None,
              box: np.ndarray | None, multimask: bool, key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.model.decode(self.embedding(pixels, key), points, point_labels, box, multimask)

    def best_mask(self, pixels: np.ndarray, points: np.ndarray | None, point_labels: np.ndarray | None,
                  box: np.ndarray | None, multimask: bool, key: str | None = None) -> tuple[np.ndarray, float]:
        """The (H, W) bool mask with the highest predicted IoU, and that IoU."""
        masks, scores = self.model.decode(self.embedding(pixels, key), points, point_labels, box, multimask,
                                          best_only=True)
        return masks[0], float(scores[0])

    def masks_for_boxes(self, pixels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.model.decode_boxes(self.embedding(pixels), boxes)
