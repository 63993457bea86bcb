"""Batch predictions shaped by the labeling config: labels, thresholds, skips, orientation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from formats.geometry import ls_rect_to_box
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPES_SEEDS, config_xml, local_url

SEEDS = list(SHAPES_SEEDS)[:6]


def predict(client: TestClient, config: str, names: list[str]) -> list[dict]:
    tasks = [{"id": i, "data": {"image": local_url(name)}} for i, name in enumerate(names)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": config})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def labels_of(results: list[dict]) -> list[str]:
    return [label for r in results for region in r["result"] for label in region["value"]["rectanglelabels"]]


def rect_config(labels: str, attributes: str = "") -> str:
    return config_xml(f'<RectangleLabels name="rect" toName="image" {attributes}>{labels}</RectangleLabels>')


def shapes(seeds: list[int] = SEEDS) -> list[str]:
    return [f"shapes_{seed}.png" for seed in seeds]


def test_labels_match_model_classes_case_insensitively_and_unmatched_classes_drop(client: TestClient) -> None:
    all_labels = labels_of(predict(client, rect_config('<Label value="circle"/><Label value="square"/><Label value="triangle"/>'), shapes()))
    assert set(all_labels) >= {"circle", "square"}
    only_circles = labels_of(predict(client, rect_config('<Label value="CIRCLE"/>'), shapes()))
    assert only_circles and set(only_circles) == {"CIRCLE"}
    assert len(only_circles) == all_labels.count("circle")


def test_predicted_values_map_several_classes_to_one_label(client: TestClient) -> None:
    config = rect_config('<Label value="Shape" predicted_values="circle,square,triangle"/>')
    merged = labels_of(predict(client, config, shapes()))
    all_labels = labels_of(predict(client, rect_config('<Label value="circle"/><Label value="square"/><Label value="triangle"/>'), shapes()))
    assert merged == ["Shape"] * len(all_labels)


def test_every_region_and_prediction_carries_score_and_version(make_client: Callable[..., TestClient]) -> None:
    """Region scores are the model's confidences; the task score is in [0, 1], with TASK_SCORE=mean their mean."""
    config = rect_config('<Label value="circle"/><Label value="square"/><Label value="triangle"/>')
    client, mean_client = make_client(), make_client(task_score="mean")
    results, mean_results = predict(client, config, shapes()), predict(mean_client, config, shapes())
    version = client.post("/setup", json={"project": "1.1700000000", "schema": config}).json()["model_version"]
    assert version.startswith("demo-shapes-det@")
    for result, mean_result in zip(results, mean_results):
        assert result["model_version"] == version
        scores = [region["score"] for region in result["result"]]
        assert all(0.25 <= s <= 1 for s in scores)
        assert scores == [region["score"] for region in mean_result["result"]]
        assert 0.0 <= result["score"] <= 1.0
        assert mean_result["score"] == pytest.approx(float(np.mean(scores)) if scores else 0.0, abs=1e-6)


def test_control_threshold_overrides_the_default(client: TestClient) -> None:
    labels = '<Label value="circle"/><Label value="square"/><Label value="triangle"/>'
    loose = predict(client, rect_config(labels, 'model_score_threshold="0.3"'), shapes())
    strict = predict(client, rect_config(labels, 'model_score_threshold="0.8"'), shapes())
    loose_scores = [g["score"] for r in loose for g in r["result"]]
    strict_scores = [g["score"] for r in strict for g in r["result"]]
    assert min(loose_scores) >= 0.3 and min(strict_scores, default=1) >= 0.8
    assert sorted(strict_scores) == sorted(s for s in loose_scores if s >= 0.8)
    assert len(strict_scores) < len(loose_scores)


def test_model_skip_and_model_path_per_control(client: TestClient) -> None:
    labels = '<Label value="circle"/><Label value="square"/><Label value="triangle"/>'
    config = config_xml(
        f'<RectangleLabels name="skipped" toName="image" model_skip="true">{labels}</RectangleLabels>',
        f'<RectangleLabels name="det" toName="image" model_path="{DEMO_DET}">{labels}</RectangleLabels>')
    results = predict(client, config, shapes())
    names = {region["from_name"] for r in results for region in r["result"]}
    assert names == {"det"}


def test_detection_model_for_masks_is_a_clear_400(client: TestClient) -> None:
    config = config_xml(f'<PolygonLabels name="poly" toName="image" model_path="{DEMO_DET}"><Label value="circle"/></PolygonLabels>')
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(shapes()[0])}}], "label_config": config})
    assert response.status_code == 400
    assert "detection model" in response.json()["error"] and "segmentation" in response.json()["error"]


def test_config_without_predictable_controls_answers_empty(client: TestClient) -> None:
    config = config_xml('<KeyPointLabels name="kp" toName="image" smart="true"><Label value="circle"/></KeyPointLabels>')
    assert [r["result"] for r in predict(client, config, shapes()[:2])] == [[], []]


def test_exif_orientation_is_applied(client: TestClient, image_root: Path) -> None:
    """A JPEG stored sideways with EXIF orientation 6 is predicted as Label Studio displays it."""
    upright = Image.open(image_root / shapes()[0]).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 = rotate 270 to display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(image_root / "rotated.jpg", quality=100, exif=exif.tobytes())
    upright.save(image_root / "upright.jpg", quality=100)
    rotated_stored = Image.open(image_root / "rotated.jpg")
    assert rotated_stored.size == (upright.height, upright.width) or upright.width == upright.height

    # Make the image non-square so orientation mistakes change the size too.
    wide = Image.new("RGB", (upright.width * 2, upright.height))
    wide.paste(upright, (0, 0))
    wide.save(image_root / "wide-upright.jpg", quality=100)
    wide.transpose(Image.Transpose.ROTATE_90).save(image_root / "wide-rotated.jpg", quality=100, exif=exif.tobytes())

    config = rect_config('<Label value="circle"/><Label value="square"/><Label value="triangle"/>')
    upright_result, rotated_result = predict(client, config, ["wide-upright.jpg", "wide-rotated.jpg"])
    assert upright_result["result"], "the demo model found nothing to compare"
    for region in rotated_result["result"]:
        assert (region["original_width"], region["original_height"]) == wide.size
    boxes = [sorted(ls_rect_to_box(g["value"], g["original_width"], g["original_height"]) for g in r["result"])
             for r in (upright_result, rotated_result)]
    assert len(boxes[0]) == len(boxes[1])
    assert np.allclose(boxes[0], boxes[1], atol=3.0)  # JPEG re-encoding of rotated blocks differs slightly


def test_model_root_default_names_and_offline_error(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(yolo_det_model="yolov8n.pt", model_root=str(tmp_path))
    config = rect_config('<Label value="person"/>')
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("bus.jpg")}}], "label_config": config})
    # Offline here: Ultralytics cannot download yolov8n.pt; the message names the setting to change.
    if response.status_code == 200:
        pytest.skip("yolov8n.pt could be downloaded: this machine is online")
    assert response.status_code == 400
    assert "YOLO_DET_MODEL" in response.json()["error"] and "MODEL_ROOT" in response.json()["error"]
    assert MODELS_DIR.exists()


def test_controls_sharing_a_model_share_one_forward_pass_per_batch(make_client: Callable[..., TestClient],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.models.yolo import PreparedBatch, YoloModel

    client = make_client(yolo_det_model=DEMO_SEG, batch_size=4)
    calls: list[int] = []
    original = YoloModel.infer

    def counting(self: YoloModel, prepared: PreparedBatch, conf: float, candidate_floor: float | None = None) -> list:
        calls.append(len(prepared.shapes))
        return original(self, prepared, conf, candidate_floor)

    monkeypatch.setattr(YoloModel, "infer", counting)
    labels = '<Label value="circle"/><Label value="square"/><Label value="triangle"/>'
    config = config_xml(f'<RectangleLabels name="rect" toName="image">{labels}</RectangleLabels>',
                        f'<PolygonLabels name="poly" toName="image">{labels}</PolygonLabels>',
                        f'<BrushLabels name="brush" toName="image">{labels}</BrushLabels>')
    results = predict(client, config, shapes())
    assert calls == [4, 2]  # 6 images in batches of 4, one pass each for all three controls
    assert {region["type"] for r in results for region in r["result"]} == {"rectanglelabels", "polygonlabels", "brushlabels"}
