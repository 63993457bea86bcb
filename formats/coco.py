"""COCO dicts from pixel geometry (in the style of Roboflow supervision's dataset/formats/coco.py),
and a writer that streams images and annotations to disk so a large dataset never sits in memory.

bbox is [x, y, width, height] in pixels; masks are compressed RLE (pycocotools), polygons are
flat [x1, y1, x2, y2, ...] lists. Category ids are the 0-based ids of `CategoryIndex`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from formats.geometry import BoxXYXY, polygon_area
from formats.rle import coco_rle_area, coco_rle_box, mask_to_coco_rle
from formats.export_regions import BrushRegion, PolygonRegion, Region


def coco_image(image_id: int, file_name: str, width: int, height: int, **extra: object) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height, **extra}


def coco_categories(names: Iterable[str]) -> list[dict]:
    return [{"id": category_id, "name": name, "supercategory": "none"} for category_id, name in enumerate(names)]


def xyxy_to_xywh(box: BoxXYXY) -> list[float]:
    x1, y1, x2, y2 = box
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def points_box(points: np.ndarray) -> BoxXYXY:
    (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def coco_annotation(annotation_id: int, image_id: int, category_id: int, segmentation: list | dict,
                    bbox: list[float], area: float) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "area": float(area), "bbox": bbox, "iscrowd": 0}


def region_annotation(region: Region, annotation_id: int, image_id: int, category_id: int) -> dict:
    """A converted region as a COCO annotation: brush masks as RLE with the mask's exact pixel area
    and tight box; polygons and rectangles (rotated ones included) as polygons with their exact area
    and the box around their corners."""
    if isinstance(region, BrushRegion):
        rle = mask_to_coco_rle(region.mask)
        return coco_annotation(annotation_id, image_id, category_id, dict(rle),
                               xyxy_to_xywh(coco_rle_box(rle)), coco_rle_area(rle))
    points = region.points if isinstance(region, PolygonRegion) else region.corners
    segmentation = [np.asarray(points, dtype=np.float64).ravel().tolist()]
    return coco_annotation(annotation_id, image_id, category_id, segmentation,
                           xyxy_to_xywh(points_box(points)), polygon_area(points))


class CocoWriter:
    """Appends images and annotations to line files next to the output, then writes the COCO JSON
    from them in one pass; nothing but the category list is held in memory."""

    def __init__(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._images_path = work_dir / "images.jsonl"
        self._annotations_path = work_dir / "annotations.jsonl"
        self._images = open(self._images_path, "w", encoding="utf-8")
        self._annotations = open(self._annotations_path, "w", encoding="utf-8")
        self.n_images = 0
        self.n_annotations = 0

    def add_image(self, image: dict) -> None:
        self._images.write(json.dumps(image, ensure_ascii=False) + "\n")
        self.n_images += 1

    def add_annotation(self, annotation: dict) -> None:
        self._annotations.write(json.dumps(annotation, ensure_ascii=False) + "\n")
        self.n_annotations += 1

    def close(self) -> None:
        self._images.close()
        self._annotations.close()

    def write(self, path: Path, categories: list[dict], info: dict) -> None:
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            out.write('{"info": ' + json.dumps(info, ensure_ascii=False) + ', "licenses": [],\n"images": [')
            _copy_lines_as_array(self._images_path, out)
            out.write('],\n"annotations": [')
            _copy_lines_as_array(self._annotations_path, out)
            out.write('],\n"categories": ' + json.dumps(categories, ensure_ascii=False) + "}\n")
        self._images_path.unlink()
        self._annotations_path.unlink()


def _copy_lines_as_array(lines_path: Path, out: IO[str]) -> None:
    with open(lines_path, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            out.write(("\n" if index == 0 else ",\n") + line.rstrip("\n"))
