"""Taxonomy with a YOLO classification model: the config's tree, the regions (pure), and /predict against
Ultralytics' own probabilities for the demo classification model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.prediction.tasks import task_regions
from formats.label_config import LabelConfigError, parse_label_config
from backend.models.yolo_tasks import ClassProbabilities
from tests.conftest import local_url
from tests.test_task_predict import CONFIGS, SEEDS, client, predict, task_root, ultralytics_results  # noqa: F401 - fixtures

TREE = """<View><Image name="image" value="$image"/>
  <Taxonomy name="kind" toName="image" choice="{choice}" {extra}>
    <Choice value="Animal">
      <Choice value="Cat" predicted_values="tabby,siamese"/>
      <Choice value="Dog"/>
    </Choice>
    <Choice value="Vehicle" predicted_values="truck">
      <Choice value="Car"/>
    </Choice>
    <Choice value="Other"><Choice value="Cat"/></Choice>
  </Taxonomy>
</View>"""
CLASSES = ("tabby", "dog", "truck", "car", "siamese", "bird")


def taxonomy_control(choice: str = "single", extra: str = ""):  # noqa: ANN201 - label_config.Control
    return parse_label_config(TREE.format(choice=choice, extra=extra)).control("kind")


def regions(control, probs: list[float], threshold: float) -> list[dict]:  # noqa: ANN001
    return task_regions(control, ClassProbabilities(CLASSES, np.array(probs)), threshold, 640, 480)


def test_tree_nodes_are_leaves_and_inner_nodes_with_predicted_values() -> None:
    control = taxonomy_control()
    assert control.options.taxonomy == (("Animal", "Cat"), ("Animal", "Dog"), ("Vehicle",), ("Vehicle", "Car"),
                                        ("Other", "Cat"))
    assert control.label_for("siamese") == "Animal/Cat" and control.label_for("cat") == "Animal/Cat"  # first node wins
    assert control.label_for("truck") == "Vehicle" and control.label_for("bird") is None
    assert taxonomy_control(extra='leafsOnly="true"').label_for("truck") is None


def test_single_is_the_likeliest_class_with_a_node_as_its_path() -> None:
    (region,) = regions(taxonomy_control(), [0.1, 0.2, 0.15, 0.05, 0.0, 0.5], 0.1)  # "bird" has no node
    assert region["type"] == "taxonomy" and region["from_name"] == "kind" and region["to_name"] == "image"
    assert region["value"] == {"taxonomy": [["Animal", "Dog"]]} and region["score"] == 0.2
    assert "original_width" not in region
    assert regions(taxonomy_control(), [0.1, 0.2, 0.15, 0.05, 0.0, 0.5], 0.25) == []


def test_multiple_is_every_node_above_the_threshold_once() -> None:
    (region,) = regions(taxonomy_control("multiple"), [0.3, 0.05, 0.25, 0.05, 0.3, 0.05], 0.2)
    assert region["value"] == {"taxonomy": [["Animal", "Cat"], ["Vehicle"]]}  # tabby and siamese are one node
    assert region["score"] == pytest.approx(np.mean([0.3, 0.3, 0.25]), abs=1e-6)


def test_unreadable_tree_is_a_config_error() -> None:
    with pytest.raises(LabelConfigError):
        parse_label_config('<View><Image name="i" value="$i"/><Taxonomy name="t" toName="i"><Choice value="a">'
                           '</Taxonomy></View>')


@pytest.mark.parametrize("choice", ["single", "multiple"])
def test_taxonomy_probabilities_equal_ultralytics(client: TestClient, task_root: Path, choice: str) -> None:  # noqa: F811
    config = (CONFIGS / "demo-shapes-taxonomy.xml").read_text().replace(
        'leafsOnly="true"', f'leafsOnly="true" choice="{choice}" model_score_threshold="0.2"')
    paths = [task_root / f"cls_{seed}.png" for seed in SEEDS]
    answers = predict(client, config, [{"image": local_url(path.name)} for path in paths])
    tree = {"circle": ["Round", "Circle"], "square": ["Polygon", "Square"], "triangle": ["Polygon", "Triangle"]}
    for found, result in zip(answers, ultralytics_results("demo-shapes-cls.pt", paths)):
        probs = result.probs.data.cpu().numpy().astype(np.float64)
        if choice == "single":
            chosen = [int(np.argmax(probs))]
        else:
            chosen = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= 0.2]
        (region,) = found
        assert region["value"] == {"taxonomy": [tree[result.names[i]] for i in chosen]}
        assert region["score"] == round(float(np.mean(probs[chosen])), 6)


def test_classification_model_of_the_wrong_task_is_named(client: TestClient) -> None:  # noqa: F811
    config = (CONFIGS / "demo-shapes-taxonomy.xml").read_text().replace("demo-shapes-cls.pt", "demo-shapes-obb.pt")
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("cls_90000.png")}}],
                                             "label_config": config})
    assert response.status_code == 400
    assert "<Taxonomy name=\"shape\"> needs a YOLO classification model" in response.json()["error"]
    assert "is a YOLO OBB (rotated box) model" in response.json()["error"]
