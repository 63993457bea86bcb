"""SAM 3 behind the backend's model interfaces: every instance of a phrase or of example boxes, and clicks.

`Sam3Model` runs Meta's `Sam3Processor` math on an image embedding it hands out instead of keeping
(as `SamModel` and `Sam2Model` do), so one loaded model serves many images from many threads and the
SAM embedding caches (backend/models/sam_embeddings.py, through SamSegmenter) work unchanged:
- `embed`: Sam3Processor.set_image; the backbone's feature maps and position encodings travel in an
  ImageEmbedding (`features`: the detector's last map; `interm`: the others, then the interactive
  predictor's), so a disk-cached embedding serves phrases and clicks alike.
- `find`: set_text_prompt, `find_examples`: add_geometric_prompt (boxes in pixels, positive or
  negative); both keep what scores above a threshold passed per call (the processor keeps one on
  itself) and turn each mask into its crop right away, so N instances never need N full-size masks.
- `decode` / `decode_boxes`: SAM 3's instance interactivity (Sam3Image.predict_inst), one request at a
  time: Meta's predictor keeps the image on itself while it decodes.
Phrase encodings are kept in a small LRU: a project asks for the same few phrases on every image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.models.cache import ModelCache
from backend.models.sam3_network import Sam3Architecture, load_network, running
from backend.models.sam_embeddings import ImageEmbedding
from backend.models.versions import file_fingerprint
from formats.mask_crop import MaskCrop

MODEL_NAME = "sam3"
PHRASES_KEPT = 256
MASK_CHUNK = 8  # instance masks upscaled to the image size together; bounds the float memory
EXAMPLE_PHRASE = "visual"  # what Sam3Processor.add_geometric_prompt encodes when no phrase is set


@dataclass(frozen=True)
class Instances:
    """What SAM 3 found, in its query order: a mask crop, an xyxy pixel box and a score per instance."""

    crops: list[MaskCrop]
    boxes: np.ndarray  # (N, 4) float, pixels
    scores: np.ndarray  # (N,) float


class Sam3Model:
    """A loaded SAM 3 image model and Sam3Processor's math, with the image embedding passed in and out."""

    def __init__(self, network: torch.nn.Module, arch: Sam3Architecture, device: str, name: str) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        self.network = network
        self.device = torch.device(device)
        self.name = name
        self.processor = Sam3Processor(network, resolution=arch.resolution, device=str(self.device))
        self._phrases: OrderedDict[str, dict] = OrderedDict()
        self._phrases_lock = threading.Lock()
        self._interactive_lock = threading.Lock()
        self._torch_threads = torch.get_num_threads()  # see SamModel: Ultralytics lowers it

    def _running(self):  # noqa: ANN202
        torch.set_num_threads(self._torch_threads)
        return running(self.device)

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> ImageEmbedding:
        """Run the image encoder on HxWx3 uint8 RGB pixels (Sam3Processor.set_image)."""
        with self._running():
            writable = pixels if pixels.flags.writeable else pixels.copy()  # torch warns on read-only arrays
            image = torch.from_numpy(np.ascontiguousarray(writable)).permute(2, 0, 1)
            backbone = self.processor.set_image(image)["backbone_out"]
        fpn, interactive = backbone["backbone_fpn"], backbone["sam2_backbone_out"]
        interm = (*fpn[:-1], *backbone["vision_pos_enc"], *interactive["backbone_fpn"], *interactive["vision_pos_enc"])
        side = self.processor.resolution
        return ImageEmbedding(fpn[-1], tuple(interm), (side, side), tuple(pixels.shape[:2]))

    @staticmethod
    def _backbone(embedding: ImageEmbedding) -> dict:
        """The `backbone_out` Sam3Processor.set_image leaves in its state, fresh lists each time."""
        levels = (len(embedding.interm) + 1) // 4
        interm = embedding.interm
        fpn = [*interm[:levels - 1], embedding.features]
        interactive = list(interm[2 * levels - 1:3 * levels - 1])
        return {"vision_features": embedding.features, "vision_pos_enc": list(interm[levels - 1:2 * levels - 1]),
                "backbone_fpn": fpn,
                "sam2_backbone_out": {"vision_features": interactive[-1], "backbone_fpn": interactive,
                                      "vision_pos_enc": list(interm[3 * levels - 1:])}}

    def _phrase(self, phrase: str) -> dict:
        with self._phrases_lock:
            found = self._phrases.get(phrase)
            if found is not None:
                self._phrases.move_to_end(phrase)
                return found
        found = self.network.backbone.forward_text([phrase], device=str(self.device))
        with self._phrases_lock:
            self._phrases[phrase] = found
            while len(self._phrases) > PHRASES_KEPT:
                self._phrases.popitem(last=False)
        return found

    @torch.inference_mode()
    def find(self, embedding: ImageEmbedding, phrase: str, threshold: float) -> Instances:
        """Every instance of a noun phrase scoring above `threshold` (Sam3Processor.set_text_prompt)."""
        with self._running():
            backbone = {**self._backbone(embedding), **self._phrase(phrase)}
            return self._ground(embedding, backbone, self.network._get_dummy_prompt(), threshold)

    @torch.inference_mode()
    def find_examples(self, embedding: ImageEmbedding, boxes: np.ndarray, positive: list[bool], threshold: float,
                      phrase: str | None = None) -> Instances:
        """Every instance like the positive xyxy pixel boxes and unlike the negative ones
        (Sam3Processor.add_geometric_prompt, box by box), optionally together with a phrase."""
        height, width = embedding.original_size
        with self._running():
            backbone = {**self._backbone(embedding), **self._phrase(phrase or EXAMPLE_PHRASE)}
            prompt = self.network._get_dummy_prompt()
            for (x0, y0, x1, y1), label in zip(np.asarray(boxes, dtype=np.float64).tolist(), positive):
                box = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
                prompt.append_boxes(torch.tensor(box, device=self.device, dtype=torch.float32).view(1, 1, 4),
                                    torch.tensor([bool(label)], device=self.device, dtype=torch.bool).view(1, 1))
            return self._ground(embedding, backbone, prompt, threshold)

    def _ground(self, embedding: ImageEmbedding, backbone: dict, prompt: object, threshold: float) -> Instances:
        """Sam3Processor._forward_grounding with the threshold given, masks cropped chunk by chunk."""
        from sam3.model import box_ops
        from sam3.model.data_misc import interpolate

        outputs = self.network.forward_grounding(backbone_out=backbone, find_input=self.processor.find_stage,
                                                 geometric_prompt=prompt, find_target=None)
        presence = outputs["presence_logit_dec"].sigmoid().unsqueeze(1)
        probabilities = (outputs["pred_logits"].sigmoid() * presence).squeeze(-1)
        keep = probabilities > threshold
        scores = probabilities[keep]
        height, width = embedding.original_size
        scale = torch.tensor([width, height, width, height]).to(self.device)
        boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"][keep]) * scale[None, :]
        low_res = outputs["pred_masks"][keep]
        crops = []
        for start in range(0, len(low_res), MASK_CHUNK):
            masks = interpolate(low_res[start:start + MASK_CHUNK].unsqueeze(1), (height, width), mode="bilinear",
                                align_corners=False).sigmoid() > 0.5
            crops.extend(MaskCrop.of(mask) for mask in masks[:, 0].cpu().numpy())
        return Instances(crops, boxes.float().cpu().numpy(), scores.float().cpu().numpy())

    @torch.no_grad()
    def decode(self, embedding: ImageEmbedding, points: np.ndarray | None, point_labels: np.ndarray | None,
               box: np.ndarray | None, multimask: bool, best_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Masks (C, H, W) bool and their predicted IoU (C,) for one click/box prompt (Sam3Image.predict_inst)."""
        height, width = embedding.original_size
        state = {"backbone_out": self._backbone(embedding), "original_height": height, "original_width": width}
        with self._interactive_lock, self._running():
            masks, scores, _ = self.network.predict_inst(
                state, point_coords=points, point_labels=point_labels,
                box=None if box is None else np.asarray(box, dtype=np.float32).reshape(4),
                multimask_output=multimask)
        masks, scores = np.asarray(masks) > 0, np.asarray(scores, dtype=np.float32)
        if best_only:
            best = int(np.argmax(scores))
            return masks[best:best + 1], scores[best:best + 1]
        return masks, scores

    def decode_boxes(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        """One mask per xyxy pixel box: (N, H, W) bool."""
        height, width = embedding.original_size
        masks = np.zeros((len(boxes), height, width), dtype=bool)
        for index, box in enumerate(np.asarray(boxes)):
            masks[index] = self.decode(embedding, None, None, box, multimask=False)[0][0]
        return masks


def load_sam3(checkpoint: Path, device: str) -> Sam3Model:
    network, arch = load_network(checkpoint, device)
    return Sam3Model(network, arch, device, f"{MODEL_NAME}:{'reduced' if arch != Sam3Architecture() else 'full'}:"
                                            f"{checkpoint.name}")


def cached_sam3(cache: ModelCache, checkpoint: Path, device: str) -> Sam3Model:
    """One SAM 3 per checkpoint file and device in the process (a replaced file is loaded again)."""
    key = ("sam3", str(checkpoint), file_fingerprint(checkpoint), device)
    cache.discard(lambda other: other[:2] == key[:2] and other != key)
    return cache.get(key, lambda: load_sam3(checkpoint, device))
