"""Label Studio result regions built from pixel geometry (the response side of the protocol)."""

from __future__ import annotations

import uuid

import numpy as np

from backend.geometry import BoxXYXY, box_to_ls_rect, mask_to_box, mask_to_ls_rle, mask_to_polygons, pixels_to_percent
from backend.label_config import Control


def _region(control: Control, width: int, height: int, value: dict, score: float) -> dict:
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
        "score": round(float(score), 6),
        "origin": "prediction",
    }


def rectangle_region(control: Control, label: str, box: BoxXYXY, score: float, width: int, height: int) -> dict:
    value = {**box_to_ls_rect(box, width, height), "rotation": 0, control.type: [label]}
    return _region(control, width, height, value, score)


def polygon_regions(control: Control, label: str, mask: np.ndarray, score: float, tolerance: float) -> list[dict]:
    """One region per separate part of the mask."""
    height, width = mask.shape
    regions = []
    for polygon in mask_to_polygons(mask, tolerance=tolerance):
        points = np.round(pixels_to_percent(polygon, width, height), 4).tolist()
        regions.append(_region(control, width, height, {"points": points, "closed": True, control.type: [label]}, score))
    return regions


def brush_region(control: Control, label: str, mask: np.ndarray, score: float) -> dict:
    height, width = mask.shape
    value = {"format": "rle", "rle": mask_to_ls_rle(mask), control.type: [label]}
    return _region(control, width, height, value, score)


def mask_regions(control: Control, label: str, mask: np.ndarray, score: float, tolerance: float) -> list[dict]:
    """The regions a mask becomes for `control`: brush, polygons, or its tight rectangle."""
    if not mask.any():
        return []
    if control.tag == "BrushLabels":
        return [brush_region(control, label, mask, score)]
    if control.tag == "PolygonLabels":
        return polygon_regions(control, label, mask, score, tolerance)
    box = mask_to_box(mask)
    return [rectangle_region(control, label, box, score, mask.shape[1], mask.shape[0])]


def prediction(regions: list[dict], model_version: str) -> dict:
    scores = [region["score"] for region in regions]
    return {"result": regions, "score": round(float(np.mean(scores)), 6) if scores else 0.0, "model_version": model_version}
