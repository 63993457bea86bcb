"""The backend's regions, decoded, equal what Ultralytics itself returns for the same model and image."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from ultralytics import YOLO

from formats.geometry import ls_rect_to_box, mask_iou, percent_to_pixels, polygons_to_mask
from formats.rle import ls_rle_to_mask
from backend.models.yolo import INFERENCE_THREADS
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPES_SEEDS, local_url
from tools.crowded_shapes import crowded_image

CONF = 0.25  # the test clients' MODEL_SCORE_THRESHOLD
# All three controls on the segmentation model: one forward pass serves boxes, polygons and brushes.
SEG_CONFIG = ALL_CONTROLS_CONFIG.replace('<RectangleLabels name="rect"', f'<RectangleLabels name="rect" model_path="{DEMO_SEG}"')


@pytest.fixture(scope="module")
def ultralytics_seg() -> YOLO:
    return YOLO(str(MODELS_DIR / DEMO_SEG))


def same_threads_predict(model: YOLO, bgr: np.ndarray, **options: object):  # noqa: ANN201 - ultralytics Results
    """Ultralytics' result with the backend's torch thread count: convolutions split over another number of
    threads round differently in the last bits (scores differ by ~1e-7). Ultralytics lowers the calling
    thread's count when it sets up a predictor, so the count is set after that."""
    model.predict(bgr, conf=CONF, verbose=False, **options)
    torch.set_num_threads(INFERENCE_THREADS)
    (result,) = model.predict(bgr, conf=CONF, verbose=False, **options)
    return result


def reference(model: YOLO, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bgr = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]
    result = same_threads_predict(model, bgr, retina_masks=True)
    return result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.masks.data.numpy() > 0.5


@pytest.mark.parametrize("seed", list(SHAPES_SEEDS)[:8])
def test_regions_decode_to_ultralytics_output(client: TestClient, image_root: Path, ultralytics_seg: YOLO, seed: int) -> None:
    name = f"shapes_{seed}.png"
    boxes, scores, masks = reference(ultralytics_seg, image_root / name)
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(name)}}],
                                            "label_config": SEG_CONFIG})
    (result,) = response.json()["results"]
    by_type = defaultdict(list)
    for region in result["result"]:
        by_type[region["type"]].append(region)
    assert len(boxes) > 0, "the demo model found nothing on this image"
    height, width = masks.shape[1:]

    rects = by_type["rectanglelabels"]
    assert len(rects) == len(boxes)
    for region, box, score in zip(rects, boxes, scores):
        assert region["score"] == pytest.approx(float(score), abs=1e-5)
        assert np.abs(np.array(ls_rect_to_box(region["value"], width, height)) - box).max() <= 0.5

    brushes = by_type["brushlabels"]
    assert len(brushes) == len(masks)
    for region, mask in zip(brushes, masks):
        assert mask_iou(ls_rle_to_mask(region["value"]["rle"], width, height), mask) >= 0.99

    # Polygons: one region per separate part; all parts of one detection share its score.
    parts_by_score = defaultdict(list)
    for region in by_type["polygonlabels"]:
        parts_by_score[region["score"]].append(percent_to_pixels(np.array(region["value"]["points"]), width, height))
    for mask, score in zip(masks, scores):
        polygons = parts_by_score[round(float(score), 6)]
        assert polygons, "a mask produced no polygon"
        # Outlines are simplified (POLYGON_TOLERANCE): a small ragged mask keeps a little less than 95%.
        assert mask_iou(polygons_to_mask(polygons, width, height), mask) >= 0.9


@pytest.mark.parametrize("seed", list(SHAPES_SEEDS)[:4])
def test_detection_model_boxes_equal_ultralytics(client: TestClient, image_root: Path, seed: int) -> None:
    name = f"shapes_{seed}.png"
    bgr = np.asarray(Image.open(image_root / name).convert("RGB"))[:, :, ::-1]
    (expected,) = YOLO(str(MODELS_DIR / DEMO_DET)).predict(bgr, conf=CONF, verbose=False)
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(name)}}],
                                            "label_config": ALL_CONTROLS_CONFIG})
    rects = [r for r in response.json()["results"][0]["result"] if r["type"] == "rectanglelabels"]
    assert len(rects) == len(expected.boxes) > 0
    for region, box in zip(rects, expected.boxes.xyxy.numpy()):
        assert np.abs(np.array(ls_rect_to_box(region["value"], 160, 160)) - box).max() <= 0.5


def test_real_photo_regions_are_within_the_image(client: TestClient) -> None:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("bus.jpg")}}],
                                            "label_config": ALL_CONTROLS_CONFIG.replace("circle", "Circle")})
    assert response.status_code == 200
    for region in response.json()["results"][0]["result"]:
        assert (region["original_width"], region["original_height"]) == (810, 1080)
        value = region["value"]
        if region["type"] == "rectanglelabels":
            assert 0 <= value["x"] <= value["x"] + value["width"] <= 100 + 1e-9
        if region["type"] == "polygonlabels":
            assert all(0 <= c <= 100 for point in value["points"] for c in point)


def test_crowded_1080p_regions_equal_ultralytics_retina_masks(make_client: Callable[..., TestClient], image_root: Path,
                                                               ultralytics_seg: YOLO) -> None:
    """50 shapes at 1920x1080: every brush decodes to exactly Ultralytics' retina mask, although the
    backend computes masks only inside each box and encodes them from the crop."""
    name = "crowded_1080p.png"
    cv2.imwrite(str(image_root / name), crowded_image(11))
    bgr = np.asarray(Image.open(image_root / name).convert("RGB"))[:, :, ::-1]
    expected = same_threads_predict(ultralytics_seg, bgr, imgsz=640, retina_masks=True)
    boxes, masks = expected.boxes.xyxy.numpy(), expected.masks.data.numpy() > 0.5
    assert len(masks) >= 25, "the demo model found few of the 50 shapes"
    client = make_client(yolo_imgsz=640)
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(name)}}],
                                            "label_config": SEG_CONFIG})
    by_type = defaultdict(list)
    for region in response.json()["results"][0]["result"]:
        by_type[region["type"]].append(region)
    height, width = masks.shape[1:]

    assert len(by_type["rectanglelabels"]) == len(by_type["brushlabels"]) == len(masks)
    for region, box in zip(by_type["rectanglelabels"], boxes):
        assert np.abs(np.array(ls_rect_to_box(region["value"], width, height)) - box).max() <= 1e-3
    for region, mask in zip(by_type["brushlabels"], masks):
        np.testing.assert_array_equal(ls_rle_to_mask(region["value"]["rle"], width, height), mask)
    polygons = [percent_to_pixels(np.array(r["value"]["points"]), width, height) for r in by_type["polygonlabels"]]
    assert len(polygons) >= len(masks)
    assert mask_iou(polygons_to_mask(polygons, width, height), masks.any(axis=0)) >= 0.95
