"""Label Studio result regions as pixel geometry: one `result` entry of an export (percent of the image,
or a brush RLE at the image's size) -> a brush mask, polygon or rectangle in pixels, or why it was not
converted. formats/ls_export.py's conversion loop turns each chosen annotation's results into these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from formats.geometry import ls_rect_corners, percent_to_pixels, polygon_area
from formats.rle import ls_rle_alpha

SUPPORTED_REGION_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")
KEYPOINT_TYPES = ("keypointlabels", "keypoint")
# Image regions this converter cannot represent; anything else (choices, textarea, relations...)
# is not a region and is counted as ignored.
UNSUPPORTED_REGION_TYPES = ("ellipselabels", "ellipse", "magicwand", "bitmasklabels", "bitmask", "vectorlabels")
# Tool tags without their own label list (<Rectangle>, <Polygon>, <Brush> with a <Labels> tag)
# export as type "labels" (or the tool name) with the geometry keys in `value`.
GENERIC_REGION_TYPES = ("labels", "rectangle", "polygon", "brush")

SKIP_NO_LABEL = "no label"
SKIP_BAD_RLE = "bad RLE"
SKIP_MISSING_SIZE = "missing size"
SKIP_SIZE_MISMATCH = "brush size differs from the image size"
SKIP_EMPTY = "empty"
SKIP_BAD_VALUE = "malformed value"
SKIP_KEYPOINTS = "keypoints (not converted)"


@dataclass(frozen=True)
class BrushRegion:
    label: str
    mask: np.ndarray  # bool HxW
    from_name: str = ""  # the control tag that drew it


@dataclass(frozen=True)
class PolygonRegion:
    label: str
    points: np.ndarray  # Nx2 pixel (x, y)
    from_name: str = ""  # the control tag that drew it


@dataclass(frozen=True)
class RectangleRegion:
    label: str
    corners: np.ndarray  # 4x2 pixel (x, y), clockwise from Label Studio's anchor
    rotated: bool
    from_name: str = ""  # the control tag that drew it


Region = BrushRegion | PolygonRegion | RectangleRegion


@dataclass(frozen=True)
class RegionSkip:
    reason: str


@dataclass(frozen=True)
class NotARegion:
    result_type: str


def result_size(result: dict) -> tuple[int, int] | None:
    """(width, height) the region was drawn on, when the result says."""
    width, height = result.get("original_width"), result.get("original_height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width >= 1 and height >= 1:
        if float(width).is_integer() and float(height).is_integer():
            return int(width), int(height)
    return None


def first_result_size(results: Sequence[list]) -> tuple[int, int] | None:
    for result_list in results:
        for result in result_list:
            if isinstance(result, dict) and result.get("value") is not None:
                size = result_size(result)
                if size:
                    return size
    return None


def _geometry_kind(result_type: str, value: dict) -> str | None:
    if result_type in SUPPORTED_REGION_TYPES:
        return result_type
    if result_type in GENERIC_REGION_TYPES:
        if "rle" in value:
            return "brushlabels"
        if "points" in value:
            return "polygonlabels"
        if {"x", "y", "width", "height"} <= value.keys():
            return "rectanglelabels"
    return None


def _region_label(result_type: str, value: dict) -> str | None:
    for key in (result_type, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str) and labels[0]:
            return labels[0]
    return None


def parse_region(result: dict, image_size: tuple[int, int] | None) -> Region | RegionSkip | NotARegion:
    """One `result` entry -> pixel geometry on an image of `image_size`, or why it was not converted."""
    result_type = str(result.get("type") or "").lower()
    value = result.get("value")
    if result_type in KEYPOINT_TYPES:
        return RegionSkip(SKIP_KEYPOINTS)
    if result_type in UNSUPPORTED_REGION_TYPES:
        return RegionSkip(f"unsupported region type {result_type}")
    if not isinstance(value, dict):
        return NotARegion(result_type or "untyped")
    kind = _geometry_kind(result_type, value)
    if kind is None:
        return NotARegion(result_type or "untyped")
    label = _region_label(result_type, value)
    if label is None:
        return RegionSkip(SKIP_NO_LABEL)
    own_size = result_size(result)
    if kind == "brushlabels":
        region = _brush_region(label, value, own_size or image_size, image_size)
    elif image_size is None:
        return RegionSkip(SKIP_MISSING_SIZE)
    elif kind == "polygonlabels":
        region = _polygon_region(label, value, *image_size)
    else:
        region = _rectangle_region(label, value, *image_size)
    from_name = result.get("from_name")
    if isinstance(region, RegionSkip) or not isinstance(from_name, str):
        return region
    return replace(region, from_name=from_name)


def _finite(values: object) -> np.ndarray | None:
    """The values as a float array when they are all finite numbers, else None."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if np.isfinite(array).all() else None


def _polygon_region(label: str, value: dict, width: int, height: int) -> PolygonRegion | RegionSkip:
    percent = _finite(value.get("points"))
    if percent is None or (percent.size and (percent.ndim != 2 or percent.shape[1] != 2)):
        return RegionSkip(SKIP_BAD_VALUE)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd coordinates are refused below
        points = percent_to_pixels(percent.reshape(-1, 2), width, height)
        area = polygon_area(points)
    if not (np.isfinite(points).all() and np.isfinite(area)):
        return RegionSkip(SKIP_BAD_VALUE)
    if len(points) < 3 or area <= 0:
        return RegionSkip(SKIP_EMPTY)
    return PolygonRegion(label, points)


def _rectangle_region(label: str, value: dict, width: int, height: int) -> RectangleRegion | RegionSkip:
    numbers = _finite([value.get(key) for key in ("x", "y", "width", "height")] + [value.get("rotation") or 0])
    if numbers is None:
        return RegionSkip(SKIP_BAD_VALUE)
    x, y, w, h, rotation = numbers.tolist()
    if w <= 0 or h <= 0:
        return RegionSkip(SKIP_EMPTY)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd coordinates are refused below
        corners = ls_rect_corners({"x": x, "y": y, "width": w, "height": h, "rotation": rotation}, width, height)
    if not np.isfinite(corners).all():
        return RegionSkip(SKIP_BAD_VALUE)
    return RectangleRegion(label, corners, rotated=rotation % 360 != 0)


def _brush_region(label: str, value: dict, size: tuple[int, int] | None,
                  image_size: tuple[int, int] | None) -> BrushRegion | RegionSkip:
    if size is None:
        return RegionSkip(SKIP_MISSING_SIZE)
    if image_size is not None and size != image_size:
        return RegionSkip(SKIP_SIZE_MISMATCH)
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        return RegionSkip(SKIP_BAD_RLE)
    try:
        mask = ls_rle_alpha(value["rle"], *size) > 0
    except ValueError:
        return RegionSkip(SKIP_BAD_RLE)
    if not mask.any():
        return RegionSkip(SKIP_EMPTY)
    return BrushRegion(label, column_major(mask))


def column_major(mask: np.ndarray) -> np.ndarray:
    """The same boolean mask stored column by column, the order COCO RLE encodes in: pycocotools
    then needs no transposing copy, and OpenCV's blocked transpose is about twice as fast as numpy's."""
    return cv2.transpose(mask.view(np.uint8)).T.view(bool)


def region_type(region: Region) -> str:
    if isinstance(region, BrushRegion):
        return "brush"
    if isinstance(region, RectangleRegion):
        return "rotated rectangle" if region.rotated else "rectangle"
    return "polygon"
