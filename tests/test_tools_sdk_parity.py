"""Parity with label-studio-sdk's own COCO export on what it supports: rectangles and polygons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter import Converter

from formats.geometry import ls_rect_to_box
from tests.tools_exports import annotation, polygon_result, rectangle_result, result, task, upload_image, write_export
from formats.coco_dataset import convert
from formats.conversion import ConvertOptions
from formats.export_images import ImageSources

LABELS = ("bird", "cat", "dog")  # sorted: the SDK numbers categories in sorted order
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<RectangleLabels name="label" toName="image">' + "".join(f'<Label value="{x}"/>' for x in LABELS) +
          '</RectangleLabels><PolygonLabels name="poly" toName="image">' + "".join(f'<Label value="{x}"/>' for x in LABELS) +
          "</PolygonLabels></View>")


def polygon(n_points: int, center: tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, n_points))
    radii = radius * rng.uniform(0.5, 1.0, n_points)
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)


def poly_result(points: np.ndarray, label: str, width: int, height: int, region_id: str) -> dict:
    entry = polygon_result(points, label, width, height, region_id)
    entry["from_name"] = "poly"
    return entry


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(3)
    tasks = []
    for task_id, (width, height) in enumerate([(320, 240), (200, 200), (150, 400)], 1):
        url = upload_image(root / "ls", f"{task_id:08x}-img{task_id}.png", np.zeros((height, width, 3), np.uint8))
        results = []
        for k in range(4):
            label = LABELS[rng.integers(len(LABELS))]
            x1, y1 = rng.uniform(0, width * 0.6), rng.uniform(0, height * 0.6)
            box = (x1, y1, x1 + rng.uniform(5, width * 0.4), y1 + rng.uniform(5, height * 0.4))
            results.append(rectangle_result(box, label, width, height, region_id=f"r{k}"))
            points = polygon(int(rng.integers(3, 12)), (width / 2, height / 2), min(width, height) / 3, rng)
            results.append(poly_result(points, label, width, height, f"p{k}"))
        if width == height:  # the SDK rotates in percent units, which agrees with pixels only on square images
            results.append(result("rectanglelabels", ROTATED, width, height, "rot"))
        tasks.append(task(task_id, url, [annotation(results, annotation_id=task_id)]))
    export = write_export(root / "export.json", tasks)

    sdk_dir = root / "sdk"
    converter = Converter(CONFIG, project_dir=None, upload_dir=str(root / "ls" / "media" / "upload"))
    converter.convert_to_coco(str(export), str(sdk_dir), is_dir=False)
    convert(ConvertOptions(export, root / "ours", sources=ImageSources(root / "ls")))
    return (json.loads((sdk_dir / "result.json").read_text()),
            json.loads((root / "ours" / "annotations" / "ann.json").read_text()))


ROTATED = {"x": 20, "y": 30, "width": 25, "height": 10, "rotation": 35, "rectanglelabels": ["cat"]}


def by_image_name(coco: dict) -> dict[str, list[dict]]:
    """Annotations per image file, sorted by category and box (the SDK groups regions by control)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {image["id"]: Path(image["file_name"]).name for image in coco["images"]}
    grouped: dict[str, list[dict]] = {}
    for ann in coco["annotations"]:
        grouped.setdefault(files[ann["image_id"]], []).append({**ann, "category": names[ann["category_id"]]})
    return {name: sorted(anns, key=lambda a: (a["category"], [round(v, 4) for v in a["bbox"]])) for name, anns in grouped.items()}


def test_same_images_categories_boxes_and_polygons_as_the_sdk(exports: tuple[dict, dict]) -> None:
    sdk, ours = exports
    assert [(i["width"], i["height"]) for i in sdk["images"]] == [(i["width"], i["height"]) for i in ours["images"]]
    assert sorted(c["name"] for c in sdk["categories"]) == sorted(c["name"] for c in ours["categories"])
    sdk_anns, our_anns = by_image_name(sdk), by_image_name(ours)
    assert sdk_anns.keys() == our_anns.keys()
    x1, y1, x2, y2 = ls_rect_to_box(ROTATED, 200, 200)
    rotated_box = pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-6)
    n_rotated = 0
    for name, expected in sdk_anns.items():
        assert len(our_anns[name]) == len(expected) > 0
        for theirs, mine in zip(expected, our_anns[name]):
            assert mine["category"] == theirs["category"]
            assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=1e-6)
            if theirs["segmentation"]:  # a polygon
                assert mine["segmentation"] == [pytest.approx(theirs["segmentation"][0], abs=1e-6)]
            if mine["bbox"] == rotated_box:
                # Same enclosing box; the area is the rectangle's own (50 x 20 px), the SDK gives its box's.
                assert mine["area"] == pytest.approx(1000)
                assert theirs["area"] > 1000
                n_rotated += 1
            else:
                assert mine["area"] == pytest.approx(theirs["area"], abs=1e-6)
    assert n_rotated == 1
