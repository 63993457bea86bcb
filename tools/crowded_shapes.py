"""Crowded full-HD pictures of the demo models' shapes, for benchmarks and exactness tests at 1080p:
one shape per cell of a grid (50 at 1920x1080), as large relative to the picture, once the model
scales it to its input size, as the demo models' training shapes."""

from __future__ import annotations

import cv2
import numpy as np


def crowded_image(seed: int, width: int = 1920, height: int = 1080, columns: int = 10, rows: int = 5) -> np.ndarray:
    """HxWx3 uint8 BGR: a noisy dark background with columns x rows bright circles, squares and triangles."""
    rng = np.random.default_rng(seed)
    background = rng.integers(30, 90, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    cell_w, cell_h = width // columns, height // rows
    for row in range(rows):
        for column in range(columns):
            radius = int(rng.integers(min(cell_w, cell_h) // 5, min(cell_w, cell_h) * 2 // 5))
            cx = column * cell_w + int(rng.integers(radius, cell_w - radius))
            cy = row * cell_h + int(rng.integers(radius, cell_h - radius))
            color = tuple(int(c) for c in rng.integers(110, 256, size=3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                cv2.circle(image, (cx, cy), radius, color, -1)
                continue
            corners = 4 if kind == 1 else 3
            angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
            points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
            cv2.fillPoly(image, [np.round(points).astype(np.int32)], color)
    return image
