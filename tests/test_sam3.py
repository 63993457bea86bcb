"""SAM 3 pre-annotation from label names: regions equal Meta's Sam3Processor on the same (reduced, random) weights."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.sam3_reduced import (CHECKPOINT, PICTURE, MetaReference, brush_mask, meta, model_root, picture,  # noqa: F401
                                threshold_keeping)

from backend.models.sam3 import load_sam3  # noqa: E402 - after sam3_reduced's importorskip
from backend.prediction.concepts import label_phrases, mask_iou, merged_instances
from formats.geometry import ls_rect_to_box
from formats.label_config import parse_label_config
from formats.mask_crop import MaskCrop
from tests.conftest import config_xml, local_url


@pytest.fixture(scope="module")
def client(make_client: Callable[..., TestClient], model_root: Path) -> TestClient:
    return make_client(model_root=str(model_root), concept_model=CHECKPOINT)


def predict(client: TestClient, config: str) -> dict:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(PICTURE)}}],
                                             "label_config": config})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def regions_of(result: dict, control: str, label: str) -> list[dict]:
    return [r for r in result["result"] if r["from_name"] == control and r["value"][r["type"]] == [label]]


def test_text_prompts_give_meta_processor_masks_boxes_and_scores(client: TestClient, meta: MetaReference,
                                                                  picture: np.ndarray) -> None:
    cat = meta.text(picture, "cat", 0.0)
    threshold = threshold_keeping(cat["scores"], 5)
    config = config_xml(
        f'<BrushLabels name="brush" toName="image" model_path="{CHECKPOINT}" model_score_threshold="{threshold}">'
        '<Label value="cat"/><Label value="Pallet" predicted_values="wooden pallet"/></BrushLabels>',
        f'<RectangleLabels name="rect" toName="image" model_path="{CHECKPOINT}" model_score_threshold="{threshold}">'
        '<Label value="cat"/></RectangleLabels>')
    result = predict(client, config)
    height, width = picture.shape[:2]
    for phrase, label in (("cat", "cat"), ("wooden pallet", "Pallet")):
        expected = meta.text(picture, phrase, threshold)
        brushes = regions_of(result, "brush", label)
        assert len(brushes) == len(expected["scores"])
        for region, mask, score in zip(brushes, expected["masks"], expected["scores"]):
            assert np.array_equal(brush_mask(region), mask)
            assert abs(region["score"] - score) < 1e-4
    expected = meta.text(picture, "cat", threshold)
    rectangles = regions_of(result, "rect", "cat")
    assert len(rectangles) == 5
    for region, box, score in zip(rectangles, expected["boxes"], expected["scores"]):
        clipped = np.clip(box, 0, [width, height, width, height])
        assert np.allclose(ls_rect_to_box(region["value"], width, height), clipped, atol=1e-3)
        assert abs(region["score"] - score) < 1e-4
    assert result["model_version"].startswith("sam3-reduced@")


def test_phrases_of_one_label_are_merged_into_one_region_per_object(client: TestClient, meta: MetaReference,
                                                                    model_root: Path, picture: np.ndarray) -> None:
    threshold = threshold_keeping(meta.text(picture, "crate", 0.0)["scores"], 6)
    config = config_xml(f'<PolygonLabels name="poly" toName="image" model_path="{CHECKPOINT}" '
                        f'model_score_threshold="{threshold}"><Label value="Box" predicted_values="crate,carton"/>'
                        '</PolygonLabels>')
    crate, carton = (meta.text(picture, phrase, threshold) for phrase in ("crate", "carton"))
    found = [MaskCrop.of(mask) for mask in (*crate["masks"], *carton["masks"])]
    model = load_sam3(model_root / CHECKPOINT, "cpu")
    embedding = model.embed(picture)
    merged = [model.find(embedding, phrase, threshold) for phrase in ("crate", "carton")]
    kept = merged_instances(merged, threshold)
    assert len(crate["scores"]) <= len(kept) < len(found)  # the random model finds the same blobs for both phrases
    for index, (_, crop, _) in enumerate(kept):
        assert any(mask_iou(crop, other) == 1.0 for other in found)
        assert all(mask_iou(crop, other[1]) < 0.5 for other in kept[index + 1:]) or len(crate["scores"]) > 1
    for other in found:
        assert max(mask_iou(other, crop) for _, crop, _ in kept) >= 0.5  # every object keeps a region
    polygons = predict(client, config)["result"]
    assert polygons and {r["value"]["polygonlabels"][0] for r in polygons} == {"Box"}


def test_label_phrases_come_from_predicted_values_or_the_value() -> None:
    control = parse_label_config(config_xml(
        '<RectangleLabels name="rect" toName="image"><Label value="Scratch"/><Label value="Dent" predicted_values="dent,bump"/>'
        '<Label value="Pallet" predicted_values="Wooden pallet, euro pallet"/></RectangleLabels>')).controls[0]
    assert label_phrases(control, control.labels) == (("Scratch", ("Scratch",)), ("Dent", ("dent", "bump")),
                                                      ("Pallet", ("Wooden pallet", "euro pallet")))


def test_example_box_gives_meta_add_geometric_prompt(meta: MetaReference, model_root: Path,
                                                     picture: np.ndarray) -> None:
    model = load_sam3(model_root / CHECKPOINT, "cpu")
    embedding = model.embed(picture)
    boxes = [([40.0, 30.0, 90.0, 70.0], True), ([120.0, 80.0, 160.0, 120.0], False)]
    reference = meta.examples(picture, boxes, 0.0)
    threshold = threshold_keeping(reference["scores"], 4)
    expected = meta.examples(picture, boxes, threshold)
    found = model.find_examples(embedding, np.array([box for box, _ in boxes]), [p for _, p in boxes], threshold)
    assert len(found.scores) == len(expected["scores"]) == 4
    assert np.allclose(found.boxes, expected["boxes"], atol=1e-4)
    assert np.abs(found.scores - expected["scores"]).max() < 1e-4
    for crop, mask in zip(found.crops, expected["masks"]):
        assert np.array_equal(crop.full(), mask)


def test_clicks_and_boxes_give_meta_interactive_predictor(meta: MetaReference, model_root: Path,
                                                         picture: np.ndarray) -> None:
    model = load_sam3(model_root / CHECKPOINT, "cpu")
    embedding = model.embed(picture)
    points, labels = np.array([[60.0, 50.0], [150.0, 100.0]]), np.array([1, 0])
    masks, scores = model.decode(embedding, points, labels, None, multimask=True)
    expected_masks, expected_scores = meta.click(picture, point_coords=points, point_labels=labels,
                                                 multimask_output=True)
    assert np.array_equal(masks, expected_masks) and np.abs(scores - expected_scores).max() < 1e-5
    box = np.array([30.0, 20.0, 110.0, 90.0])
    masks, scores = model.decode(embedding, None, None, box, multimask=False)
    expected_masks, expected_scores = meta.click(picture, box=box, multimask_output=False)
    assert np.array_equal(masks, expected_masks) and np.abs(scores - expected_scores).max() < 1e-5


def test_concept_model_answers_the_labels_no_yolo_class_serves(client: TestClient, meta: MetaReference,
                                                               picture: np.ndarray,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the first /setup or /predict of a config logs it, once
    threshold = threshold_keeping(meta.text(picture, "scratch", 0.0)["scores"], 3)
    config = config_xml(f'<RectangleLabels name="rect" toName="image" model_score_threshold="{threshold}">'
                        '<Label value="circle"/><Label value="scratch"/></RectangleLabels>')
    result = predict(client, config)
    expected = meta.text(picture, "scratch", threshold)
    scratches = regions_of(result, "rect", "scratch")
    height, width = picture.shape[:2]
    assert len(scratches) == 3
    for region, box, score in zip(scratches, expected["boxes"], expected["scores"]):
        assert np.allclose(ls_rect_to_box(region["value"], width, height),
                           np.clip(box, 0, [width, height, width, height]), atol=1e-3)
        assert abs(region["score"] - score) < 1e-4
    assert "demo-shapes-det@" in result["model_version"] and "sam3-reduced@" in result["model_version"]
    assert client.post("/setup", json={"project": "23.1", "schema": config}).status_code == 200
    deadline = time.monotonic() + 60
    while "answers the labels" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f'<RectangleLabels name="rect">: SAM 3 (CONCEPT_MODEL={CHECKPOINT}) answers the labels scratch' in caplog.text



def test_annotate_dir_pre_annotates_a_folder_from_the_same_config(model_root: Path, meta: MetaReference,
                                                                  picture: np.ndarray, tmp_path: Path) -> None:
    from tools import annotate_dir

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(picture).save(images / "picture.png")
    threshold = threshold_keeping(meta.text(picture, "scratch", 0.0)["scores"], 3)
    config = tmp_path / "config.xml"
    config.write_text(config_xml(f'<RectangleLabels name="rect" toName="image" model_path="{CHECKPOINT}" '
                                 f'model_score_threshold="{threshold}"><Label value="scratch"/></RectangleLabels>'))
    assert annotate_dir.main([str(images), "--label_config", str(config), "--out_dir", str(tmp_path / "out"),
                              "--with", f"model_root={model_root}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    height, width = picture.shape[:2]
    expected = [np.clip(box, 0, [width, height, width, height]) for box in meta.text(picture, "scratch", threshold)["boxes"]]
    found = sorted(annotation["bbox"] for annotation in coco["annotations"])
    assert [c["name"] for c in coco["categories"]] == ["scratch"]
    assert np.allclose(found, sorted([x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in expected), atol=0.01)


def test_a_concept_model_that_is_missing_or_not_sam3_is_a_400_naming_the_setting(
        make_client: Callable[..., TestClient], model_root: Path) -> None:
    config = config_xml('<RectangleLabels name="rect" toName="image"><Label value="scratch"/></RectangleLabels>')
    for value, expected in (("missing.pt", "CONCEPT_MODEL='missing.pt' not found"),
                            ("demo-shapes-det.pt", "CONCEPT_MODEL='demo-shapes-det.pt' is not a SAM 3 checkpoint")):
        client = make_client(model_root=str(model_root), concept_model=value)
        response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(PICTURE)}}],
                                                 "label_config": config})
        assert response.status_code == 400 and expected in response.json()["error"], response.text


def test_disk_cached_sam3_embeddings_serve_phrases_and_clicks(model_root: Path, picture: np.ndarray,
                                                             tmp_path: Path) -> None:
    from backend.models.sam import SamSegmenter
    from backend.models.sam_embeddings import DiskEmbeddings, MemoryEmbeddings

    model = load_sam3(model_root / CHECKPOINT, "cpu")
    first = SamSegmenter(model, MemoryEmbeddings(2), DiskEmbeddings(tmp_path, "sam3"))
    mask, _ = first.best_mask(picture, np.array([[60.0, 50.0]]), np.array([1]), None, multimask=True)
    second = SamSegmenter(model, MemoryEmbeddings(2), DiskEmbeddings(tmp_path, "sam3"))  # another worker
    cached = second.embedding(picture)
    again, _ = second.best_mask(picture, np.array([[60.0, 50.0]]), np.array([1]), None, multimask=True)
    assert second.disk_hits == 1 and second.encoder_calls == 0
    assert (mask & again).sum() / max(1, (mask | again).sum()) > 0.95  # fp16 on disk
    fresh, stored = model.find(model.embed(picture), "scratch", 0.0), model.find(cached, "scratch", 0.0)
    assert len(fresh.scores) == len(stored.scores) and np.abs(fresh.scores - stored.scores).max() < 0.01
