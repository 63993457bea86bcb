"""Pure converters between region representations, shared by the backend and the tools (run-length
encoded masks, COCO's and Label Studio's, are formats/rle.py).

Conventions:
- Pixel coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1), so a box
  around it is (j, i, j+1, i+1). COCO and Label Studio both use this convention.
- Label Studio coordinates are percent (0..100) of the displayed image's width and height.
- Masks are 2-D boolean arrays of the image's size (height, width); a window of such a mask is a
  smaller array placed at (x0, y0), the image being background outside it (formats/mask_crop.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import cv2
import numpy as np
from pycocotools import mask as coco_mask

BoxXYXY = tuple[float, float, float, float]

_RELATIVE_TOLERANCE = 1e-3


class LSRect(TypedDict):
    x: float
    y: float
    width: float
    height: float


# ---------------------------------------------------------------- coordinates


def pixels_to_percent(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nx2 pixel (x, y) -> Nx2 Label Studio percent."""
    return np.asarray(points, dtype=np.float64) * (100.0 / np.array([width, height]))


def percent_to_pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nx2 Label Studio percent (x, y) -> Nx2 pixels."""
    return np.asarray(points, dtype=np.float64) * (np.array([width, height]) / 100.0)


def box_to_ls_rect(box: BoxXYXY, width: int, height: int) -> LSRect:
    """Pixel (x1, y1, x2, y2) -> Label Studio rectangle value in percent, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return LSRect(x=x1 * 100.0 / width, y=y1 * 100.0 / height,
                  width=(x2 - x1) * 100.0 / width, height=(y2 - y1) * 100.0 / height)


def ls_rect_corners(value: dict, width: int, height: int) -> np.ndarray:
    """Label Studio rectangle value -> 4x2 pixel corners (clockwise from the anchor).

    Label Studio rotates a rectangle by `rotation` degrees clockwise around its top-left corner
    (x, y), which is the anchor both in the editor and in exports.
    """
    x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
    w, h = value["width"] * width / 100.0, value["height"] * height / 100.0
    theta = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(theta), math.sin(theta)
    local = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    rotated = local @ np.array([[cos, sin], [-sin, cos]])
    return rotated + np.array([x, y])


def ls_rect_to_box(value: dict, width: int, height: int) -> BoxXYXY:
    """Label Studio rectangle value -> pixel box enclosing it (rotation included)."""
    corners = ls_rect_corners(value, width, height)
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def rotated_box_to_ls_rect(center: tuple[float, float], size: tuple[float, float], angle: float,
                           width: int, height: int) -> dict:
    """Pixel rotated box (center, (w, h), angle in radians, clockwise on screen: the box's w side
    points along (cos, sin), Ultralytics' `xywhr`) -> Label Studio rectangle value: the top-left
    corner before rotation, sizes in percent, `rotation` in degrees in [0, 360). Not clipped: a
    rotated box may reach past the image, as Label Studio allows. `ls_rect_corners` inverts it."""
    (cx, cy), (w, h) = center, size
    cos, sin = math.cos(angle), math.sin(angle)
    anchor_x = cx - w / 2 * cos + h / 2 * sin
    anchor_y = cy - w / 2 * sin - h / 2 * cos
    return {"x": anchor_x * 100.0 / width, "y": anchor_y * 100.0 / height, "width": w * 100.0 / width,
            "height": h * 100.0 / height, "rotation": math.degrees(angle) % 360.0}


def ls_rect_to_yolo_obb(value: dict, width: int, height: int) -> np.ndarray:
    """Label Studio rectangle value (rotated or not) -> YOLO OBB corners `x1 y1 ... x4 y4` normalized to
    the image (8 floats, not clipped), in Label Studio's order: the anchor, then clockwise on screen."""
    return (ls_rect_corners(value, width, height) / np.array([width, height], dtype=np.float64)).ravel()


def yolo_obb_to_ls_rect(corners: Sequence[float], width: int, height: int) -> dict:
    """YOLO OBB corners (8 normalized floats of a rectangle, consecutive corners in either turning
    direction) -> Label Studio rectangle value; `ls_rect_to_yolo_obb` of a value gives it back."""
    points = np.asarray(corners, dtype=np.float64).reshape(4, 2) * np.array([width, height], dtype=np.float64)
    side_w, side_h = points[1] - points[0], points[3] - points[0]
    if side_w[0] * side_h[1] - side_w[1] * side_h[0] < 0:  # counter-clockwise on screen: walk the other way
        points = points[[0, 3, 2, 1]]
        side_w, side_h = side_h, side_w
    w, h = float(np.hypot(*side_w)), float(np.hypot(*side_h))
    rotation = math.degrees(math.atan2(side_w[1], side_w[0])) % 360.0
    return {"x": points[0, 0] * 100.0 / width, "y": points[0, 1] * 100.0 / height, "width": w * 100.0 / width,
            "height": h * 100.0 / height, "rotation": rotation}


# ---------------------------------------------------------------- masks, boxes, polygons


def mask_to_box(mask: np.ndarray) -> BoxXYXY | None:
    """Tight pixel box (x1, y1, x2, y2) around the mask's pixels; None for an empty mask."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))
    if w == 0 or h == 0:
        return None
    return float(x), float(y), float(x + w), float(y + h)


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5, min_area: float = 1.0) -> list[np.ndarray]:
    """Outline each separate (8-connected) part of the mask as one Nx2 pixel polygon (x, y).

    The outline runs along pixel edges, not pixel centers, so the polygon covers the mask instead
    of shrinking it by half a pixel on every side: a part is traced on the grid of pixel corners,
    where a corner belongs to the part when any of its four pixels does. `tolerance` is the
    Douglas-Peucker distance in pixels (0 keeps every corner); parts whose polygon is smaller than
    `min_area` are dropped. Holes are not represented (Label Studio polygons have none).
    Long outlines are simplified at least to 0.1% of their length, so a large object stays a
    polygon of tens of points, not of every pixel step, while small ones keep their precision.
    """
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    x0, y0, w, h = cv2.boundingRect(mask_u8)
    if w == 0 or h == 0:
        return []
    n_parts, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8[y0:y0 + h, x0:x0 + w], connectivity=8)
    polygons = []
    for part in range(1, n_parts):
        px, py, pw, ph = (int(v) for v in stats[part, :4])
        padded = np.pad(labels[py:py + ph, px:px + pw] == part, 1)
        corners = padded[:-1, :-1] | padded[1:, :-1] | padded[:-1, 1:] | padded[1:, 1:]
        contours, _ = cv2.findContours(corners.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            epsilon = max(tolerance, _RELATIVE_TOLERANCE * cv2.arcLength(contour, closed=True)) if tolerance > 0 else 0
            outline = cv2.approxPolyDP(contour, epsilon, closed=True) if epsilon > 0 else contour
            points = outline[:, 0, :].astype(np.float64) + (x0 + px, y0 + py)
            if len(points) >= 3 and polygon_area(points) >= min_area:
                polygons.append(points)
    return polygons


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of an Nx2 polygon."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygons_to_mask(polygons: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """Rasterize pixel polygons the way COCO tools do (pycocotools), as one boolean mask."""
    flat = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(flat, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------- CVAT shapes


def ls_rect_to_cvat_rectangle(value: dict, width: int, height: int) -> tuple[list[float], float]:
    """Label Studio rectangle value -> CVAT rectangle `points` [x1, y1, x2, y2] in pixels and `rotation`.

    Label Studio turns a rectangle around its top-left corner, CVAT around its centre (both in
    degrees, clockwise), so the points are the unrotated box around the rotated box's centre."""
    center_x, center_y = ls_rect_corners(value, width, height).mean(axis=0)
    half_w, half_h = value["width"] * width / 200.0, value["height"] * height / 200.0
    points = [float(center_x - half_w), float(center_y - half_h), float(center_x + half_w), float(center_y + half_h)]
    return points, float(value.get("rotation") or 0.0) % 360.0


def mask_to_cvat_rle(mask: np.ndarray) -> list[int]:
    """Boolean mask -> CVAT mask shape `points` (not COCO's RLE): the lengths of alternating runs,
    background first (0 when the first pixel is set), over the mask's tight box read row by row,
    then the box as left, top, right, bottom, the last two inclusive. The same numbers as
    `cvat_sdk.masks.encode_mask(mask)`; an empty mask is one background pixel at (0, 0)."""
    box = mask_to_box(mask)
    if box is None:
        return [1, 0, 0, 0, 0]
    x1, y1, x2, y2 = (int(v) for v in box)
    flat = np.ascontiguousarray(mask[y1:y2, x1:x2], dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(np.concatenate(([0], changes, [flat.size])))
    runs = lengths.tolist()
    return ([0] + runs if flat[0] else runs) + [x1, y1, x2 - 1, y2 - 1]
