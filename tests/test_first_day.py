"""What a new user sees when something is wrong: log lines and /health instead of silent empty answers."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from tests.conftest import REPO_ROOT, SHAPE_LABELS, config_xml, demo_settings, local_url

CATS_AND_DOGS = config_xml('<RectangleLabels name="pets" toName="image"><Label value="cat"/><Label value="dog"/>'
                           '</RectangleLabels>')
SOME_MATCH = config_xml('<PolygonLabels name="outline" toName="image"><Label value="circle"/><Label value="unicorn"/>'
                        '</PolygonLabels>')
TASKS = [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def wait_for(caplog: pytest.LogCaptureFixture, text: str, seconds: float = 30.0) -> list[str]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = [m for m in warnings_of(caplog) if text in m]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no warning containing {text!r}; warnings: {warnings_of(caplog)}")


def fresh_client(image_root: Path, tmp_path: Path, **overrides: object) -> TestClient:
    settings = demo_settings(image_root, tmp_path, **overrides)
    return TestClient(create_app(settings, build_services(settings)))


def test_labels_that_match_no_class_are_a_warning_once_per_config(image_root: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = fresh_client(image_root, tmp_path)
    caplog.set_level(logging.INFO)
    assert client.post("/setup", json={"project": "4.1700000000", "schema": CATS_AND_DOGS}).status_code == 200
    (message,) = wait_for(caplog, 'name="pets"')
    assert "demo-shapes-det.pt" in message and "circle, square, triangle" in message and "cat, dog" in message
    assert "none of the config's labels" in message and "predicted_values" in message
    for _ in range(3):
        response = client.post("/predict", json={"tasks": TASKS, "label_config": CATS_AND_DOGS})
        assert response.status_code == 200 and response.json()["results"][0]["result"] == []
    assert len([m for m in warnings_of(caplog) if 'name="pets"' in m]) == 1


def test_partly_matching_labels_name_what_matches(image_root: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = fresh_client(image_root, tmp_path)
    assert client.post("/predict", json={"tasks": TASKS, "label_config": SOME_MATCH}).status_code == 200
    (message,) = [m for m in warnings_of(caplog) if 'name="outline"' in m]
    assert "demo-shapes-seg.pt" in message
    assert "labels matching model classes: circle" in message and "never predicted): unicorn" in message


def test_fully_matching_labels_are_not_a_warning(image_root: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = fresh_client(image_root, tmp_path)
    caplog.set_level(logging.INFO)
    config = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>')
    assert client.post("/predict", json={"tasks": TASKS, "label_config": config}).status_code == 200
    assert not [m for m in warnings_of(caplog) if 'name="rect"' in m]
    assert any("every label matches a model class" in r.getMessage() for r in caplog.records)


def test_the_repositorys_coco_config_with_the_demo_models_says_why_nothing_comes(
        image_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = fresh_client(image_root, tmp_path)
    config = (REPO_ROOT / "label_config.xml").read_text()
    assert client.post("/predict", json={"tasks": TASKS, "label_config": config}).status_code == 200
    silent = [m for m in warnings_of(caplog) if "none of the config's labels" in m]
    assert len(silent) == 3  # RectangleLabels, PolygonLabels, BrushLabels
    assert all("person, bicycle, car" in m and "... (" in m for m in silent)  # long lists are shortened


def test_control_tags_the_backend_does_not_answer_are_named(image_root: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    client = fresh_client(image_root, tmp_path)
    config = config_xml('<EllipseLabels name="oval" toName="image"><Label value="circle"/></EllipseLabels>',
                        '<RectangleLabel name="typo" toName="image"><Label value="circle"/></RectangleLabel>')
    response = client.post("/predict", json={"tasks": TASKS, "label_config": config})
    assert response.status_code == 200
    (message,) = [m for m in warnings_of(caplog) if "does not predict" in m]
    assert '<EllipseLabels name="oval">' in message
    assert '<RectangleLabel name="typo"> (not a Label Studio tag)' in message


def test_a_default_model_that_cannot_load_is_an_error_at_start_and_in_health(
        image_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = demo_settings(image_root, tmp_path, yolo_det_model="yolov8-typo.pt")
    with TestClient(create_app(settings)) as client:  # the lifespan starts the background load
        deadline = time.time() + 30
        while "YOLO_DET_MODEL" not in client.get("/health").json()["models_failed"] and time.time() < deadline:
            time.sleep(0.05)
        health = client.get("/health").json()
    assert health["status"] == "UP"
    assert "yolov8-typo.pt" in health["models_failed"]["YOLO_DET_MODEL"]
    assert "YOLO_SEG_MODEL" not in health["models_failed"]
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "YOLO_DET_MODEL cannot be loaded" in error and "Put the file in MODEL_ROOT" in error
    assert "--with yolo_det_model=demo-shapes-det.pt yolo_seg_model=demo-shapes-seg.pt" in error


def test_every_4xx_is_logged_with_its_project(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    response = client.post("/predict", json={"tasks": "not a list", "project": "7.1700000000"})
    assert response.status_code == 400
    (message,) = [m for m in warnings_of(caplog) if "answered 400" in m]
    assert message.startswith("POST /predict (project 7.1700000000) answered 400: 'tasks' must be a list")


def test_setup_state_is_kept_per_label_studio_project_and_owner_only(image_root: Path, tmp_path: Path) -> None:
    client = fresh_client(image_root, tmp_path)
    config = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>')
    setup = {"project": "2.1700000001", "schema": config, "hostname": "http://ls-a:8080", "access_token": "secret"}
    assert client.post("/setup", json=setup).status_code == 200
    # Project 2 of another Label Studio (another creation time) must not get this config or token.
    response = client.post("/predict", json={"tasks": TASKS, "project": "2.1800000000"})
    assert response.status_code == 400 and "no /setup provided one" in response.json()["error"]
    assert client.post("/predict", json={"tasks": TASKS}).status_code == 400
    response = client.post("/predict", json={"tasks": TASKS, "project": "2.1700000001"})
    assert response.status_code == 200 and response.json()["results"][0]["result"]
    services = client.app.state.get_services()
    assert services.credentials("2.1800000000") is None
    assert services.credentials("2") is None  # a bare id names no project (webhooks send id and created_at)
    saved = list((tmp_path / "setup").glob("*.json"))
    assert [p.name for p in saved] == ["project-2.1700000001.json"]
    assert stat.S_IMODE(os.stat(saved[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "setup").st_mode) == 0o700
