"""Interactive SAM through the FastAPI app, driven by the requests Label Studio really sends."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from segment_anything import SamPredictor

from backend.serving.cli import check_models
from backend.serving.app import Services, build_services, create_app
from formats.geometry import ls_rect_to_box, mask_iou, mask_to_box, percent_to_pixels, polygons_to_mask
from formats.rle import ls_rle_to_mask
from backend.sources.images import ImageFetcher
from backend.interactive.sam import RecentImages
from backend.sources.label_studio import AccessTokens
from backend.models.sam import SamLoadError
from backend.models.sam_embeddings import image_key
from tests.conftest import ALL_CONTROLS_CONFIG, demo_settings, load_protocol_fixture, local_url, ultralytics_asset

SAM_SETTINGS = {"model_name": "sam", "sam_config": "demo", "sam_checkpoint_file": "demo-tiny-sam.pt",
                "out_mask": "True", "out_poly": "true", "out_bbox": "1"}


class SamApp:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.client = TestClient(create_app(services.settings, services))

    @property
    def encoder_calls(self) -> int:
        return self.services.interactive.segmenter.encoder_calls

    def predict(self, request: dict) -> list[dict]:
        response = self.client.post("/predict", json=request)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        return result["result"]


@pytest.fixture(scope="module")
def sam_app(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamApp]:
    app = SamApp(build_services(demo_settings(image_root, tmp_path_factory.mktemp("sam-cache"), **SAM_SETTINGS)))
    yield app
    app.client.close()


def interactive_request(fixture: str, image: str) -> dict:
    request = load_protocol_fixture(fixture)
    request["tasks"][0]["data"]["image"] = local_url(image)
    return request


def pixels_of(name: str) -> np.ndarray:
    return np.asarray(Image.open(ultralytics_asset(name)).convert("RGB"))


def predictor_for(app: SamApp, pixels: np.ndarray) -> SamPredictor:
    predictor = SamPredictor(app.services.interactive.segmenter.model.network)
    predictor.set_image(pixels)
    return predictor


def regions_by_type(result: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for region in result:
        grouped.setdefault(region["type"], []).append(region)
    return grouped


def without_holes(mask: np.ndarray) -> np.ndarray:
    """Label Studio polygons have no holes: compare them with the mask's filled outlines."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def assert_regions_show(result: list[dict], expected: np.ndarray, label: str) -> None:
    """One brush region equal to `expected`, polygons covering it, and its tight box; all labeled `label`."""
    height, width = expected.shape
    regions = regions_by_type(result)
    assert set(regions) == {"brushlabels", "polygonlabels", "rectanglelabels"}
    (brush,) = regions["brushlabels"]
    assert brush["from_name"] == "brush" and brush["value"]["brushlabels"] == [label]
    assert (brush["original_width"], brush["original_height"]) == (width, height)
    assert mask_iou(ls_rle_to_mask(brush["value"]["rle"], width, height), expected) >= 0.999
    polygons = [percent_to_pixels(np.array(r["value"]["points"]), width, height) for r in regions["polygonlabels"]]
    assert all(r["value"]["polygonlabels"] == [label] for r in regions["polygonlabels"])
    assert mask_iou(polygons_to_mask(polygons, width, height), without_holes(expected)) >= 0.95
    (box,) = regions["rectanglelabels"]
    assert box["from_name"] == "rect" and box["value"]["rectanglelabels"] == [label]
    np.testing.assert_allclose(ls_rect_to_box(box["value"], width, height), mask_to_box(expected), atol=1e-6)


def test_captured_point_request_answers_sam_predictors_mask(sam_app: SamApp) -> None:
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    pixels = pixels_of("bus.jpg")
    height, width = pixels.shape[:2]
    points = np.array([[0.405 * width, 0.552 * height], [0.2 * width, 0.8 * height]])
    expected = predictor_for(sam_app, pixels).predict(points, np.array([1, 0]), multimask_output=False)[0][0]
    assert expected.any()
    assert_regions_show(sam_app.predict(request), expected, "bus")


def test_captured_rectangle_request_uses_the_decoded_size_not_original_width(sam_app: SamApp) -> None:
    # The captured context says 810x1080; zidane.jpg decodes to 1280x720, and that is what the annotator sees.
    request = interactive_request("predict-interactive-rectangle.json", "zidane.jpg")
    pixels = pixels_of("zidane.jpg")
    height, width = pixels.shape[:2]
    box = np.array([0.05 * width, 0.2 * height, 0.95 * width, 0.75 * height])
    expected = predictor_for(sam_app, pixels).predict(box=box, multimask_output=False)[0][0]
    assert expected.any()
    assert_regions_show(sam_app.predict(request), expected, "bus")


def test_a_single_click_keeps_sams_best_scored_mask(sam_app: SamApp) -> None:
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    context = request["params"]["context"]
    context["result"] = context["result"][:1]
    context["result"][0]["value"]["keypointlabels"] = ["person"]
    pixels = pixels_of("bus.jpg")
    point = np.array([[0.405 * pixels.shape[1], 0.552 * pixels.shape[0]]])
    masks, scores, _ = predictor_for(sam_app, pixels).predict(point, np.array([1]), multimask_output=True)
    assert_regions_show(sam_app.predict(request), masks[int(np.argmax(scores))], "person")


def test_a_second_click_reuses_the_embedding(sam_app: SamApp) -> None:
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    sam_app.predict(request)
    before = sam_app.encoder_calls
    request["params"]["context"]["result"][0]["value"]["x"] = 60.0
    assert sam_app.predict(request)
    assert sam_app.encoder_calls == before
    metrics = sam_app.client.get("/metrics").text
    hits = next(line for line in metrics.splitlines() if line.startswith('backend_sam_embedding_cache_total{result="hit"}'))
    assert float(hits.split()[-1]) >= 2


def test_click_outside_the_image_is_clamped(sam_app: SamApp, caplog: pytest.LogCaptureFixture) -> None:
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    context = request["params"]["context"]
    context["result"] = context["result"][:1]
    context["result"][0]["value"].update(x=140.0, y=55.2)
    pixels = pixels_of("bus.jpg")
    point = np.array([[pixels.shape[1], 0.552 * pixels.shape[0]]])
    masks, scores, _ = predictor_for(sam_app, pixels).predict(point, np.array([1]), multimask_output=True)
    with caplog.at_level(logging.WARNING, logger="backend.interactive.prompts"):
        result = sam_app.predict(request)
    assert "outside the 810x1080 image" in caplog.text
    brush = regions_by_type(result)["brushlabels"][0]
    assert mask_iou(ls_rle_to_mask(brush["value"]["rle"], 810, 1080), masks[int(np.argmax(scores))]) >= 0.999


def test_unknown_prompt_types_are_ignored_with_a_warning(sam_app: SamApp, caplog: pytest.LogCaptureFixture) -> None:
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    plain = sam_app.predict(copy.deepcopy(request))
    ellipse = {"type": "ellipselabels", "from_name": "keypoint", "to_name": "image",
               "value": {"x": 1, "y": 1, "radiusX": 5, "radiusY": 5, "ellipselabels": ["bus"]}}
    request["params"]["context"]["result"].append(ellipse)
    with caplog.at_level(logging.WARNING, logger="backend.interactive.prompts"):
        with_ellipse = sam_app.predict(request)
    assert "ignoring an interactive prompt of type 'ellipselabels'" in caplog.text
    assert [r["value"] for r in with_ellipse] == [r["value"] for r in plain]
    request["params"]["context"]["result"] = [ellipse]
    assert sam_app.predict(request) == []


def test_an_unreadable_image_answers_empty(sam_app: SamApp, caplog: pytest.LogCaptureFixture) -> None:
    request = interactive_request("predict-interactive-points.json", "no-such-image.jpg")
    with caplog.at_level(logging.WARNING, logger="backend.interactive.sam"):
        assert sam_app.predict(request) == []
    assert "not found under LOCAL_FILES_DOCUMENT_ROOT" in caplog.text


def test_only_the_enabled_outputs_that_the_config_has(image_root: Path, tmp_path: Path) -> None:
    settings = demo_settings(image_root, tmp_path, **{**SAM_SETTINGS, "out_poly": "False", "out_bbox": "false"})
    app = SamApp(build_services(settings))
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    assert {r["type"] for r in app.predict(request)} == {"brushlabels"}
    request["label_config"] = request["label_config"].replace("BrushLabels", "Labels")  # no brush control left
    assert app.predict(request) == []


def test_no_sam_configured_answers_empty_and_says_why(image_root: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(create_app(demo_settings(image_root, tmp_path)))
    with caplog.at_level(logging.WARNING):
        response = client.post("/predict", json=interactive_request("predict-interactive-points.json", "bus.jpg"))
    assert response.status_code == 200 and response.json()["results"][0]["result"] == []
    assert "no SAM model is configured" in caplog.text


def test_missing_checkpoint_fails_at_start_and_in_check(image_root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    settings = demo_settings(image_root, tmp_path, **{**SAM_SETTINGS, "sam_checkpoint_file": "./sam_vit_b_01ec64.pth"})
    message = r"SAM_CHECKPOINT_FILE \(sam_checkpoint_file\)='./sam_vit_b_01ec64.pth' not found"
    with pytest.raises(SamLoadError, match=message):
        build_services(settings)
    assert check_models(settings) == 1
    assert "FAILED: SAM_CHECKPOINT_FILE" in capsys.readouterr().out


def test_check_describes_the_sam_model(image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_models(demo_settings(image_root, tmp_path, **SAM_SETTINGS)) == 0
    assert "ok: SAM sam:demo from " in capsys.readouterr().out


def test_yolo_boxes_become_sam_masks(image_root: Path, tmp_path: Path) -> None:
    settings = demo_settings(image_root, tmp_path, **SAM_SETTINGS, yolo_sam="true", yolo_seg_model="demo-shapes-det.pt")
    app = SamApp(build_services(settings))
    request = {"tasks": [{"id": 7, "data": {"image": local_url("shapes_5001.png")}}], "label_config": ALL_CONTROLS_CONFIG}
    regions = regions_by_type(app.predict(request))
    boxes, brushes = regions["rectanglelabels"], regions["brushlabels"]
    assert boxes and len(brushes) == len(boxes) and regions["polygonlabels"]
    pixels = np.asarray(Image.open(image_root / "shapes_5001.png").convert("RGB"))
    predictor = predictor_for(app, pixels)
    for box, brush in zip(boxes, brushes):
        expected = predictor.predict(box=np.array(ls_rect_to_box(box["value"], 160, 160)), multimask_output=False)[0][0]
        assert brush["value"]["brushlabels"] == box["value"]["rectanglelabels"]
        assert mask_iou(ls_rle_to_mask(brush["value"]["rle"], 160, 160), expected) >= 0.99


def test_prefetch_embeds_predicted_tasks_before_the_first_click(image_root: Path, tmp_path: Path) -> None:
    app = SamApp(build_services(demo_settings(image_root, tmp_path, **SAM_SETTINGS, sam_prefetch="true")))
    batch = {"tasks": [{"id": 3, "data": {"image": local_url("bus.jpg")}}], "label_config": ALL_CONTROLS_CONFIG}
    assert app.client.post("/predict", json=batch).status_code == 200
    deadline = time.monotonic() + 30
    while app.encoder_calls == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.encoder_calls == 1
    assert app.predict(interactive_request("predict-interactive-points.json", "bus.jpg"))
    assert app.encoder_calls == 1


def test_disk_cache_is_shared_by_workers(image_root: Path, tmp_path: Path) -> None:
    settings = demo_settings(image_root, tmp_path, **SAM_SETTINGS, sam_disk_cache_dir=str(tmp_path / "embeddings"))
    request = interactive_request("predict-interactive-points.json", "bus.jpg")
    first, second = SamApp(build_services(settings)), SamApp(build_services(settings))  # two workers' state
    answer = first.predict(request)
    assert first.encoder_calls == 1
    assert second.predict(request) and second.encoder_calls == 0
    assert len(answer) == len(second.predict(request))


def test_repeated_clicks_reuse_the_decoded_image_until_its_file_changes(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    shutil.copyfile(ultralytics_asset("bus.jpg"), root / "photo.jpg")
    images = RecentImages(ImageFetcher(tmp_path / "cache", str(root), 30.0, 10**8, AccessTokens(30.0), 10**8))
    first, key = images.load(local_url("photo.jpg"), 1, None)
    assert images.load(local_url("photo.jpg"), 1, None) == (first, key)
    assert key == image_key(first.pixels)
    shutil.copyfile(ultralytics_asset("zidane.jpg"), root / "photo.jpg")
    changed, changed_key = images.load(local_url("photo.jpg"), 1, None)
    assert changed.pixels.shape == (720, 1280, 3) and changed_key != key
