"""Label Studio result regions built from pixel geometry (the response side of the protocol)."""

from __future__ import annotations

import uuid

import numpy as np

from formats.geometry import BoxXYXY, box_to_ls_rect, pixels_to_percent
from formats.label_config import Control
from formats.mask_crop import MaskCrop


def result_region(control: Control, width: int, height: int, value: dict, score: float) -> dict:
    """One Label Studio result entry of `control` with a fresh id: `value` as given, on an image of width x height."""
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
    return result_region(control, width, height, value, score)


def polygon_regions(control: Control, label: str, mask: MaskCrop, score: float, tolerance: float) -> list[dict]:
    """One region per separate part of the mask."""
    regions = []
    for polygon in mask.polygons(tolerance=tolerance):
        points = np.round(pixels_to_percent(polygon, mask.width, mask.height), 4).tolist()
        regions.append(result_region(control, mask.width, mask.height, {"points": points, "closed": True, control.type: [label]}, score))
    return regions


def brush_region(control: Control, label: str, mask: MaskCrop, score: float) -> dict:
    value = {"format": "rle", "rle": mask.ls_rle(), control.type: [label]}
    return result_region(control, mask.width, mask.height, value, score)


def mask_regions(control: Control, label: str, mask: np.ndarray | MaskCrop, score: float, tolerance: float) -> list[dict]:
    """The regions a mask (image-sized, or a crop of one) becomes for `control`: brush, polygons, or
    its tight rectangle. All are computed in the mask's bounding crop."""
    crop = mask if isinstance(mask, MaskCrop) else MaskCrop.of(mask)
    if not crop.any():
        return []
    if control.tag == "BrushLabels":
        return [brush_region(control, label, crop, score)]
    if control.tag == "PolygonLabels":
        return polygon_regions(control, label, crop, score, tolerance)
    return [rectangle_region(control, label, crop.box(), score, crop.width, crop.height)]


def prediction(regions: list[dict], model_version: str, score: float | None = None, cluster: int | None = None) -> dict:
    """Label Studio's prediction: the task `score` given, else the mean of the region scores (0 without
    regions); `cluster` only when given."""
    if score is None:
        scores = [region["score"] for region in regions]
        score = round(float(np.mean(scores)), 6) if scores else 0.0
    found = {"result": regions, "score": score, "model_version": model_version}
    return found if cluster is None else {**found, "cluster": int(cluster)}
