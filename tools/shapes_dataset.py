"""Deterministic synthetic "shapes" images with instance masks, for demo models and tests.

Every image is drawn from a seeded generator, so the same seed always yields the same pixels,
masks and labels on every machine.

    python -m tools.shapes_dataset [--out demo-images] [--count 12]   # pictures for a demo project
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from formats.geometry import mask_to_polygons

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

    def bright_color(center: tuple[int, int], radius: int) -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(110, 256, size=3))

    return _add_shapes(rng, image, int(rng.integers(1, max_shapes + 1)), (size // 12, size // 5), bright_color)


def generate_varied_image(seed: int, max_shapes: int = 7) -> ShapesImage:
    """A harder, more varied image than `generate_image`, for training: any size and aspect ratio
    (96..400 pixels a side), dark, light, gradient or blotchy backgrounds, shapes from tiny to large
    in any color that stands out from the background, camera-like noise and blur.
    Drawn from its own random stream, so seed n here is unrelated to `generate_image(n)`."""
    rng = np.random.default_rng((seed, VARIED_STREAM))
    height, width = (int(v) for v in rng.integers(96, 401, size=2))
    base = _varied_background(rng, height, width)
    base_copy = base.copy()  # the background alone: shapes are drawn into base

    def contrasting_color(center: tuple[int, int], radius: int) -> tuple[int, int, int]:
        (cx, cy), background = center, base_copy
        reference = background[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1].reshape(-1, 3).mean(axis=0)
        color = rng.integers(0, 256, size=3)
        for _ in range(20):
            if np.abs(color - reference).max() >= MIN_CONTRAST:
                break
            color = rng.integers(0, 256, size=3)
        else:
            color = np.where(reference < 128, 255, 0)
        return tuple(int(c) for c in color)

    short_side = min(height, width)
    sample = _add_shapes(rng, base, int(rng.integers(1, max_shapes + 1)), (max(5, short_side // 20), short_side // 4),
                         contrasting_color)
    image = sample.image.astype(np.float32) + rng.normal(0, rng.uniform(0, 10), size=sample.image.shape)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.3, 1.0)))
    return ShapesImage(np.clip(image, 0, 255).astype(np.uint8), sample.instances)


VARIED_STREAM = 1  # second entry of the varied images' seed sequence, apart from generate_image's streams
MIN_CONTRAST = 60  # at least one channel differs this much from the mean background


def _varied_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    if kind == 0:  # flat, like generate_image's
        image = np.broadcast_to(rng.integers(30, 90, size=3), (height, width, 3)).astype(np.float32)
    elif kind == 1:  # flat, any color
        image = np.broadcast_to(rng.integers(0, 256, size=3), (height, width, 3)).astype(np.float32)
    elif kind == 2:  # linear gradient between two colors, in any direction
        start, end = rng.integers(0, 256, size=(2, 3))
        direction = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * np.cos(direction) + ys * np.sin(direction)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1.0))[..., None]
        image = start + (end - start) * t
    else:  # smooth blotches: coarse random colors upscaled
        cells = rng.integers(0, 256, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
        image = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
    image = image + rng.normal(0, rng.uniform(0, 15), size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _add_shapes(rng: np.random.Generator, image: np.ndarray, n_shapes: int, radius_range: tuple[int, int],
                pick_color: Callable[[tuple[int, int], int], tuple[int, int, int]]) -> ShapesImage:
    """Draw n_shapes random shapes in place; later shapes occlude earlier ones, tiny leftovers are dropped."""
    height, width = image.shape[:2]
    instances: list[ShapeInstance] = []
    for _ in range(n_shapes):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        radius = int(rng.integers(*radius_range))
        center = (int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius)))
        color = pick_color(center, radius)
        angle = float(rng.uniform(0, 2 * np.pi))
        layer = np.zeros((height, width), np.uint8)
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


def write_yolo_split(root: Path, split: str, seeds: Iterable[int], size: int = 160, varied: bool = False) -> None:
    """Write images/<split>/*.png and labels/<split>/*.txt: `generate_image(seed, size)` for each seed,
    or `generate_varied_image(seed)` when varied (files named varied_*)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for image_seed in seeds:
        sample = generate_varied_image(image_seed) if varied else generate_image(image_seed, size)
        name = f"{'varied' if varied else 'shapes'}_{image_seed:05d}"
        cv2.imwrite(str(root / "images" / split / f"{name}.png"), sample.image)
        (root / "labels" / split / f"{name}.txt").write_text("\n".join(yolo_segment_lines(sample)) + "\n")


def write_data_yaml(root: Path, train: str = "images/train", val: str = "images/val") -> Path:
    data_yaml = root / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: {train}\nval: {val}\nnames:\n{names}\n")
    return data_yaml


def write_yolo_dataset(root: Path, n_train: int, n_val: int, size: int = 160, seed: int = 0,
                       n_varied_train: int = 0, n_varied_val: int = 0) -> Path:
    """Write images/{train,val}, labels/{train,val} and data.yaml; returns the data.yaml path.

    Seeds seed.. go to train then val, for `generate_image` and (as many as asked) `generate_varied_image`."""
    write_yolo_split(root, "train", range(seed, seed + n_train), size)
    write_yolo_split(root, "val", range(seed + n_train, seed + n_train + n_val), size)
    write_yolo_split(root, "train", range(seed, seed + n_varied_train), varied=True)
    write_yolo_split(root, "val", range(seed + n_varied_train, seed + n_varied_train + n_varied_val), varied=True)
    return write_data_yaml(root)


def write_pictures(out_dir: Path, seeds: Iterable[int]) -> list[Path]:
    """`generate_image(seed)` for each seed as out_dir/shapes_<seed>.png, for a demo project to import."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = out_dir / f"shapes_{seed}.png"
        cv2.imwrite(str(path), generate_image(seed).image)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write synthetic shapes pictures (circle, square, triangle) to "
                                                 "import into a demo Label Studio project.")
    parser.add_argument("--out", type=Path, default=Path("demo-images"), help="directory (default: demo-images)")
    parser.add_argument("--count", type=int, default=12, help="number of pictures (default 12)")
    parser.add_argument("--first_seed", type=int, default=5000,
                        help="seed of the first picture (default 5000: held out from the demo models' training)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    paths = write_pictures(args.out, range(args.first_seed, args.first_seed + args.count))
    print(f"wrote {len(paths)} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
