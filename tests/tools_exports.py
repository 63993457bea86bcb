"""Builders for Label Studio JSON exports (the format of Label Studio's "JSON" export), for the tools' tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from formats.geometry import box_to_ls_rect, mask_to_box, pixels_to_percent
from formats.rle import mask_to_ls_rle
from tools.shapes_dataset import CLASS_NAMES, ShapesImage, generate_image

UPLOAD_PROJECT = 3


def result(result_type: str, value: dict, width: int | None, height: int | None, region_id: str = "r") -> dict:
    entry = {"id": region_id, "from_name": "label", "to_name": "image", "type": result_type, "image_rotation": 0,
             "value": value, "origin": "manual"}
    if width is not None:
        entry.update(original_width=width, original_height=height)
    return entry


def brush_result(mask: np.ndarray, label: str, region_id: str = "b") -> dict:
    height, width = mask.shape
    return result("brushlabels", {"format": "rle", "rle": mask_to_ls_rle(mask), "brushlabels": [label]}, width, height, region_id)


def polygon_result(points: np.ndarray, label: str, width: int, height: int, region_id: str = "p") -> dict:
    value = {"points": pixels_to_percent(np.asarray(points, dtype=np.float64), width, height).tolist(),
             "closed": True, "polygonlabels": [label]}
    return result("polygonlabels", value, width, height, region_id)


def rectangle_result(box: tuple[float, float, float, float], label: str, width: int, height: int,
                     rotation: float = 0.0, region_id: str = "r") -> dict:
    value = {**box_to_ls_rect(box, width, height), "rotation": rotation, "rectanglelabels": [label]}
    return result("rectanglelabels", value, width, height, region_id)


def annotation(results: list[dict], annotation_id: int = 1, created_at: str = "2024-05-01T10:00:00.000000Z",
               was_cancelled: bool = False) -> dict:
    return {"id": annotation_id, "result": results, "was_cancelled": was_cancelled, "ground_truth": False,
            "created_at": created_at, "updated_at": created_at, "lead_time": 3.5, "completed_by": 1}


def task(task_id: int, image_url: str, annotations: list[dict], predictions: list[dict] | None = None) -> dict:
    return {"id": task_id, "data": {"image": image_url}, "annotations": annotations, "predictions": predictions or [],
            "meta": {}, "created_at": "2024-05-01T09:00:00.000000Z", "project": UPLOAD_PROJECT}


def write_export(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps(tasks))
    return path


def upload_image(ls_data_dir: Path, name: str, pixels_bgr: np.ndarray) -> str:
    """Store an image where Label Studio keeps uploads; returns its task URL."""
    folder = ls_data_dir / "media" / "upload" / str(UPLOAD_PROJECT)
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), pixels_bgr)
    return f"/data/upload/{UPLOAD_PROJECT}/{name}"


def shapes_tasks(ls_data_dir: Path, seeds: range, kinds: tuple[str, ...] = ("brush",)) -> list[tuple[dict, ShapesImage]]:
    """Tasks annotating synthetic shapes images, each instance as the next region kind of `kinds`
    (brush: its mask; rectangle: its tight box)."""
    tasks = []
    for seed in seeds:
        sample = generate_image(seed)
        url = upload_image(ls_data_dir, f"{seed:08x}-shapes_{seed}.png", sample.image)
        height, width = sample.image.shape[:2]
        results = []
        for index, instance in enumerate(sample.instances):
            label = CLASS_NAMES[instance.class_id]
            kind = kinds[index % len(kinds)]
            if kind == "brush":
                results.append(brush_result(instance.mask, label, f"s{seed}_{index}"))
            else:
                results.append(rectangle_result(mask_to_box(instance.mask), label, width, height, region_id=f"s{seed}_{index}"))
        tasks.append((task(seed, url, [annotation(results, annotation_id=seed)]), sample))
    return tasks
