"""A tiny Segment Anything trained on CPU on the synthetic shapes, for the offline demo and the tests.

    python -m tools.make_demo_models --only sam        # writes models/demo-tiny-sam.pt

It is segment-anything's own `Sam` (ViT image encoder, prompt encoder, two-way mask decoder) with
small dimensions (1.5 M parameters, 6 MB), trained from scratch much as SAM was: a click predicts
three masks and the best one carries the loss, boxes and click pairs (object + background) predict
one, and the IoU head learns the quality of every mask. The checkpoint stores the architecture, so
`SAM_CONFIG=demo` rebuilds it without any code knowing its size.

Training is 2400 steps of 8 fresh images, single-threaded: about 1200 CPU seconds (20 minutes on
one core of the 2-core CI machine). One click at the interior-most pixel of each shape of 50
held-out images then gives a mean IoU of 0.815 (tests/test_sam_tiny_quality.py checks >= 0.8).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from formats.geometry import mask_iou
from backend.models.sam import SamArchitecture
from tools.shapes_dataset import generate_image

CHECKPOINT_NAME = "demo-tiny-sam.pt"
IMAGE_SIZE = 160  # shapes images; the encoder takes them at their own size
TINY_ARCHITECTURE = SamArchitecture(
    img_size=IMAGE_SIZE, patch_size=16, encoder_embed_dim=128, encoder_depth=6, encoder_num_heads=4,
    encoder_global_attn_indexes=(), encoder_window_size=0, encoder_use_rel_pos=False,
    prompt_embed_dim=64, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=256, decoder_num_heads=4,
    iou_head_hidden_dim=64,
)
# A click returns the mask with the best predicted IoU, so the IoU head's ranking decides the answer;
# and shapes have no part/whole ambiguity, so the masks a click does not pick are kept usable too.
IOU_LOSS_WEIGHT = 3.0
OTHER_MASKS_WEIGHT = 0.1
HELD_OUT_SEEDS = range(5_000_000, 5_000_050)  # never drawn for training (training seeds start at 0)


@dataclass(frozen=True)
class TrainingPlan:
    steps: int = 2400
    images_per_step: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0
    # One thread: the CPU is usually shared (CI, other jobs), and PyTorch's OpenMP threads spin while
    # waiting for each other, so two threads on a busy 2-core machine run several times slower than one.
    threads: int = 1


def interior_click(mask: np.ndarray) -> np.ndarray:
    """The pixel farthest from the mask's border, as (x, y) at its center: where an annotator clicks."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([x + 0.5, y + 0.5])


def held_out_ious(segment: Callable[[np.ndarray, np.ndarray], np.ndarray], seeds: range = HELD_OUT_SEEDS) -> list[float]:
    """IoU of `segment(rgb_image, click_xy) -> mask` for one interior click on every shape of the held-out images."""
    ious = []
    for seed in seeds:
        sample = generate_image(seed, IMAGE_SIZE)
        rgb = np.ascontiguousarray(sample.image[:, :, ::-1])
        for instance in sample.instances:
            ious.append(mask_iou(segment(rgb, interior_click(instance.mask)), instance.mask))
    return ious


# ---------------------------------------------------------------- training


def _prompts(masks: list[np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per instance: one random inside click, a jittered box, and a click pair (one inside, one outside)."""
    size = masks[0].shape[0]
    clicks, boxes, pairs = [], [], []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        pick = rng.integers(len(xs))
        clicks.append([xs[pick] + rng.random(), ys[pick] + rng.random()])
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        jitter = rng.normal(0, 0.05, 4) * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
        boxes.append(np.clip(np.array([x1, y1, x2, y2]) + jitter, 0, size))
        out_ys, out_xs = np.nonzero(~mask)
        out = rng.integers(len(out_xs))
        second = rng.integers(len(xs))
        pairs.append([[xs[second] + rng.random(), ys[second] + rng.random()],
                      [out_xs[out] + rng.random(), out_ys[out] + rng.random()]])
    return {"clicks": np.array(clicks)[:, None, :], "boxes": np.array(boxes), "pairs": np.array(pairs)}


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + dice, logits (N, C, H, W) against target (N, 1, H, W): (N, C)."""
    target = target.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    probs = logits.sigmoid()
    dice = 1 - (2 * (probs * target).sum(dim=(2, 3)) + 1) / (probs.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return bce + dice


def _iou_targets(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    predicted = logits.detach() > 0
    truth = target.expand_as(predicted) > 0.5
    inter = (predicted & truth).sum(dim=(2, 3)).float()
    union = (predicted | truth).sum(dim=(2, 3)).float()
    return inter / union.clamp(min=1)


def batched_predict_masks(decoder: torch.nn.Module, embeddings: torch.Tensor, image_pe: torch.Tensor,
                   sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskDecoder.predict_masks for prompts of several images at once: `embeddings` holds each
    prompt's image embedding (Meta's version takes one image and repeats it for every prompt)."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = embeddings + dense
    pos_src = image_pe.expand(src.size(0), -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _decode(sam: torch.nn.Module, embeddings: torch.Tensor, points: tuple | None, boxes: torch.Tensor | None,
            multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size mask logits and IoU predictions, (P, C, H, W) and (P, C), one prompt per row."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    image_pe = sam.prompt_encoder.get_dense_pe()
    low_res, scores = batched_predict_masks(sam.mask_decoder, embeddings, image_pe, sparse, dense)
    outputs = slice(1, None) if multimask else slice(0, 1)  # as MaskDecoder.forward selects them
    logits = sam.postprocess_masks(low_res[:, outputs], (IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE))
    return logits, scores[:, outputs]


def _step_loss(sam: torch.nn.Module, samples: list, rng: np.random.Generator) -> torch.Tensor:
    images = torch.stack([torch.as_tensor(np.ascontiguousarray(s.image[:, :, ::-1])).permute(2, 0, 1).float()
                          for s in samples])
    embeddings = sam.image_encoder(sam.preprocess(images))
    owners = torch.as_tensor([i for i, s in enumerate(samples) for _ in s.instances])
    masks = [inst.mask for s in samples for inst in s.instances]
    target = torch.as_tensor(np.stack(masks)[:, None]).float()
    prompts = _prompts(masks, rng)
    count = len(masks)
    prompt_embeddings = embeddings[owners]
    loss = torch.zeros(())
    for points, boxes, multimask in (
        ((torch.as_tensor(prompts["clicks"]).float(), torch.ones(count, 1, dtype=torch.int)), None, True),
        (None, torch.as_tensor(prompts["boxes"]).float(), False),
        ((torch.as_tensor(prompts["pairs"]).float(), torch.tensor([[1, 0]] * count, dtype=torch.int)), None, False),
    ):
        logits, scores = _decode(sam, prompt_embeddings, points, boxes, multimask)
        per_mask = _mask_losses(logits, target)
        # The best of the three masks is penalized most, so each output can specialize (as in SAM).
        loss = loss + per_mask.min(dim=1).values.mean() + OTHER_MASKS_WEIGHT * per_mask.mean()
        loss = loss + IOU_LOSS_WEIGHT * F.mse_loss(scores, _iou_targets(logits, target))
    return loss


def _training_samples(plan: TrainingPlan) -> Iterator[list]:
    seed = 0
    while True:
        batch = []
        while len(batch) < plan.images_per_step:
            sample = generate_image(seed, IMAGE_SIZE)
            seed += 1
            if sample.instances:
                batch.append(sample)
        yield batch


def train(plan: TrainingPlan = TrainingPlan(), log: Callable[[str], None] = print) -> torch.nn.Module:
    torch.set_num_threads(plan.threads)
    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    sam = TINY_ARCHITECTURE.build().train()
    optimizer = torch.optim.AdamW(sam.parameters(), lr=plan.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / plan.warmup_steps)
                                                 * 0.5 * (1 + math.cos(math.pi * step / plan.steps)))
    started = time.perf_counter()
    batches = _training_samples(plan)
    for step in range(plan.steps):
        loss = _step_loss(sam, next(batches), rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == plan.steps - 1:
            log(f"step {step}/{plan.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    return sam.eval()


def train_tiny_sam(out_dir: Path, plan: TrainingPlan = TrainingPlan()) -> Path:
    """Train the tiny SAM and write `out_dir/demo-tiny-sam.pt` (architecture + fp32 weights)."""
    sam = train(plan)
    target = out_dir / CHECKPOINT_NAME
    state_dict = {name: tensor.detach().clone() for name, tensor in sam.state_dict().items()}
    torch.save({"sam_architecture": TINY_ARCHITECTURE.as_dict(), "state_dict": state_dict}, target)
    return target
