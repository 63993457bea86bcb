"""Label Studio's ML backend protocol, driven by the requests Label Studio 1.23.2 really sends."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from tests.conftest import ALL_CONTROLS_CONFIG, demo_settings, load_protocol_fixture, local_url, ultralytics_asset
from tests.fake_label_studio import FakeLabelStudio

TOKEN = "0123456789abcdef0123456789abcdef01234567"
ZIDANE_KEY = "upload/2/f6dad7a2-zidane.jpg"


def test_health_and_root(client: TestClient) -> None:
    for path in ("/", "/health"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json()["status"] == "UP"


def test_versions_webhook_metrics(client: TestClient) -> None:
    # The default models' version first, then those of the configs /setup has seen (other tests' too).
    assert client.get("/versions").json()["versions"][0] == client.get("/health").json()["model_version"]
    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}})
    assert response.status_code == 200 and response.json() == {"status": "ignored", "action": "ANNOTATION_CREATED"}
    text = client.get("/metrics").text
    assert 'backend_requests_total{endpoint="/webhook",status="200"}' in text
    assert "backend_request_seconds_bucket" in text


def test_setup_then_batch_predict_downloads_upload_with_token(image_root: Path, tmp_path: Path) -> None:
    setup = load_protocol_fixture("setup.json")
    batch = load_protocol_fixture("predict-batch.json")
    with FakeLabelStudio({ZIDANE_KEY: ultralytics_asset("zidane.jpg").read_bytes()}, TOKEN) as fake:
        settings = demo_settings(image_root, tmp_path)
        client = TestClient(create_app(settings, build_services(settings)))
        response = client.post("/setup", json={**setup, "hostname": fake.url, "access_token": TOKEN})
        assert response.status_code == 200
        model_version = response.json()["model_version"]
        response = client.post("/predict", json=batch)
        assert response.status_code == 200
        (result,) = response.json()["results"]
        assert result["model_version"] == model_version
        assert isinstance(result["result"], list) and isinstance(result["score"], float)
        assert any(auth == f"Token {TOKEN}" for _, auth in fake.requests)


def test_what_setup_taught_is_known_to_another_worker(image_root: Path, tmp_path: Path) -> None:
    setup = load_protocol_fixture("setup.json")
    batch = load_protocol_fixture("predict-batch.json")
    with FakeLabelStudio({ZIDANE_KEY: ultralytics_asset("zidane.jpg").read_bytes()}, TOKEN) as fake:
        workers = []
        for _ in range(2):  # two processes' worth of state: only the cache dir is shared
            settings = demo_settings(image_root, tmp_path)
            workers.append(TestClient(create_app(settings, build_services(settings))))
        assert workers[0].post("/setup", json={**setup, "hostname": fake.url, "access_token": TOKEN}).status_code == 200
        response = workers[1].post("/predict", json={**batch, "label_config": None})  # config from /setup too
        assert response.status_code == 200
        assert fake.requests, "the second worker never tried to download the task image"
        assert all(auth == f"Token {TOKEN}" for _, auth in fake.requests)


def test_interactive_request_without_sam_answers_empty(client: TestClient) -> None:
    for name in ("predict-interactive-points.json", "predict-interactive-rectangle.json"):
        request = load_protocol_fixture(name)
        request["tasks"][0]["data"]["image"] = local_url("zidane.jpg")
        response = client.post("/predict", json=request)
        assert response.status_code == 200
        assert [r["result"] for r in response.json()["results"]] == [[]]


def test_one_broken_task_does_not_spoil_the_batch(client: TestClient) -> None:
    tasks = [
        {"id": 1, "data": {"image": local_url("shapes_5000.png")}},
        {"id": 2, "data": {"image": local_url("missing.png")}},
        {"id": 3, "data": {}},
        {"id": 4, "data": {"image": local_url("../../etc/passwd")}},
        {"id": 5, "data": {"image": "file:///etc/passwd"}},
        "not a task",
        {"id": 7, "data": {"image": local_url("shapes_5001.png")}},
    ]
    response = client.post("/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"] and results[-1]["result"]
    assert results[1:-1] == [[]] * 5  # no prediction: Label Studio stores nothing and asks again later


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"tasks": {"id": 1}, "label_config": "<View/>"}', 400, "'tasks' must be a list"),
    (b'{"tasks": []}', 400, "labeling config"),
    (b'{"tasks": [], "label_config": "<View><Image"}', 400, "not valid XML"),
    (b'{"tasks": [], "label_config": 5}', 400, "must be a string"),
    (b'{"tasks": [], "label_config": "<View/>", "params": []}', 400, "'params' must be an object"),
    (b'{"tasks": [], "label_config": "<View/>", "score": NaN}', 400, "NaN"),
    (b"[" * 100000 + b"]" * 100000, 400, "nested"),
])
def test_bad_predict_bodies_get_4xx_json(client: TestClient, body: bytes, status: int, message: str) -> None:
    response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_oversized_body_gets_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_request_bytes=1000)
    response = client.post("/predict", content=b'{"tasks": [' + b" " * 2000 + b"]}")
    assert response.status_code == 413 and "MAX_REQUEST_BYTES" in response.json()["error"]


@pytest.mark.parametrize("model_path,message", [
    ("/etc/passwd", "refused"),
    ("../models/demo-shapes-det.pt", "refused"),
    ("~/x.pt", "refused"),
    ("no-such-model.pt", "not found"),
])
def test_refused_or_unknown_model_path_in_setup_and_predict(client: TestClient, model_path: str, message: str) -> None:
    config = ALL_CONTROLS_CONFIG.replace('<RectangleLabels name="rect"', f'<RectangleLabels name="rect" model_path="{model_path}"')
    response = client.post("/setup", json={"project": "9.1", "schema": config, "hostname": "", "access_token": ""})
    assert response.status_code == 400 and message in response.json()["error"]
    assert "model_path" in response.json()["error"]
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}],
                                            "label_config": config})
    assert response.status_code == 400 and model_path.split("/")[-1] in response.json()["error"]


def test_symlink_out_of_model_root_is_refused(tmp_path: Path, image_root: Path) -> None:
    model_root = tmp_path / "models"
    model_root.mkdir()
    (model_root / "evil.pt").symlink_to("/etc/passwd")
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(model_root))
    client = TestClient(create_app(settings, build_services(settings)))
    config = ALL_CONTROLS_CONFIG.replace('<RectangleLabels name="rect"', '<RectangleLabels name="rect" model_path="evil.pt"')
    response = client.post("/setup", json={"schema": config})
    assert response.status_code == 400 and "outside MODEL_ROOT" in response.json()["error"]


def test_basic_auth_guards_every_endpoint(make_client: Callable[..., TestClient]) -> None:
    client = make_client(basic_auth_user="annotator", basic_auth_pass="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"annotator:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"annotator:wrong").decode()}
    for method, path in [("get", "/"), ("get", "/health"), ("post", "/setup"), ("post", "/predict"),
                         ("post", "/webhook"), ("get", "/versions"), ("get", "/metrics")]:
        for headers in ({}, bad, {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"].startswith("authentication required")
    assert client.get("/health", headers=good).status_code == 200
    response = client.post("/predict", headers=good, content=json.dumps({"tasks": [], "label_config": ALL_CONTROLS_CONFIG}))
    assert response.status_code == 200 and response.json() == {"results": []}
