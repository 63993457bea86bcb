"""The status page (backend/serving/status_page.py) on a registry written by hand: what a browser gets at /,
Label Studio's JSON calls unchanged, the polled job progress, curves drawn by matplotlib, run files served
only from a version's run folder, and rollback only for who may steer the backend."""

from __future__ import annotations

import base64
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.serving.status_page import job_progress
from backend.settings import Settings
from backend.training.jobs import JobBoard
from backend.training.registry import ProjectModels
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR

PROJECT = "12.1700000000"  # a Label Studio project uid
DOM = "12-1700000000"  # the same in element ids
HISTORY = [{"epoch": e, "loss": 3.0 - 0.2 * e, "map50": 0.1 * e, "map": 0.07 * e} for e in range(1, 6)]
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def write_version(models: ProjectModels, version: int, promote: bool) -> None:
    card = {"version": version, "project": PROJECT, "project_title": "Scratches <b>",
            "status": "promoted" if promote else "rejected",
            "task": "detect", "classes": ["disc", "box"], "images": 28, "epochs": 5, "metric": "mAP50-95",
            "map_new": 0.61 + version / 100, "map_previous": 0.2, "per_class_new": {"disc": 0.7, "box": 0.52},
            "per_class_previous": {"disc": 0.0, "box": 0.0}, "history": HISTORY, "trained_on": "all pictures",
            "finished_at": "2026-12-06T20:00:00Z"}
    models.publish(version, MODELS_DIR / DEMO_DET, card, promote)
    run_dir = models.run_dir(version)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("confusion_matrix_normalized.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        cv2.imwrite(str(run_dir / name), np.full((40, 60, 3), 200, np.uint8))


@pytest.fixture()
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"  # the demo models, a project with two versions and a running job
    shutil.copytree(MODELS_DIR, root, ignore=lambda _, names: [n for n in names if n not in (DEMO_DET, DEMO_SEG)])
    models = ProjectModels(root, PROJECT)
    write_version(models, 1, promote=True)
    write_version(models, 2, promote=True)
    write_version(models, 3, promote=False)
    models.model_path(3).unlink()  # pruned (TRAIN_KEEP_VERSIONS): its card stays
    (root / "secret.png").write_bytes(b"not for the page")
    board = JobBoard(root)
    board.request(PROJECT, "test")
    job_id = board.state(PROJECT)["job_id"]
    board.start(PROJECT, job_id)
    board.progress(PROJECT, job_id, "training", epoch=5, epochs=20, phase_started_at=time.time() - 10,
                   history=HISTORY, metric="mAP50-95")
    return root


def make_client(root: Path, client_host: str, **values: object) -> TestClient:
    settings = Settings.load({"model_root": str(root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
                              "cache_dir": str(root.parent / "cache"), **values}, environ={})
    return TestClient(create_app(settings, build_services(settings)), client=(client_host, 50000))


@pytest.fixture()
def local(model_root: Path) -> Iterator[TestClient]:
    with make_client(model_root, "127.0.0.1") as client:
        yield client


def seconds_left_at_most(model_root: Path) -> float:
    """Epoch 5 of 20 began 10 s before the fixture returned: 30 s left then, 3 s more per second since."""
    return 3 * (time.time() - JobBoard(model_root).state(PROJECT)["phase_started_at"]) + 0.5


def test_a_browser_gets_the_page_and_label_studio_its_json(local: TestClient, model_root: Path) -> None:
    page = local.get("/", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "Project 12 · Scratches &lt;b&gt;" in text and "<b>p12-v2</b>" in text  # escaped title, served version
    left = re.search(r"training: epoch 5 of 20 · \d+:\d\d elapsed · about (\d+):(\d\d) left", text)
    assert left and 30 <= 60 * int(left[1]) + int(left[2]) <= seconds_left_at_most(model_root)
    assert f"id=per-class-{DOM}" in text and "<td>disc</td><td>0.700</td><td>0.000</td>" in text
    assert f"/status/runs/{PROJECT}/3/confusion_matrix_normalized.png" in text  # the newest version's and "val_batch0_pred.jpg" in text
    assert "data-version=3>" not in text and "model file pruned" in text
    assert "data-version=1>serve this version" in text and "<code>demo-shapes-det.pt</code>" in text
    for path, headers in (("/", {}), ("/", {"Accept": "*/*"}), ("/health", HTML), ("/", {"Accept": "application/json"})):
        answer = local.get(path, headers=headers)
        assert answer.headers["content-type"] == "application/json" and answer.json()["status"] == "UP"


def test_progress_is_polled_and_curves_are_drawn(local: TestClient, model_root: Path) -> None:
    (job,) = local.get("/status/jobs").json()
    assert (job["project"], job["state"], job["epoch"], job["epochs"]) == (PROJECT, "running", 5, 20)
    assert job["elapsed"] >= 0 and 30 <= job["left"] <= seconds_left_at_most(model_root)
    curves = local.get(f"/status/curves/{PROJECT}.png")
    assert curves.status_code == 200 and curves.content.startswith(b"\x89PNG")
    assert local.get("/status/curves/99.1700000000.png").status_code == 404
    assert local.get("/status/curves/..%2F12.png").status_code == 404


def test_progress_has_no_estimate_before_the_first_epoch() -> None:
    state = {"project": "1.1700000000", "state": "running", "phase": "training", "epoch": 0, "epochs": 10,
             "started_at": 100.0, "phase_started_at": 100.0}
    assert job_progress(state, now=130.0)["left"] is None and job_progress(state, now=130.0)["elapsed"] == 30.0
    assert job_progress(state | {"epoch": 2}, now=130.0)["left"] == 120.0


@pytest.mark.parametrize("path, status", [
    ("/status/runs/12.1700000000/2/val_batch0_pred.jpg", 200), ("/status/runs/12/2/val_batch0_pred.jpg", 400),
    ("/status/runs/12.1700000000/2/..%2F..%2F..%2Fsecret.png", 404), ("/status/runs/..%2F..%2Fsecret.png/2/a.png", 404),
    ("/status/runs/12.1700000000/2/..%5Csecret.png", 400), ("/status/runs/12.1700000000/2/p12-v2.pt", 400),
    ("/status/runs/12.1700000000/4/val_batch0_pred.jpg", 404), ("/status/runs/12.1700000000/2/.hidden.png", 400),
    ("/status/runs/12.1700000000/2/missing.png", 404)])
def test_run_files_come_only_from_a_versions_run_folder(local: TestClient, path: str, status: int) -> None:
    answer = local.get(path)
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.headers["content-type"] == "image/jpeg"
    else:
        assert answer.json()  # a JSON message (a path that leaves the route is the app's 404)


def test_rollback_from_this_machine_serves_the_earlier_version(local: TestClient, model_root: Path) -> None:
    answer = local.post("/status/rollback", json={"project": PROJECT, "version": 1})
    assert answer.status_code == 200 and answer.json()["served"] == "p12-v1"
    assert ProjectModels(model_root, PROJECT).promoted().version == 1
    assert local.post("/status/rollback", json={"project": PROJECT, "version": 7}).status_code == 404
    assert local.post("/status/rollback", content=b"project=12&version=2",
                      headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    assert local.post("/status/rollback", json={"project": "x", "version": 1}).status_code == 400
    assert local.post("/status/rollback", json={"project": 12, "version": 1}).status_code == 400  # a bare id


def test_rollback_is_refused_to_anonymous_clients_elsewhere(model_root: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with make_client(model_root, "10.1.2.3", allow_unauthenticated=True) as remote:
        assert remote.get("/", headers=HTML).status_code == 200  # open: reading is allowed, steering is not
        answer = remote.post("/status/rollback", json={"project": PROJECT, "version": 1})
    assert answer.status_code == 403 and "basic-auth" in answer.json()["error"]
    assert ProjectModels(model_root, PROJECT).promoted().version == 2
    assert any(r.levelname == "WARNING" and "403" in r.getMessage() for r in caplog.records)


def test_with_basic_auth_the_page_and_rollback_need_the_credentials(model_root: Path) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    with make_client(model_root, "10.1.2.3", basic_auth_user="ann", basic_auth_pass="s3cret") as remote:
        assert remote.get("/", headers=HTML).status_code == 401
        assert remote.post("/status/rollback", json={"project": PROJECT, "version": 1}).status_code == 401
        assert remote.get("/", headers=HTML | auth).status_code == 200
        assert remote.post("/status/rollback", json={"project": PROJECT, "version": 1}, headers=auth).status_code == 200
    assert ProjectModels(model_root, PROJECT).promoted().version == 1
