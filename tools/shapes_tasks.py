"""Deterministic synthetic data for the pose, OBB, classification and tracking demos.

Like `tools.shapes_dataset` (detection/segmentation), every picture comes from a seeded generator,
so the same seed gives the same pixels and labels on every machine:
- pose: triangles (apex, bottom-right, bottom-left) and squares (top-left, top-right, bottom-right,
  bottom-left) with their corners as keypoints (`kpt_shape: [4, 3]`, a triangle's 4th point unseen);
- OBB: rotated rectangles and ellipses with their rotated boxes;
- classification: one dominant circle, square or triangle per picture (small distractors around);
- video: shapes moving across a few seconds of frames, the look of `tools.shapes_dataset` pictures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tools.shapes_dataset import CLASS_NAMES as SHAPE_NAMES

POSE_CLASSES: tuple[str, ...] = ("triangle", "square")
POSE_KEYPOINTS = 4
OBB_CLASSES: tuple[str, ...] = ("rectangle", "ellipse")
VIDEO_FOURCC = "vp09"  # VP9 in MP4: played by Chrome, Firefox and Edge; written by OpenCV's FFmpeg here


@dataclass(frozen=True)
class PoseInstance:
    class_id: int
    keypoints: np.ndarray  # (4, 3) x, y, visibility (2 seen, 0 absent) in pixels


@dataclass(frozen=True)
class ObbInstance:
    class_id: int
    corners: np.ndarray  # (4, 2) pixels, in drawing order


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(30, 90, size=3)
    return np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(110, 256, size=3))


def _free_center(rng: np.random.Generator, radius: int, size: int, taken: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """A center whose circle of `radius` stays inside the picture and clear of the taken circles."""
    for _ in range(30):
        center = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
        if all((center[0] - x) ** 2 + (center[1] - y) ** 2 > (radius + r + 2) ** 2 for x, y, r in taken):
            return center
    return None


def pose_corners(class_id: int, center: tuple[float, float], radius: float, tilt: float) -> np.ndarray:
    """Corners in keypoint order, clockwise on screen: a triangle's apex first, a square's top-left first."""
    start, count = (-np.pi / 2, 3) if POSE_CLASSES[class_id] == "triangle" else (-3 * np.pi / 4, 4)
    angles = start + tilt + np.arange(count) * 2 * np.pi / count
    return np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], axis=1)


def generate_pose_image(seed: int, size: int = 160, max_shapes: int = 3) -> tuple[np.ndarray, list[PoseInstance]]:
    """BGR picture and its triangles/squares with corner keypoints; shapes do not overlap, tilt within 25 degrees."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size, size)
    taken: list[tuple[int, int, int]] = []
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        class_id = int(rng.integers(0, len(POSE_CLASSES)))
        radius = int(rng.integers(size // 10, size // 5))
        center = _free_center(rng, radius, size, taken)
        tilt = float(rng.uniform(-np.radians(25), np.radians(25)))
        color = _color(rng)
        if center is None:
            continue
        taken.append((*center, radius))
        corners = pose_corners(class_id, center, radius, tilt)
        cv2.fillPoly(image, [np.round(corners).astype(np.int32)], color)
        keypoints = np.zeros((POSE_KEYPOINTS, 3))
        keypoints[:len(corners), :2] = corners
        keypoints[:len(corners), 2] = 2
        instances.append(PoseInstance(class_id, keypoints))
    return image, instances


def pose_label_lines(instances: list[PoseInstance], size: int) -> list[str]:
    """YOLO pose lines: class cx cy w h, then x y v per keypoint (normalized; absent points 0 0 0)."""
    lines = []
    for inst in instances:
        seen = inst.keypoints[inst.keypoints[:, 2] > 0, :2]
        (x0, y0), (x1, y1) = seen.min(axis=0), seen.max(axis=0)
        values = [(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size]
        for x, y, v in inst.keypoints:
            values += [x / size, y / size, v] if v > 0 else [0.0, 0.0, 0]
        lines.append(" ".join([str(inst.class_id)] + [f"{v:.6f}" for v in values]))
    return lines


def generate_obb_image(seed: int, size: int = 160, max_shapes: int = 3) -> tuple[np.ndarray, list[ObbInstance]]:
    """BGR picture with non-overlapping rotated rectangles and ellipses (long side 1.6-3x the short)."""
    rng = np.random.default_rng(seed)
    image = _background(rng, size, size)
    taken: list[tuple[int, int, int]] = []
    instances = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        class_id = int(rng.integers(0, len(OBB_CLASSES)))
        long_side = int(rng.integers(size // 5, size // 2.5))
        short_side = max(6, int(long_side / rng.uniform(1.6, 3.0)))
        angle = float(rng.uniform(0, 180))
        color = _color(rng)
        center = _free_center(rng, long_side // 2 + 1, size, taken)
        if center is None:
            continue
        taken.append((*center, long_side // 2 + 1))
        rect = ((float(center[0]), float(center[1])), (float(long_side), float(short_side)), angle)
        corners = cv2.boxPoints(rect)
        if OBB_CLASSES[class_id] == "rectangle":
            cv2.fillPoly(image, [np.round(corners).astype(np.int32)], color)
        else:
            cv2.ellipse(image, center, (long_side // 2, short_side // 2), angle, 0, 360, color, -1)
        instances.append(ObbInstance(class_id, corners.astype(np.float64)))
    return image, instances


def generate_classify_image(seed: int, size: int = 160) -> tuple[np.ndarray, int]:
    """BGR picture with one large circle, square or triangle (the class) and up to two small distractors."""
    from tools.shapes_dataset import _draw_shape

    rng = np.random.default_rng(seed)
    image = _background(rng, size, size)
    for _ in range(int(rng.integers(0, 3))):
        radius = int(rng.integers(size // 20, size // 12))
        center = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
        _draw_shape(image, int(rng.integers(0, len(SHAPE_NAMES))), center, radius, float(rng.uniform(0, 2 * np.pi)), _color(rng))
    class_id = int(rng.integers(0, len(SHAPE_NAMES)))
    radius = int(rng.integers(size // 5, size // 3))
    center = (int(rng.integers(radius, size - radius)), int(rng.integers(radius, size - radius)))
    _draw_shape(image, class_id, center, radius, float(rng.uniform(0, 2 * np.pi)), _color(rng))
    return image, class_id


def _split_seeds(seed: int, n_train: int, n_val: int) -> dict[str, range]:
    return {"train": range(seed, seed + n_train), "val": range(seed + n_train, seed + n_train + n_val)}


def _write_yaml(root: Path, names: tuple[str, ...], extra: str = "") -> Path:
    data_yaml = root / "data.yaml"
    listed = "\n".join(f"  {i}: {name}" for i, name in enumerate(names))
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n{extra}names:\n{listed}\n")
    return data_yaml


def write_pose_dataset(root: Path, n_train: int, n_val: int, size: int = 160, seed: int = 0) -> Path:
    """YOLO pose dataset (images/, labels/, data.yaml with kpt_shape); returns data.yaml."""
    for split, seeds in _split_seeds(seed, n_train, n_val).items():
        for image_seed in seeds:
            image, instances = generate_pose_image(image_seed, size)
            _write_sample(root, split, f"pose_{image_seed:05d}", image, pose_label_lines(instances, size))
    # No flip_idx: a mirrored triangle keeps its apex first but a mirrored square does not, so training
    # runs without left-right flips.
    return _write_yaml(root, POSE_CLASSES, f"kpt_shape: [{POSE_KEYPOINTS}, 3]\n")


def write_obb_dataset(root: Path, n_train: int, n_val: int, size: int = 160, seed: int = 0) -> Path:
    """YOLO OBB dataset (class x1 y1 ... x4 y4 normalized); returns data.yaml."""
    for split, seeds in _split_seeds(seed, n_train, n_val).items():
        for image_seed in seeds:
            image, instances = generate_obb_image(image_seed, size)
            lines = [" ".join([str(inst.class_id)] + [f"{v:.6f}" for v in (inst.corners / size).clip(0, 1).ravel()])
                     for inst in instances]
            _write_sample(root, split, f"obb_{image_seed:05d}", image, lines)
    return _write_yaml(root, OBB_CLASSES)


def write_classify_dataset(root: Path, n_train: int, n_val: int, size: int = 160, seed: int = 0) -> Path:
    """Ultralytics classification folders root/{train,val}/<class>/*.png; returns root."""
    for split, seeds in _split_seeds(seed, n_train, n_val).items():
        for name in SHAPE_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for image_seed in seeds:
            image, class_id = generate_classify_image(image_seed, size)
            cv2.imwrite(str(root / split / SHAPE_NAMES[class_id] / f"cls_{image_seed:05d}.png"), image)
    return root


def _write_sample(root: Path, split: str, name: str, image: np.ndarray, lines: list[str]) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / split / f"{name}.png"), image)
    (root / "labels" / split / f"{name}.txt").write_text("".join(line + "\n" for line in lines))


def video_frames(seed: int = 0, width: int = 320, height: int = 240, n_frames: int = 75,
                 n_shapes: int = 3) -> Iterator[np.ndarray]:
    """BGR frames of shapes (circle/square/triangle, sizes the detection demo knows) gliding in straight
    lines over a still noisy background; each shape bounces off the edges."""
    from tools.shapes_dataset import _draw_shape

    rng = np.random.default_rng(seed)
    base = rng.integers(30, 90, size=3)
    shapes = []
    for index in range(n_shapes):
        radius = int(rng.integers(28, 42))
        shapes.append({
            "class_id": index % len(SHAPE_NAMES), "radius": radius, "color": _color(rng),
            "angle": float(rng.uniform(0, 2 * np.pi)),
            "position": np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)]),
            "velocity": rng.uniform(-3, 3, size=2),
        })
    background = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(n_frames):
        frame = background.copy()  # still noise, as a camera on a tripod: small files
        for shape in shapes:
            radius, position = shape["radius"], shape["position"]
            _draw_shape(frame, shape["class_id"], (int(round(position[0])), int(round(position[1]))), radius,
                        shape["angle"], shape["color"])
            position += shape["velocity"]
            for axis, limit in ((0, width), (1, height)):
                if not radius <= position[axis] <= limit - radius:
                    shape["velocity"][axis] *= -1
                    position[axis] = np.clip(position[axis], radius, limit - radius)
        yield frame


def write_video(path: Path, seed: int = 0, fps: float = 25.0, seconds: float = 3.0,
                width: int = 320, height: int = 240) -> Path:
    """A short mp4 of moving shapes (VP9, which browsers play); raises RuntimeError when OpenCV cannot write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {VIDEO_FOURCC} video to {path}")
    try:
        for frame in video_frames(seed, width, height, int(round(fps * seconds))):
            writer.write(frame)
    finally:
        writer.release()
    return path


PICTURES = {"pose": generate_pose_image, "obb": generate_obb_image, "classify": generate_classify_image}
DEMO_SEED = 60_000  # demo pictures: held out from the demo models' training and metrics seeds


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Demo data for the pose, OBB, classification and video examples: "
                                                 "held-out PNG pictures, or the moving-shapes video (VP9 mp4).")
    parser.add_argument("kind", choices=[*PICTURES, "video"])
    parser.add_argument("--out", type=Path, required=True, help="folder for pictures, .mp4 file for the video")
    parser.add_argument("--count", type=int, default=12, help="pictures to write")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args(argv)
    if args.kind == "video":
        print(f"wrote {write_video(args.out, fps=args.fps, seconds=args.seconds)}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(DEMO_SEED, DEMO_SEED + args.count):
        cv2.imwrite(str(args.out / f"{args.kind}_{seed}.png"), PICTURES[args.kind](seed)[0])
    print(f"wrote {args.count} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
