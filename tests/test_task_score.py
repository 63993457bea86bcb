"""The task score (backend/prediction/quality.py): direction, range, determinism, nothing found, several controls."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import (ALL_CONTROLS_CONFIG, DEMO_DET, MODELS_DIR, SHAPE_LABELS, SHAPES_SEEDS, config_xml,
                            local_url)
from backend.prediction.clusters import MAX_FILE_BYTES, ProjectClusters, kmeans, nearest, normalized
from backend.prediction.quality import NOTHING_FOUND, ControlFindings, task_quality

BOX = np.array([[10, 10, 50, 50]], float)
OTHER_BOX = np.array([[100, 100, 150, 150]], float)


def boxes(scores: list[float], box_list: list[list[float]], classes: tuple[str, ...], image: str = "image",
          candidates: tuple[list[float], list[list[float]], tuple[str, ...]] = ([], [], ())) -> ControlFindings:
    cand_scores, cand_boxes, cand_classes = candidates
    return ControlFindings(scores=scores, threshold=0.5, image=image, boxes=np.array(box_list, float).reshape(-1, 4),
                           class_names=classes, candidate_boxes=np.array(cand_boxes, float).reshape(-1, 4),
                           candidate_scores=cand_scores, candidate_classes=cand_classes)


def test_confident_clean_prediction_scores_high_and_in_range() -> None:
    score = task_quality([boxes([0.95, 0.9], [[10, 10, 50, 50], [100, 100, 150, 150]], ("circle", "square"))])
    assert 0.75 < score <= 1.0


def test_lower_confidence_scores_lower() -> None:
    sure = task_quality([boxes([0.95], [[10, 10, 50, 50]], ("circle",))])
    unsure = task_quality([boxes([0.55], [[10, 10, 50, 50]], ("circle",))])
    assert 0.0 <= unsure < sure <= 1.0


def test_a_detection_just_below_the_threshold_lowers_the_score() -> None:
    clean = task_quality([boxes([0.9], [[10, 10, 50, 50]], ("circle",))])
    with_miss = task_quality([boxes([0.9], [[10, 10, 50, 50]], ("circle",),
                                    candidates=([0.45], [[100, 100, 150, 150]], ("square",)))])
    faint = task_quality([boxes([0.9], [[10, 10, 50, 50]], ("circle",),
                                candidates=([0.12], [[100, 100, 150, 150]], ("square",)))])
    assert with_miss < faint < clean


def test_a_competing_class_on_the_same_object_lowers_the_score() -> None:
    alone = task_quality([boxes([0.8], [[10, 10, 50, 50]], ("circle",))])
    contested = task_quality([boxes([0.8], [[10, 10, 50, 50]], ("circle",),
                                    candidates=([0.4], [[11, 11, 50, 50]], ("square",)))])
    same_class = task_quality([boxes([0.8], [[10, 10, 50, 50]], ("circle",),
                                     candidates=([0.4], [[11, 11, 50, 50]], ("circle",)))])
    assert contested < same_class < alone


def test_nothing_found_scores_lowest_constant() -> None:
    assert task_quality([boxes([], [], ())]) == NOTHING_FOUND
    assert task_quality([]) == NOTHING_FOUND
    found = task_quality([boxes([0.6], [[10, 10, 50, 50]], ("circle",))])
    assert NOTHING_FOUND < found


def test_only_candidates_found_scores_zero() -> None:
    assert task_quality([boxes([], [], (), candidates=([0.3], [[10, 10, 50, 50]], ("circle",)))]) == 0.0


def test_score_is_deterministic() -> None:
    findings = [boxes([0.7, 0.6], [[10, 10, 50, 50], [60, 60, 90, 90]], ("circle", "square"),
                      candidates=([0.3], [[100, 100, 150, 150]], ("triangle",)))]
    assert len({task_quality(findings) for _ in range(5)}) == 1


def test_a_box_without_a_mask_on_the_same_image_lowers_the_score() -> None:
    rect = boxes([0.9, 0.9], [[10, 10, 50, 50], [100, 100, 150, 150]], ("circle", "square"))
    agreeing_masks = boxes([0.9, 0.9], [[11, 10, 50, 50], [100, 101, 150, 150]], ("circle", "square"))
    one_mask = boxes([0.9], [[11, 10, 50, 50]], ("circle",))
    agree, disagree = task_quality([rect, agreeing_masks]), task_quality([rect, one_mask])
    assert disagree < agree
    other_image = boxes([0.9], [[11, 10, 50, 50]], ("circle",), image="other")
    assert task_quality([rect, other_image]) > disagree  # different images are not compared


def test_controls_without_boxes_count_their_region_scores() -> None:
    sure = task_quality([ControlFindings(scores=[0.97], threshold=0.5)])
    unsure = task_quality([ControlFindings(scores=[0.4], threshold=0.5)])
    assert 0 <= unsure < sure <= 1
    combined = task_quality([boxes([0.95], [[10, 10, 50, 50]], ("circle",)), ControlFindings(scores=[0.4], threshold=0.5)])
    assert unsure < combined < task_quality([boxes([0.95], [[10, 10, 50, 50]], ("circle",))])



def predict(client: TestClient, config: str, names: list[str], project: str | None = None) -> list[dict]:
    tasks = [{"id": i, "data": {"image": local_url(name)}} for i, name in enumerate(names)]
    body = {"tasks": tasks, "label_config": config, **({"project": project} if project else {})}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


SHAPES = [f"shapes_{seed}.png" for seed in SHAPES_SEEDS]
RECT = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>')


def test_served_task_scores_are_in_range_deterministic_and_follow_the_setting(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    first, again = predict(client, ALL_CONTROLS_CONFIG, SHAPES), predict(client, ALL_CONTROLS_CONFIG, SHAPES)
    assert [r["score"] for r in first] == [r["score"] for r in again]
    assert all(0.0 <= r["score"] <= 1.0 for r in first)
    assert all("cluster" not in r for r in first)  # CLUSTERS=0
    means = predict(make_client(task_score="mean"), ALL_CONTROLS_CONFIG, SHAPES)
    assert [r["score"] for r in first] != [r["score"] for r in means]


def test_a_picture_with_nothing_found_scores_at_most_nothing_found(make_client: Callable[..., TestClient],
                                                                    image_root: Path) -> None:
    cv2.imwrite(str(image_root / "flat_grey.png"), np.full((160, 160, 3), 60, np.uint8))
    (result,) = predict(make_client(), RECT, ["flat_grey.png"])
    assert result["result"] == [] and result["score"] <= NOTHING_FOUND


def test_clusters_are_the_same_on_two_backends_sharing_model_root(make_client: Callable[..., TestClient],
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copyfile(MODELS_DIR / DEMO_DET, root / DEMO_DET)
    one = make_client(model_root=str(root), clusters=2, cache_dir=str(tmp_path / "one"))
    other = make_client(model_root=str(root), clusters=2, cache_dir=str(tmp_path / "two"))
    assert "cluster" not in predict(one, RECT, SHAPES, project="7.1700000000")[0]  # no /setup: not a known project
    assert not (root / "projects").exists()
    for client in (one, other):  # Label Studio connects the project to each backend
        assert client.post("/setup", json={"project": "7.1700000000", "schema": RECT}).status_code == 200
    assert predict(one, RECT, SHAPES[:2], project="7.1700000000")[0].get("cluster") is None  # too few to make 2
    first = predict(one, RECT, SHAPES, project="7.1700000000")
    clusters = [r["cluster"] for r in first]
    assert set(clusters) == {0, 1}
    written = list((root / "projects" / "7.1700000000").glob("clusters-k2-*.json"))
    assert len(written) == 1 and written[0].stat().st_size < 20_000
    assert [r["cluster"] for r in predict(other, RECT, SHAPES[::-1], project="7.1700000000")] == clusters[::-1]
    assert [r["cluster"] for r in predict(other, RECT, SHAPES[3:5], project="7.1700000000")] == clusters[3:5]
    assert "cluster" not in predict(other, RECT, SHAPES)[0]  # no project: nobody may create or read centres
    assert "cluster" not in predict(other, RECT, SHAPES, project="../7")[0]


def test_kmeans_is_deterministic_whatever_the_order_and_bounded(tmp_path: Path) -> None:
    points = normalized(np.random.default_rng(3).normal(size=(300, 16)))
    centres = kmeans(points, 5)
    assert np.array_equal(centres, kmeans(points[::-1], 5)) and centres.shape == (5, 16)
    assert np.array_equal(nearest(points, centres), nearest(points, kmeans(points[np.random.default_rng(4).permutation(300)], 5)))
    with pytest.raises(ValueError, match="between 1 and 64"):
        ProjectClusters(tmp_path, "1.1700000000", 65, "m@x")
    with pytest.raises(ValueError):
        ProjectClusters(tmp_path, "../1", 2, "m@x")  # not a project uid: no folder of its own
    oversized = ProjectClusters(tmp_path, "1.1700000000", 2, "m@x")
    oversized.path.parent.mkdir(parents=True)
    oversized.path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    assert oversized.centres() is None


def test_the_bench_reports_the_spearman_a_perfect_score_without_ties_reaches() -> None:
    from bench.bench_active_learning import spearman, untied_ceiling

    shuffles = [np.random.default_rng(seed).permutation(100) for seed in range(20)]
    distinct = np.linspace(0, 1, 100)
    assert untied_ceiling(distinct, shuffles) == pytest.approx(1.0)
    mostly_perfect = np.r_[np.linspace(0.2, 0.9, 16), np.ones(84)]  # as on standard pictures: 84% need nothing
    assert 0.55 < untied_ceiling(mostly_perfect, shuffles) < 0.7
    assert spearman(mostly_perfect, mostly_perfect) == pytest.approx(1.0)  # ties in both: no bound
