"""The committed tiny demo SAM segments a shape from one click inside it (issue 3: mean IoU >= 0.8)."""

from __future__ import annotations

import numpy as np
import torch

from backend.interactive.sam import segment
from backend.models.sam import SamSegmenter, load_sam
from backend.models.sam_embeddings import MemoryEmbeddings
from backend.interactive.prompts import SamPrompt
from tests.conftest import MODELS_DIR
from tools.tiny_sam import HELD_OUT_SEEDS, TINY_ARCHITECTURE, batched_predict_masks, held_out_ious


def test_one_click_inside_a_shape_gives_mean_iou_of_at_least_0_8() -> None:
    segmenter = SamSegmenter(load_sam("sam", "demo", MODELS_DIR / "demo-tiny-sam.pt", "cpu"), MemoryEmbeddings(1), None)

    def click(pixels: np.ndarray, xy: np.ndarray) -> np.ndarray:
        return segment(segmenter, pixels, SamPrompt("shape", xy[None, :], np.array([1]), None))[0]

    ious = held_out_ious(click)
    assert len(HELD_OUT_SEEDS) == 50 and len(ious) >= 50
    assert float(np.mean(ious)) >= 0.8, f"mean IoU {np.mean(ious):.3f} over {len(ious)} shapes"


def test_training_decodes_prompts_of_many_images_like_metas_mask_decoder() -> None:
    torch.manual_seed(0)
    sam = TINY_ARCHITECTURE.build()
    size = TINY_ARCHITECTURE.img_size // TINY_ARCHITECTURE.patch_size
    embeddings = torch.randn(2, TINY_ARCHITECTURE.prompt_embed_dim, size, size)
    points = (torch.rand(3, 1, 2) * TINY_ARCHITECTURE.img_size, torch.ones(3, 1, dtype=torch.int))
    owners = torch.tensor([0, 1, 1])  # prompt -> image
    sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
    with torch.no_grad():
        image_pe = sam.prompt_encoder.get_dense_pe()
        batched = batched_predict_masks(sam.mask_decoder, embeddings[owners], image_pe, sparse, dense)
        for prompt, image in enumerate(owners.tolist()):
            masks, scores = sam.mask_decoder.predict_masks(embeddings[image:image + 1], image_pe,
                                                           sparse[prompt:prompt + 1], dense[prompt:prompt + 1])
            torch.testing.assert_close(batched[0][prompt:prompt + 1], masks)
            torch.testing.assert_close(batched[1][prompt:prompt + 1], scores)
