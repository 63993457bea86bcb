"""Segment Anything behind one small interface: load a checkpoint, embed an image once, decode prompts.

`SamModel` does SamPredictor's math (ResizeLongestSide, `Sam.preprocess`, `predict_torch`) on an
embedding that it hands out instead of keeping, so one loaded model can serve many images from
many threads; it serves SAM, SAM-HQ, MobileSAM and the demo SAM (`Sam2Model` in backend/models/sam2.py
does the same for SAM 2). Which network a checkpoint needs is read from its weights
(backend/models/sam_checkpoints.py). `SamSegmenter` adds the embedding caches (see
backend/models/sam_embeddings.py) and makes sure each image goes through the expensive image encoder once.
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
from typing import Any, Protocol

import numpy as np
import torch

from backend.models.sam2 import Sam2Model, load_sam2_network
from backend.models.sam3 import MODEL_NAME as SAM3_NAME, load_sam3
from backend.models.sam_checkpoints import (CHECKPOINT_SETTING, DEMO_CONFIG, CheckpointKind, SamLoadError,
                                            choose_kind, mismatch_summary, read_checkpoint, weights)
from backend.models.sam_embeddings import DiskEmbeddings, ImageEmbedding, MemoryEmbeddings, image_key

logger = logging.getLogger(__name__)

# The Python package that holds each model family's `sam_model_registry`, and how to install it.
FAMILIES: dict[str, tuple[str, str]] = {
    "sam": ("segment_anything", "pip install segment-anything"),
    "sam_hq": ("segment_anything_hq", "pip install segment-anything-hq timm"),
}
BOX_BATCH = 16  # box prompts decoded together; bounds the full-resolution float masks held at once


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


def _registry(model_name: str) -> dict[str, Callable[..., torch.nn.Module]]:
    package, install = FAMILIES[model_name]
    try:
        return importlib.import_module(package).sam_model_registry
    except ImportError as exc:  # the package itself, or one of its own dependencies (SAM-HQ needs timm)
        raise SamLoadError(f"MODEL_NAME (model_name)={model_name} needs the optional '{package}' package, which "
                           f"cannot be imported ({exc}): {install}") from None


def mobile_sam_network() -> torch.nn.Module:
    """MobileSAM as upstream builds it: segment-anything's `Sam` around a TinyViT image encoder (Ultralytics' copy,
    whose weight names are upstream's, so `mobile_sam.pt` loads without the GitHub-only `mobile_sam` package)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    encoder = TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
                      depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
                      drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                      local_conv_size=3, layer_lr_decay=0.8)
    return Sam(image_encoder=encoder,
               prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                            mask_in_chans=16),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                   depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
                   iou_head_hidden_dim=256),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def load_sam_network(model_name: str, config: str, checkpoint: Path) -> tuple[torch.nn.Module, CheckpointKind]:
    """Build the network of (MODEL_NAME, SAM_CONFIG; an empty SAM_CONFIG: the checkpoint's own) and load its weights."""
    content = read_checkpoint(checkpoint)
    kind = choose_kind(model_name, config, checkpoint, content)
    if kind.model_name == "sam2":
        return load_sam2_network(kind, content, checkpoint), kind
    if kind.config == DEMO_CONFIG:
        try:
            network = SamArchitecture.from_dict(content["sam_architecture"]).build()
        except (TypeError, ValueError) as exc:
            raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' has a bad demo SAM architecture: {exc}") from None
        state_dict = content["state_dict"]
    elif kind.model_name == "mobile_sam":
        network, state_dict = mobile_sam_network(), weights(content)
    else:
        network, state_dict = _registry(kind.model_name)[kind.config](checkpoint=None), weights(content)
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError:
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' does not fit {kind.model_name} {kind.config}: "
                           f"{mismatch_summary(network, state_dict)}") from None
    return network.eval(), kind


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


class PromptableModel(Protocol):
    """What SamSegmenter needs of a model family (SamModel here, Sam2Model in backend/models/sam2.py)."""

    device: torch.device
    name: str

    def embed(self, pixels: np.ndarray) -> ImageEmbedding: ...

    def decode(self, embedding: ImageEmbedding, points: np.ndarray | None, point_labels: np.ndarray | None,
               box: np.ndarray | None, multimask: bool, best_only: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    def decode_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray: ...



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


def load_sam(model_name: str, config: str, checkpoint: Path, device: str) -> PromptableModel:
    """The model of (MODEL_NAME, SAM_CONFIG) with the checkpoint's weights, on `device`."""
    if model_name == SAM3_NAME:  # SAM 3 reads its sizes from the checkpoint; SAM_CONFIG does not apply
        return load_sam3(checkpoint, device)
    network, kind = load_sam_network(model_name, config, checkpoint)
    name = f"{kind.model_name}{kind.version.removeprefix('2')}:{kind.config}:{checkpoint.name}"
    return Sam2Model(network, device, name) if kind.model_name == "sam2" else SamModel(network, device, name)


# ---------------------------------------------------------------- cached embeddings


class SamSegmenter:
    """A SamModel or Sam2Model whose image embeddings are computed once per image and shared by all threads.

    Lookups go memory LRU, then disk, then the image encoder. The encoder runs under one lock,
    and the caches are checked again once it is held, so concurrent clicks on a new image wait
    for the first one's embedding instead of computing their own.
    """

    def __init__(self, model: PromptableModel, memory: MemoryEmbeddings, disk: DiskEmbeddings | None,
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
