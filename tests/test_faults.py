"""Faults (issue 5): Label Studio unreachable or answering 401/404/500 for an image, a download that
times out, truncated images, corrupt checkpoints, a gunicorn worker killed mid-request.

Documented behaviour: a task whose image cannot be fetched or decoded gets no prediction (an empty list
in its place in `results`) and one warning line names the causes; the other tasks of the request are
answered; a broken model file is a 400 naming the setting; the server keeps serving.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import psutil
import pytest
import requests
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.settings import Settings
from bench.load import demo_settings, start_gunicorn, write_images
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.faulty_label_studio import TOKEN, FaultyLabelStudio
from tools.shapes_dataset import generate_image

DOWNLOAD_TIMEOUT_S = 3.0  # long enough for the good images on a busy CI machine


def shapes_png(seed: int = 5000) -> bytes:
    return cv2.imencode(".png", generate_image(seed).image)[1].tobytes()


def upload_task(task_id: int, name: str) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/1/{name}"}}


@pytest.fixture()
def label_studio() -> Iterator[FaultyLabelStudio]:
    with FaultyLabelStudio(shapes_png()) as fake:
        yield fake


def app_client(tmp_path: Path, **overrides: object) -> TestClient:
    values: dict[str, object] = {"model_root": str(MODELS_DIR), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
                                 "model_score_threshold": 0.25, "cache_dir": str(tmp_path / "cache"),
                                 "download_timeout": DOWNLOAD_TIMEOUT_S, "device": "cpu"}
    values.update(overrides)
    settings = Settings.load(values, environ={})
    return TestClient(create_app(settings, build_services(settings)), raise_server_exceptions=False)


def has_regions(result: dict | list) -> bool:
    """A prediction with regions; a task without prediction is an empty list."""
    return isinstance(result, dict) and bool(result["result"])


def predict(client: TestClient, tasks: list[dict]) -> list[dict]:
    response = client.post("/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    return results


# ---------------------------------------------------------------- image downloads


def test_each_failing_image_gets_an_empty_prediction_and_a_warning(label_studio: FaultyLabelStudio, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    client = app_client(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=TOKEN)
    label_studio.release.clear()
    names = ["ok-1.png", "unauthorized.png", "missing.png", "error.png", "slow.png", "truncated.png", "short.png",
             "reset.png", "ok-2.png"]
    caplog.set_level(logging.WARNING, logger="backend")
    results = predict(client, [upload_task(i, name) for i, name in enumerate(names)])
    warnings = "\n".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert [has_regions(result) for result in results] == [True] + [False] * 7 + [True], warnings
    assert results[1:8] == [[]] * 7
    (summary,) = warnings.splitlines()  # one line for the request, the first five reasons, then a count
    assert summary.startswith("7 of 9 tasks got no prediction: ") and summary.endswith("; and 2 more")
    for expected in ("task 1: downloading '/data/upload/1/unauthorized.png' failed with HTTP 401",
                     "task 2: downloading '/data/upload/1/missing.png' failed with HTTP 404",
                     "task 3: downloading '/data/upload/1/error.png' failed with HTTP 500",
                     f"task 4: downloading '/data/upload/1/slow.png' timed out after {DOWNLOAD_TIMEOUT_S:g} s",
                     "task 5: cannot decode image"):
        assert expected in summary
    caplog.clear()
    assert predict(client, [upload_task(6, "short.png"), upload_task(7, "reset.png")]) == [[], []]
    assert "task 6: cannot fetch '/data/upload/1/short.png'" in caplog.text
    assert "task 7: cannot fetch '/data/upload/1/reset.png'" in caplog.text


def test_a_failed_download_is_retried_on_the_next_request(label_studio: FaultyLabelStudio, tmp_path: Path) -> None:
    client = app_client(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=TOKEN)
    assert predict(client, [upload_task(1, "flaky.png")]) == [[]]
    assert has_regions(predict(client, [upload_task(1, "flaky.png")])[0])


def test_downloads_over_the_size_limit_are_abandoned(label_studio: FaultyLabelStudio, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    limit = 2 * len(label_studio.image)
    client = app_client(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=TOKEN,
                        max_download_bytes=limit)
    caplog.set_level(logging.WARNING, logger="backend")
    results = predict(client, [upload_task(1, "padded.png"), upload_task(2, "unsized-padded.png"),
                               upload_task(3, "ok.png")])
    assert [has_regions(result) for result in results] == [False, False, True]
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert (f"task 1: downloading '/data/upload/1/padded.png' was abandoned: it announces {4 * len(label_studio.image)} "
            f"bytes, more than MAX_DOWNLOAD_BYTES={limit}") in warnings
    assert f"task 2: downloading '/data/upload/1/unsized-padded.png' was abandoned: it is more than MAX_DOWNLOAD_BYTES={limit}" in warnings
    cached = {path.name for path in (tmp_path / "cache").rglob("*") if path.is_file()}
    assert not any("padded" in name for name in cached), cached
    # under the limit, the same padded file is an image like any other
    roomy = app_client(tmp_path / "roomy", label_studio_url=label_studio.url, label_studio_api_key=TOKEN,
                       max_download_bytes=4 * len(label_studio.image))
    assert all(has_regions(result) for result in predict(roomy, [upload_task(1, "padded.png"),
                                                                upload_task(2, "unsized-padded.png")]))


def test_unreachable_label_studio_answers_empty_predictions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FaultyLabelStudio(b"") as closed:
        url = closed.url  # the port is free again once the server is closed
    client = app_client(tmp_path, label_studio_url=url, label_studio_api_key=TOKEN)
    caplog.set_level(logging.WARNING, logger="backend")
    results = predict(client, [upload_task(1, "ok.png"), upload_task(2, "ok-2.png")])
    assert results == [[], []]
    assert "cannot fetch '/data/upload/1/ok.png': ConnectionError" in caplog.text
    assert client.get("/health").json()["status"] == "UP"


def test_setup_credentials_are_used_when_no_key_is_configured(label_studio: FaultyLabelStudio, tmp_path: Path) -> None:
    client = app_client(tmp_path)
    assert client.post("/setup", json={"project": "7.1", "schema": ALL_CONTROLS_CONFIG, "hostname": label_studio.url,
                                       "access_token": TOKEN}).status_code == 200
    response = client.post("/predict", json={"tasks": [upload_task(1, "ok.png")], "project": "7.1",
                                             "label_config": ALL_CONTROLS_CONFIG})
    assert response.json()["results"][0]["result"]


# ---------------------------------------------------------------- model files


@pytest.fixture()
def broken_models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    (root / "random.pt").write_bytes(b"\x80\x02" + os.urandom(8190))  # begins as a pickle does
    checkpoint = (MODELS_DIR / DEMO_DET).read_bytes()
    (root / "truncated.pt").write_bytes(checkpoint[: len(checkpoint) // 2])
    (root / DEMO_SEG).write_bytes((MODELS_DIR / DEMO_SEG).read_bytes())
    return root


@pytest.mark.parametrize("name", ["random.pt", "truncated.pt"])
def test_a_corrupt_checkpoint_is_a_400_naming_the_setting(broken_models: Path, tmp_path: Path, name: str) -> None:
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "shapes.png"), generate_image(5000).image)
    client = app_client(tmp_path, model_root=str(broken_models), yolo_det_model=name,
                        local_files_document_root=str(tmp_path / "images"))
    task = {"id": 1, "data": {"image": "/data/local-files/?d=shapes.png"}}
    for _ in range(2):  # a failed load is not cached as a model; it fails the same way again
        response = client.post("/predict", json={"tasks": [task], "label_config": ALL_CONTROLS_CONFIG})
        assert response.status_code == 400
        assert f"YOLO_DET_MODEL: cannot load YOLO model '{name}'" in response.json()["error"]
    seg_only = ALL_CONTROLS_CONFIG.replace('<RectangleLabels name="rect"', '<RectangleLabels name="rect" model_skip="true"')
    response = client.post("/predict", json={"tasks": [task], "label_config": seg_only})
    assert response.status_code == 200 and response.json()["results"][0]["result"]


def test_check_reports_a_corrupt_checkpoint(broken_models: Path) -> None:
    done = subprocess.run([sys.executable, "backend/_wsgi.py", "--check", "--with", f"model_root={broken_models}",
                           "yolo_det_model=random.pt", f"yolo_seg_model={DEMO_SEG}", "device=cpu"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 1
    assert "FAILED: YOLO_DET_MODEL: cannot load YOLO model 'random.pt'" in done.stdout
    assert f"ok: YOLO_SEG_MODEL={DEMO_SEG}" in done.stdout and "Traceback" not in done.stdout + done.stderr


# ---------------------------------------------------------------- a worker killed mid-request


def worker_talking_to(port: int, pids: list[int]) -> int | None:
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(conn.raddr and conn.raddr.port == port for conn in connections):
            return pid
    return None


@pytest.mark.slow
def test_gunicorn_replaces_a_killed_worker_and_keeps_serving(label_studio: FaultyLabelStudio, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images = write_images(tmp_path / "images")
    settings = {**demo_settings(tmp_path / "images", tmp_path / "cache", sam=False),
                "label_studio_url": label_studio.url, "label_studio_api_key": TOKEN}
    server = start_gunicorn(settings, 2, tmp_path / "gunicorn.log")
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        label_studio.release.clear()
        slow_task = upload_task(1, "slow.png")
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(requests.post, f"{server.url}/predict", timeout=60,
                                  json={"tasks": [slow_task], "label_config": ALL_CONTROLS_CONFIG})
            assert label_studio.slow_started.wait(60), "the slow download never reached the fake Label Studio"
            victim = worker_talking_to(label_studio.server.server_address[1], workers)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(requests.ConnectionError):
                pending.result(timeout=60)
        label_studio.release.set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (len(server.worker_pids()) == 2 and victim not in server.worker_pids()):
            time.sleep(0.5)
        assert len(server.worker_pids()) == 2 and victim not in server.worker_pids()
        tasks = [{"id": i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(images[:3])]
        for _ in range(4):
            response = requests.post(f"{server.url}/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG},
                                     timeout=120, headers={"Connection": "close"})
            assert response.status_code == 200
            assert all(result["result"] for result in response.json()["results"])
        assert requests.get(f"{server.url}/metrics", timeout=30).status_code == 200
    finally:
        server.stop()
