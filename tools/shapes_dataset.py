"""Deterministic synthetic "shapes" images with instance masks, for demo models and tests.

Every image is drawn from a seeded generator, so the same seed always yields the same pixels,
masks and labels on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from backend.geometry import mask_to_polygons

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapeInstance:
    class_id: int
    mask: np.ndarray  # bool, image-sized; only the visible part after later shapes overlap it


@dataclass(frozen=True)
class ShapesImage:
    image: np.ndarray  # HxWx3 uint8, BGR
    instances: list[ShapeInstance]


def _draw_shape(canvas: np.ndarray, class_id: int, center: tuple[int, int], size: int,
                angle: float, color: tuple[int, int, int]) -> None:
    cx, cy = center
    if class_id == 0:
        cv2.circle(canvas, (cx, cy), size, color, -1)
        return
    n_corners = 4 if class_id == 1 else 3
    angles = angle + np.arange(n_corners) * 2 * np.pi / n_corners
    corners = np.stack([cx + size * np.cos(angles), cy + size * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], color)


def generate_image(seed: int, size: int = 160, max_shapes: int = 4) -> ShapesImage:
    """One image with 1..max_shapes shapes on a noisy background; later shapes occlude earlier ones."""
    rng = np.random.default_rng(seed)
    background = rng.integers(30, 90, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    instances: list[ShapeInstance] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        radius = int(rng.integers(size // 12, size // 5))
        center = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
        color = tuple(int(c) for c in rng.integers(110, 256, size=3))
        angle = float(rng.uniform(0, 2 * np.pi))
        layer = np.zeros((size, size), np.uint8)
        _draw_shape(layer, class_id, center, radius, angle, (255,))
        mask = layer > 0
        image[mask] = color
        for earlier in instances:
            earlier.mask[mask] = False
        instances.append(ShapeInstance(class_id, mask))
    visible = [inst for inst in instances if inst.mask.sum() >= 20]
    return ShapesImage(image, visible)


def yolo_segment_lines(sample: ShapesImage) -> list[str]:
    """YOLO segmentation label lines (class x1 y1 x2 y2 ..., normalized); one line per polygon part."""
    height, width = sample.image.shape[:2]
    lines = []
    for inst in sample.instances:
        for polygon in mask_to_polygons(inst.mask, tolerance=0.5):
            coords = (polygon / np.array([width, height])).clip(0, 1).ravel()
            lines.append(" ".join([str(inst.class_id)] + [f"{c:.6f}" for c in coords]))
    return lines


def write_yolo_dataset(root: Path, n_train: int, n_val: int, size: int = 160, seed: int = 0) -> Path:
    """Write images/{train,val}, labels/{train,val} and data.yaml; returns the data.yaml path."""
    splits = {"train": range(seed, seed + n_train), "val": range(seed + n_train, seed + n_train + n_val)}
    for split, seeds in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image_seed in seeds:
            sample = generate_image(image_seed, size)
            name = f"shapes_{image_seed:05d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), sample.image)
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(yolo_segment_lines(sample)) + "\n")
    data_yaml = root / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml
