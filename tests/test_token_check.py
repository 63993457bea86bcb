"""What a new user of Label Studio 1.23 sees when something between it and the backend is wrong: a refused
token is an ERROR with its fix at /setup (and in /health, and on each 401 download), a URL with a path is a
WARNING with the root URL hint, and label_studio_sdk's per-download chatter stays out of the log."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from tests.conftest import demo_settings, load_protocol_fixture, ultralytics_asset
from tests.e2e.servers import free_port
from tests.fake_label_studio import FakeLabelStudio

TOKEN = "0123456789abcdef0123456789abcdef01234567"
REFUSED = "a-legacy-token-of-an-organization-without-legacy-tokens"
ZIDANE_KEY = "upload/2/f6dad7a2-zidane.jpg"
WHOAMI = "/api/current-user/whoami"


@pytest.fixture()
def fake() -> FakeLabelStudio:
    with FakeLabelStudio({ZIDANE_KEY: ultralytics_asset("zidane.jpg").read_bytes()}, TOKEN) as server:
        yield server


def new_client(image_root: Path, tmp_path: Path, **overrides: object) -> TestClient:
    settings = demo_settings(image_root, tmp_path, **overrides)
    return TestClient(create_app(settings, build_services(settings)))


def setup(client: TestClient, hostname: str, token: str) -> None:
    body = {**load_protocol_fixture("setup.json"), "hostname": hostname, "access_token": token}
    assert client.post("/setup", json=body).status_code == 200


def wait_for_record(caplog: pytest.LogCaptureFixture, level: int, text: str, seconds: float = 20.0) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {logging.getLevelName(level)} containing {text!r}: {[r.getMessage() for r in caplog.records]}")


def whoami_calls(fake: FakeLabelStudio) -> int:
    return sum(path == WHOAMI for path, _ in fake.requests)


def test_a_refused_setup_token_is_an_error_with_the_fix(image_root: Path, tmp_path: Path, fake: FakeLabelStudio,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    client = new_client(image_root, tmp_path)
    setup(client, fake.url, REFUSED)
    message = wait_for_record(caplog, logging.ERROR, "refuses the token Label Studio sent in /setup")
    assert f"Label Studio at {fake.url}" in message and "HTTP 401" in message
    assert "Account & Settings -> Personal Access Token" in message
    assert f"LABEL_STUDIO_URL={fake.url} LABEL_STUDIO_API_KEY=<that token>" in message
    assert "Legacy Tokens" in message
    assert client.get("/health").json()["label_studio_token_refused"] == {fake.url: message}

    response = client.post("/predict", json=load_protocol_fixture("predict-batch.json"))
    assert response.status_code == 200
    (download,) = [r.getMessage() for r in caplog.records if "failed with HTTP 401" in r.getMessage()]
    assert "Label Studio refused the backend's token" in download and "Personal Access Token" in download

    setup(client, fake.url, REFUSED)  # Label Studio sends /setup often: the answer is kept a while
    time.sleep(0.5)
    assert whoami_calls(fake) == 1


def test_an_accepted_token_is_asked_once_per_host_and_token(image_root: Path, tmp_path: Path, fake: FakeLabelStudio,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = new_client(image_root, tmp_path)
    setup(client, fake.url, TOKEN)
    wait_for_record(caplog, logging.INFO, f"Label Studio at {fake.url} accepts the token Label Studio sent in /setup")
    setup(client, fake.url, TOKEN)
    time.sleep(0.5)
    assert whoami_calls(fake) == 1
    assert (fake.requests[0][1]) == f"Token {TOKEN}"
    assert client.get("/health").json()["label_studio_token_refused"] == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "token" in r.getMessage()]


def test_the_settings_token_is_the_one_checked(image_root: Path, tmp_path: Path, fake: FakeLabelStudio,
                                              caplog: pytest.LogCaptureFixture) -> None:
    client = new_client(image_root, tmp_path, label_studio_url=fake.url, label_studio_api_key=REFUSED)
    setup(client, "http://localhost:1", TOKEN)  # settings win over what /setup says
    message = wait_for_record(caplog, logging.ERROR, "refuses LABEL_STUDIO_API_KEY")
    assert f"Label Studio at {fake.url}" in message


def test_an_unreachable_label_studio_is_a_warning_naming_label_studio_url(image_root: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    client = new_client(image_root, tmp_path)
    setup(client, f"http://localhost:{free_port()}", TOKEN)
    message = wait_for_record(caplog, logging.WARNING, "cannot reach Label Studio at http://localhost:")
    assert "LABEL_STUDIO_URL" in message and "Docker" in message
    assert client.get("/health").json()["label_studio_token_refused"] == {}


def test_a_backend_url_with_a_path_is_a_warning_with_the_root_url_hint(client: TestClient,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert client.post("/predict/predict", json={}).status_code == 404
    assert client.get("/predict").status_code == 405
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("POST /predict/predict: no such endpoint (HTTP 404)") and "root URL" in m for m in messages)
    assert any(m.startswith("GET /predict: method not allowed (HTTP 405)") and "root URL" in m for m in messages)


def test_label_studio_sdk_download_chatter_stays_out_of_the_log(image_root: Path, tmp_path: Path,
                                                               fake: FakeLabelStudio,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The SDK logs a `localhost` docker WARNING and "Download failed for proxy URL" on downloads that succeed."""
    caplog.set_level(logging.DEBUG)
    client = new_client(image_root, tmp_path)
    setup(client, fake.url.replace("127.0.0.1", "localhost"), TOKEN)
    response = client.post("/predict", json=load_protocol_fixture("predict-batch.json"))
    assert response.status_code == 200
    assert any(ZIDANE_KEY in path for path, _ in fake.requests)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "task 2" in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith("label_studio_sdk")]
