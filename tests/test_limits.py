"""Issue 21: /predict is bounded in time and memory whatever its tasks are, and one bad task never costs
the batch. Each test exceeds one bound: a download's total deadline, the request's deadline, a client
that disconnects, /health while downloads stall, the decoded pixels, the summary of per-task warnings,
a token refresh that fails, a model file that is not a model, and images Pillow opens in other modes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from backend.models.yolo import YoloModel
from backend.serving.app import build_services, create_app
from backend.sources.images import ImageError, ImageFetcher
from backend.sources.label_studio import AccessTokens
from backend.sources.url_policy import AddressPolicy
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, demo_settings, local_url
from bench.stalling_images import StallingImages
from tools.shapes_dataset import generate_image

SHAPES_PNG = cv2.imencode(".png", generate_image(5000).image)[1].tobytes()


@pytest.fixture()
def images() -> Iterator[StallingImages]:
    with StallingImages(SHAPES_PNG, trickle_s=0.2) as host:
        yield host


def app_client(image_root: Path, tmp_path: Path, **overrides: object) -> TestClient:
    settings = demo_settings(image_root, tmp_path / "cache", allow_private_urls=True, device="cpu", **overrides)
    return TestClient(create_app(settings, build_services(settings)), raise_server_exceptions=False)


def post_predict(client: TestClient, tasks: list[dict], config: str = ALL_CONTROLS_CONFIG) -> list:
    response = client.post("/predict", json={"tasks": tasks, "label_config": config})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    return results


def warning_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


# ---------------------------------------------------------------- time


def test_a_trickling_download_ends_at_its_total_deadline(images: StallingImages, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path, "", 1.5, 10**8, AccessTokens(1.5), 10**8, AddressPolicy(allow_private=True))
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"timed out after 1.5 s"):
        fetcher.fetch(f"{images.url}/trickle-1.png", 1, None)  # each byte within the per-read timeout
    assert time.monotonic() - started < 4.0
    assert fetcher.fetch(f"{images.url}/ok-1.png", 1, None).read_bytes() == SHAPES_PNG


def test_predict_answers_by_its_deadline_and_says_how_many_tasks_were_not_reached(
        images: StallingImages, image_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = app_client(image_root, tmp_path, predict_time_limit=2.0, download_timeout=60.0, batch_size=2,
                        fetch_workers=2)
    client.post("/predict", json={"tasks": [], "label_config": ALL_CONTROLS_CONFIG})  # loads the models
    tasks = [{"id": 0, "data": {"image": local_url("shapes_5000.png")}}] + \
            [{"id": i, "data": {"image": f"{images.url}/trickle-{i}.png"}} for i in range(1, 8)]
    caplog.set_level(logging.WARNING, logger="backend")
    started = time.monotonic()
    results = post_predict(client, tasks)
    assert time.monotonic() - started < 60  # a trickling image takes 6 minutes
    assert results[0]["result"] and results[1:] == [[]] * 7
    assert images.count("trickle") == 1  # the first group's; the others were never started
    assert warning_lines(caplog) == [
        f"1 of 8 tasks got no prediction: task 1: downloading '{images.url}/trickle-1.png' was stopped at the "
        "request's deadline",
        "6 of 8 tasks got no prediction: not reached within PREDICT_TIME_LIMIT=2 s; Label Studio asks for them "
        "again later"]


@pytest.fixture()
def served(image_root: Path, tmp_path: Path) -> Iterator[str]:
    """The app under uvicorn (a client can disconnect from it), with two threads for blocking work."""
    settings = demo_settings(image_root, tmp_path / "cache", allow_private_urls=True, device="cpu", threads=2,
                             batch_size=1, fetch_workers=1, download_timeout=2.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, build_services(settings)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_client_that_disconnects_stops_the_work(images: StallingImages, served: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="backend")
    tasks = [{"id": i, "data": {"image": f"{images.url}/stall-{i}.png"}} for i in range(30)]
    body = json.dumps({"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG}).encode()
    with socket.create_connection(("127.0.0.1", int(served.rsplit(":", 1)[1]))) as client:
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: backend\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 60
        while images.count("stall") < 2 and time.monotonic() < deadline:  # one task at a time, 2 s each
            time.sleep(0.1)
    at_disconnect = images.count("stall")
    time.sleep(6)  # three more tasks' worth of stalled downloads
    assert images.count("stall") <= at_disconnect + 1
    assert any("tasks got no prediction: the client disconnected" in line for line in warning_lines(caplog))


def test_health_answers_within_a_second_while_downloads_stall(images: StallingImages, served: str) -> None:
    stalled = [{"id": 1, "data": {"image": f"{images.url}/stall-1.png"}}]
    senders = [threading.Thread(target=requests.post, args=(f"{served}/predict",), daemon=True,
                                kwargs={"json": {"tasks": stalled * 3, "label_config": ALL_CONTROLS_CONFIG},
                                        "timeout": 60}) for _ in range(4)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while images.count("stall") < 2 and time.monotonic() < deadline:  # THREADS=2: both threads are waiting
        time.sleep(0.1)
    for _ in range(3):
        started = time.monotonic()
        assert requests.get(f"{served}/health", timeout=10).json()["status"] == "UP"
        assert time.monotonic() - started < 1.0
    images.release.set()
    for sender in senders:
        sender.join(60)


# ---------------------------------------------------------------- memory


def boxes(results: list[dict]) -> list[list[tuple]]:
    """Each task's rectangles, (label, x, y, width, height), for comparing runs (region ids are random)."""
    return [[(r["value"]["rectanglelabels"][0], *(pytest.approx(r["value"][k], abs=0.05) for k in ("x", "y", "width", "height")))
             for r in result["result"] if r["type"] == "rectanglelabels"] for result in results]


def test_tasks_are_decoded_in_groups_under_the_pixel_budget(image_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = [{"id": i, "data": {"image": local_url(f"shapes_{5000 + i}.png")}} for i in range(5)]
    expected = post_predict(app_client(image_root, tmp_path / "whole"), tasks)
    batches: list[int] = []
    original = YoloModel.prepare
    monkeypatch.setattr(YoloModel, "prepare", lambda self, images: batches.append(len(images)) or original(self, images))
    one_image = 160 * 160  # the shapes images' size: each group holds two
    got = post_predict(app_client(image_root, tmp_path / "grouped", max_decoded_pixels=2 * one_image), tasks)
    assert boxes(got) == boxes(expected) and all(boxes(expected))
    assert batches == [2, 2, 2, 2, 1, 1]  # det and seg model per group: tasks 0-1, 2-3, 4
    batches.clear()
    small = post_predict(app_client(image_root, tmp_path / "small", max_decoded_pixels=one_image // 2), tasks)
    assert boxes(small) == boxes(expected)  # an image over the budget is predicted alone
    assert batches == [1] * 10


# ---------------------------------------------------------------- one bad task never costs the batch


def test_warnings_of_a_request_are_one_line(image_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = app_client(image_root, tmp_path)
    tasks = [{"id": i, "data": {}} for i in range(5000)] + [{"id": 5000, "data": {"image": local_url("shapes_5000.png")}}]
    caplog.set_level(logging.WARNING, logger="backend")
    results = post_predict(client, tasks)
    assert results[:-1] == [[]] * 5000 and results[-1]["result"]
    (line,) = warning_lines(caplog)
    assert line == ("5000 of 5001 tasks got no prediction: " + "; ".join(
        f"task {i}: task data has no 'image' image URL" for i in range(5)) + "; and 4995 more")


def personal_access_token() -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part({'alg': 'HS256'})}.{part({'token_type': 'refresh', 'exp': 4102444800})}.c2ln"


def test_a_failing_token_refresh_costs_only_the_tasks_that_need_it(image_root: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nothing listens on: Label Studio is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = app_client(image_root, tmp_path, label_studio_url=down, label_studio_api_key=personal_access_token())
    caplog.set_level(logging.WARNING, logger="backend")
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}, {"id": 2, "data": {"image": local_url("shapes_5000.png")}},
             {"id": 3, "data": {"image": "/data/upload/1/b.png"}}]
    results = post_predict(client, tasks)
    assert results[0] == [] and results[2] == [] and results[1]["result"]
    (line,) = warning_lines(caplog)
    assert line.startswith(f"2 of 3 tasks got no prediction: task 1: cannot refresh the personal access token at {down}: "
                           "ConnectionError; task 3: cannot refresh")


def test_a_model_file_that_is_not_a_model_is_a_400_naming_the_control_and_file(image_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "labels.json").write_text('{"not": "a model"}')
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    client = app_client(image_root, tmp_path, model_root=str(root), yolo_det_model="labels.json")
    setup = client.post("/setup", json={"project": "3.1", "schema": ALL_CONTROLS_CONFIG})
    assert setup.status_code == 400
    assert setup.json()["error"].startswith("<RectangleLabels name=\"rect\">: YOLO_DET_MODEL: 'labels.json' is not a model")
    config = ALL_CONTROLS_CONFIG.replace('<PolygonLabels name="poly"', '<PolygonLabels name="poly" model_path="labels.json"') \
        .replace('<RectangleLabels name="rect"', f'<RectangleLabels name="rect" model_path="{DEMO_DET}"')
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}],
                                             "label_config": config})
    assert response.status_code == 400
    assert "model_path on <PolygonLabels name=\"poly\">: 'labels.json' is not a model" in response.json()["error"]


# ---------------------------------------------------------------- decoding


def decoded(body: bytes, tmp_path: Path) -> np.ndarray:
    return ImageFetcher(tmp_path, "", 5.0, 10**8, AccessTokens(5.0), 10**8).decode(io.BytesIO(body))


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def test_16_bit_and_float_images_are_scaled_as_a_browser_shows_them(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    assert decoded(encoded(Image.fromarray(values), "PNG"), tmp_path)[0, :, 0].tolist() == [0, 1, 128, 255]
    floats = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    pixels = decoded(encoded(Image.fromarray(floats, "F"), "TIFF"), tmp_path)
    assert pixels.shape == (1, 4, 3) and pixels[0, :, 0].tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("body, kind", [(b"", "empty (0 bytes)"), (b"<!DOCTYPE html><html>login</html>", "text/html"),
                                        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml")])
def test_a_response_that_is_not_an_image_says_so(tmp_path: Path, body: bytes, kind: str) -> None:
    import ultralytics  # noqa: F401 - its Image.open tries an optional HEIF package for unknown files

    with pytest.raises(ImageError) as raised:
        decoded(body, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"cannot decode image: the content is {kind}") and message.endswith("not a raster image")
    assert "module" not in message and "heif" not in message.lower()
