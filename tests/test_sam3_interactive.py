"""MODEL_NAME=sam3 in Label Studio's interactive context: clicks, find-all example boxes and typed phrases give
what Meta's SAM 3 gives on the same (reduced, random) weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.sam3_reduced import (CHECKPOINT, PICTURE, MetaReference, brush_mask, meta, model_root, picture,  # noqa: F401
                                threshold_keeping)

from tests.conftest import config_xml, local_url  # noqa: E402 - after sam3_reduced's importorskip


@pytest.fixture(scope="module")
def client(make_client: Callable[..., TestClient], model_root: Path) -> TestClient:
    return make_client(model_root=str(model_root), model_name="sam3", sam_checkpoint_file=CHECKPOINT)


def interactive(client: TestClient, config: str, context: list[dict]) -> dict:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(PICTURE)}}],
                                             "label_config": config, "params": {"context": {"result": context}}})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def brushes(result: dict) -> list[dict]:
    return [region for region in result["result"] if region["type"] == "brushlabels"]


def test_a_click_gives_meta_interactive_predictors_best_mask(client: TestClient, meta: MetaReference,
                                                             picture: np.ndarray) -> None:
    height, width = picture.shape[:2]
    config = config_xml('<KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>',
                        '<BrushLabels name="brush" toName="image"><Label value="cat"/></BrushLabels>')
    click = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
             "value": {"x": 30.0, "y": 40.0, "keypointlabels": ["cat"]}}
    result = interactive(client, config, [click])
    masks, scores = meta.click(picture, point_coords=np.array([[0.3 * width, 0.4 * height]]),
                               point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    [region] = brushes(result)
    assert np.array_equal(brush_mask(region), masks[best]) and abs(region["score"] - scores[best]) < 1e-4
    assert "sam3-reduced@" in result["model_version"]


def test_a_find_all_box_gives_every_instance_like_it(client: TestClient, meta: MetaReference,
                                                     picture: np.ndarray) -> None:
    height, width = picture.shape[:2]
    boxes = [([40.0, 30.0, 90.0, 70.0], True), ([120.0, 75.0, 160.0, 120.0], False)]
    threshold = threshold_keeping(meta.examples(picture, boxes, 0.0)["scores"], 3)
    config = config_xml(f'<RectangleLabels name="rect" toName="image" smart="true" model_find_all="true" '
                        f'model_score_threshold="{threshold}"><Label value="Dent"/></RectangleLabels>',
                        '<BrushLabels name="brush" toName="image"><Label value="Dent"/></BrushLabels>')
    context = [{"type": "rectanglelabels", "from_name": "rect", "to_name": "image", "is_positive": positive,
                "value": {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                          "height": (y1 - y0) * 100 / height, "rectanglelabels": ["Dent"]}}
               for (x0, y0, x1, y1), positive in boxes]
    expected = meta.examples(picture, boxes, threshold)
    found = brushes(interactive(client, config, context))
    assert len(found) == len(expected["scores"]) == 3
    for region, mask, score in zip(found, expected["masks"], expected["scores"]):
        assert region["value"]["brushlabels"] == ["Dent"]
        assert np.array_equal(brush_mask(region), mask) and abs(region["score"] - score) < 1e-4


def test_a_typed_phrase_finds_every_instance_under_the_label_it_names(client: TestClient, meta: MetaReference,
                                                                      picture: np.ndarray) -> None:
    threshold = threshold_keeping(meta.text(picture, "euro pallet", 0.0)["scores"], 2)
    config = config_xml('<TextArea name="prompt" toName="image" editable="true"/>',
                        f'<BrushLabels name="brush" toName="image" model_score_threshold="{threshold}">'
                        '<Label value="Dent"/><Label value="Pallet" predicted_values="euro pallet"/></BrushLabels>')
    typed = {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["euro pallet"]}}
    expected = meta.text(picture, "euro pallet", threshold)
    found = brushes(interactive(client, config, [typed]))
    assert len(found) == 2
    for region, mask, score in zip(found, expected["masks"], expected["scores"]):
        assert region["value"]["brushlabels"] == ["Pallet"]
        assert np.array_equal(brush_mask(region), mask) and abs(region["score"] - score) < 1e-4
