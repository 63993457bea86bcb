"""SAM 2 / 2.1 behind the same interface as SamModel: Meta's `sam2` package, SAM2ImagePredictor's math.

Why Meta's package and not Ultralytics' port (both load Meta's `sam2.1_hiera_tiny.pt` and Ultralytics'
`sam2.1_t.pt`, which hold the same weights under the same names): Meta's SAM2ImagePredictor is the
reference the checkpoints were trained and evaluated with, and on one random-weight SAM 2.1 checkpoint
Ultralytics' port answered the same prompts with masks of IoU 0.61-0.66 against it. `sam2` adds only
hydra-core and iopath (pure Python) to what the backend already installs; its CUDA extension is optional.

`Sam2Model` does SAM2ImagePredictor.set_image / predict on an embedding it hands out (the image
embedding in `features`, the two high-resolution feature maps in `interm`), so SamSegmenter's caches
work unchanged. On CUDA the network runs under autocast, bfloat16 where the GPU has it, else float16,
as Meta runs SAM 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from backend.models.sam_checkpoints import CHECKPOINT_SETTING, CheckpointKind, SamLoadError, mismatch_summary, weights
from backend.models.sam_embeddings import ImageEmbedding

INSTALL = "pip install sam2 (the backend's [sam2] extra; SAM2_BUILD_CUDA=0 skips its optional CUDA extension)"
# Meta's config file of each size and version (inside the sam2 package).
CONFIG_FILES = {(size, version): f"configs/sam{version}/sam{version}_{size}.yaml"
                for size in ("hiera_t", "hiera_s", "hiera_b+", "hiera_l") for version in ("2", "2.1")}
BOX_LABELS = (2, 3)  # SAM 2's point labels for a box's top-left and bottom-right corners
BOX_BATCH = 16


def load_sam2_network(kind: CheckpointKind, content: dict, checkpoint: Path) -> torch.nn.Module:
    """Meta's SAM2Base for the checkpoint's size and version (build_sam2's defaults), with its weights."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise SamLoadError(f"MODEL_NAME (model_name)=sam2 needs the optional 'sam2' package, which cannot be "
                           f"imported ({exc}): {INSTALL}") from None
    network = build_sam2(CONFIG_FILES[(kind.config, kind.version)], ckpt_path=None, device="cpu")
    state = weights(content)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError:
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' does not fit SAM {kind.version} {kind.config}: "
                           f"{mismatch_summary(network, state)}") from None
    return network.eval()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Sam2Model:
    """A loaded SAM 2 network and SAM2ImagePredictor's math, with the image embedding passed in and out."""

    def __init__(self, network: torch.nn.Module, device: str, name: str) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.network = network.to(device)
        self.device = torch.device(device)
        self.name = name
        size = network.image_size
        self.transforms = SAM2Transforms(resolution=size, mask_threshold=0.0, max_hole_area=0.0, max_sprinkle_area=0.0)
        self._feature_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._autocast = autocast_dtype(self.device)
        self._torch_threads = torch.get_num_threads()  # see SamModel: Ultralytics lowers it

    @property
    def config_file(self) -> str:
        """Meta's config file of this size and version (the name is `sam2[.1]:<size>:<checkpoint>`)."""
        family, size = self.name.split(":")[:2]
        return CONFIG_FILES[(size, family.removeprefix("sam"))]

    def _running(self) -> contextlib.AbstractContextManager:
        torch.set_num_threads(self._torch_threads)
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    @torch.no_grad()
    def embed(self, pixels: np.ndarray) -> ImageEmbedding:
        """Run the image encoder on HxWx3 uint8 RGB pixels (SAM2ImagePredictor.set_image)."""
        network = self.network
        with self._running():
            writable = pixels if pixels.flags.writeable else pixels.copy()  # torchvision warns on read-only arrays
            image = self.transforms(writable)[None, ...].to(self.device)
            _, vision_feats, _, _ = network._prepare_backbone_features(network.forward_image(image))
            if network.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + network.no_mem_embed
            feats = [feat.permute(1, 2, 0).view(1, -1, *size)
                     for feat, size in zip(vision_feats[::-1], self._feature_sizes[::-1])][::-1]
        side = network.image_size
        return ImageEmbedding(feats[-1], tuple(feats[:-1]), (side, side), tuple(pixels.shape[:2]))

    @torch.no_grad()
    def decode(self, embedding: ImageEmbedding, points: np.ndarray | None, point_labels: np.ndarray | None,
               box: np.ndarray | None, multimask: bool, best_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Masks (C, H, W) bool and their predicted IoU (C,) for one prompt (SAM2ImagePredictor.predict);
        with `best_only`, only the candidate with the highest predicted IoU (C = 1)."""
        coords = labels = None
        if points is not None:
            coords = self.transforms.transform_coords(torch.as_tensor(points, dtype=torch.float, device=self.device),
                                                      normalize=True, orig_hw=embedding.original_size)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box_coords, box_labels = self._box_points(np.asarray(box).reshape(1, 4), embedding)
            coords = box_coords if coords is None else torch.cat([box_coords, coords], dim=1)
            labels = box_labels if labels is None else torch.cat([box_labels, labels], dim=1)
        masks, scores = self._predict(embedding, coords, labels, multimask, best_only)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy()

    @torch.no_grad()
    def decode_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        """One mask per xyxy pixel box: (N, H, W) bool (SAM2ImagePredictor.predict with N boxes)."""
        height, width = embedding.original_size
        masks = np.zeros((len(boxes), height, width), dtype=bool)
        for start in range(0, len(boxes), BOX_BATCH):
            coords, labels = self._box_points(np.asarray(boxes[start:start + BOX_BATCH]), embedding)
            chunk, _ = self._predict(embedding, coords, labels, multimask=False)
            masks[start:start + len(coords)] = chunk[:, 0].cpu().numpy()
        return masks

    def _box_points(self, boxes: np.ndarray, embedding: ImageEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes as SAM 2 takes them: two corner points each, labeled 2 and 3."""
        corners = self.transforms.transform_boxes(torch.as_tensor(boxes, dtype=torch.float, device=self.device),
                                                  normalize=True, orig_hw=embedding.original_size).reshape(-1, 2, 2)
        labels = torch.tensor([BOX_LABELS], dtype=torch.int, device=self.device).repeat(len(corners), 1)
        return corners, labels

    def _predict(self, embedding: ImageEmbedding, coords: torch.Tensor, labels: torch.Tensor, multimask: bool,
                 best_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        network = self.network
        with self._running():
            sparse, dense = network.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res, scores, _, _ = network.sam_mask_decoder(
                image_embeddings=embedding.features, image_pe=network.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
                repeat_image=coords.shape[0] > 1, high_res_features=list(embedding.interm))
        if best_only:  # choose before upscaling: postprocessing is per mask, so the chosen mask is the same
            best = scores.argmax(dim=1, keepdim=True)
            low_res = torch.take_along_dim(low_res, best[:, :, None, None], dim=1)
            scores = torch.take_along_dim(scores, best, dim=1)
        return self.transforms.postprocess_masks(low_res, embedding.original_size) > 0.0, scores
