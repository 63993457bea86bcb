"""Production serving (issue 5): gunicorn settings, THREADS, /metrics across workers, basic auth
details, and the bounded load run at a size that fits CI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.settings import Settings
from bench.load import demo_settings, start_gunicorn, write_images
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.faulty_label_studio import TOKEN, FaultyLabelStudio


def gunicorn_config(env: dict[str, str]) -> dict:
    """The values backend/gunicorn.conf.py sets, read the way gunicorn reads it (executed as a file)."""
    script = ("import json, os, runpy; c = runpy.run_path('backend/gunicorn.conf.py'); "
              "keys = ['bind', 'workers', 'threads', 'worker_class', 'timeout', 'graceful_timeout', 'keepalive', "
              "'preload_app', 'child_exit', 'on_starting']; "
              "print(json.dumps({k: (c[k] if not callable(c[k]) else 'hook') for k in keys} | "
              "{'metrics_dir': os.environ['PROMETHEUS_MULTIPROC_DIR']}))")
    base = {name: value for name, value in os.environ.items() if name not in {"WORKERS", "THREADS", "PROMETHEUS_MULTIPROC_DIR"}}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_gunicorn_config_follows_the_settings(tmp_path: Path) -> None:
    config = gunicorn_config({"WORKERS": "3", "THREADS": "2", "HOST": "127.0.0.1", "PORT": "9123",
                              "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert config["bind"] == "127.0.0.1:9123" and (config["workers"], config["threads"]) == (3, 2)
    assert config["worker_class"] == "uvicorn.workers.UvicornWorker"
    assert config["timeout"] >= 300 and config["preload_app"] is False
    assert config["child_exit"] == config["on_starting"] == "hook" and config["metrics_dir"] == str(tmp_path)


def test_gunicorn_config_defaults_and_overrides() -> None:
    config = gunicorn_config({"GUNICORN_TIMEOUT": "1200"})
    assert config["bind"].endswith(":9090") and config["workers"] == 1 and config["timeout"] == 1200
    assert Path(config["metrics_dir"]).name.startswith("ls-backend-metrics-")


@pytest.mark.parametrize("threads,concurrent", [(1, 1), (2, 2)])
def test_threads_caps_concurrent_model_calls(tmp_path: Path, threads: int, concurrent: int) -> None:
    settings = Settings.load({"model_root": str(MODELS_DIR), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
                              "cache_dir": str(tmp_path), "threads": threads, "download_timeout": 20}, environ={})
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/slow.png"}}], "label_config": ALL_CONTROLS_CONFIG,
            "project": "1.1700000000"}
    with FaultyLabelStudio(b"not used") as label_studio, \
            TestClient(create_app(settings, build_services(settings))) as client, \
            ThreadPoolExecutor(max_workers=2) as pool:
        client.post("/setup", json={"project": "1.1700000000", "schema": ALL_CONTROLS_CONFIG,
                                    "hostname": label_studio.url, "access_token": TOKEN})
        pending = [pool.submit(client.post, "/predict", json=body) for _ in range(2)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and label_studio.requests.count("slow.png") < concurrent:
            time.sleep(0.05)
        time.sleep(1.0)  # a request the cap should hold back would have arrived by now
        seen = label_studio.requests.count("slow.png")
        label_studio.release.set()
        assert all(future.result(timeout=120).status_code == 200 for future in pending)
    assert seen == concurrent


@pytest.fixture(scope="module")
def basic_auth_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = Settings.load({"basic_auth_user": "annotator", "basic_auth_pass": "s3cret",
                              "cache_dir": str(tmp_path_factory.mktemp("auth"))}, environ={})
    return TestClient(create_app(settings))


def test_services_are_built_at_startup_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.serving.app

    built_in: list[str] = []

    def recording_build(settings: Settings) -> backend.serving.app.Services:
        built_in.append(threading.current_thread().name)
        return build_services(settings)

    monkeypatch.setattr(backend.serving.app, "build_services", recording_build)
    settings = Settings.load({"cache_dir": str(tmp_path)}, environ={})
    with TestClient(create_app(settings)) as client:  # runs the app's startup, as a gunicorn worker does
        assert len(built_in) == 1 and built_in[0] != client.portal.call(lambda: threading.current_thread().name)
        assert client.get("/health").status_code == 200
    assert len(built_in) == 1


def test_shutdown_waits_for_model_loads_and_config_checks_are_bounded() -> None:
    """A process that exits while a daemon thread loads a model in torch aborts; the app's shutdown joins them
    (bounded), and at most 4 run at once (a /setup flood does not start a thread each)."""
    from backend.serving.services import BackgroundLoads

    release, finished = threading.Event(), []
    loads = BackgroundLoads(limit=4)

    def load(name: str) -> None:
        release.wait(10)
        finished.append(name)

    started = [loads.start(load, f"load-{i}", name="config-check") for i in range(5)]
    assert all(started[:4]) and started[4] is None
    threading.Timer(0.2, release.set).start()
    loads.join(10)
    assert sorted(finished) == [f"load-{i}" for i in range(4)]
    assert loads.start(load, "again", name="config-check") is not None  # finished threads free their places
    loads.join(10)


@pytest.mark.parametrize("header", [
    "Basic " + base64.b64encode(b"annotator:wrong").decode(), "Basic " + base64.b64encode(b"intruder:s3cret:x").decode(),
    "Basic " + base64.b64encode(b":").decode(), "Basic " + base64.b64encode("annotätor:s3cret".encode()).decode(),
    "Basic " + base64.b64encode(b"annotator").decode(), "basic", "Basic", "Basic ====", "Digest annotator:s3cret",
    "Basic " + base64.b64encode(b"annotator:s3cret").decode() + "x", "Token s3cret",
])
@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"),
                                         ("POST", "/webhook"), ("GET", "/versions"), ("GET", "/metrics"),
                                         ("GET", "/docs"), ("GET", "/nope")])
def test_basic_auth_refuses_wrong_credentials_everywhere(basic_auth_client: TestClient, header: str, method: str,
                                                         path: str) -> None:
    response = basic_auth_client.request(method, path, headers={"Authorization": header})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")


def test_basic_auth_accepts_colons_and_non_ascii_in_the_password(tmp_path: Path) -> None:
    settings = Settings.load({"basic_auth_user": "ü", "basic_auth_pass": "p:ä:ss", "cache_dir": str(tmp_path)}, environ={})
    client = TestClient(create_app(settings))
    good = "Basic " + base64.b64encode("ü:p:ä:ss".encode()).decode()
    assert client.get("/health", headers={"Authorization": good}).status_code == 200


# ---------------------------------------------------------------- under gunicorn


@pytest.mark.slow
def test_metrics_add_up_every_gunicorn_worker(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    write_images(tmp_path / "images")
    server = start_gunicorn(demo_settings(tmp_path / "images", tmp_path / "cache", sam=False), 2, tmp_path / "gunicorn.log")
    try:
        for _ in range(20):  # a new connection each time, so both workers answer some
            assert requests.get(f"{server.url}/versions", timeout=30, headers={"Connection": "close"}).status_code == 200
        text = requests.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()
    served = [line for line in text.splitlines() if line.startswith('backend_requests_total{endpoint="/versions"')]
    assert served and float(served[0].rsplit(" ", 1)[1]) == 20.0
    assert "backend_request_seconds_bucket" in text


@pytest.mark.slow
def test_bounded_load_run_has_no_failures_and_stable_memory(tmp_path: Path) -> None:
    report_path = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "-m", "bench.load", "--requests", "60", "--clients", "4", "--workers", "2",
                           "--max-seconds", "300", "--json", str(report_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(report_path.read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert (report["sent"], report["failed"], report["workers_replaced"]) == (60, 0, False)
    assert len(report["rss_mb"]) == 2 and all(worker["growth"] <= 0.10 for worker in report["rss_mb"].values())
    assert report["latency_ms"]["batch"]["p95"] > 0 and report["latency_ms"]["interactive"]["p50"] > 0
