"""TRAIN_QUEUE=redis://...: jobs go to a real redis-server and a real `rq worker` trains them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.sources.label_studio import Credentials
from backend.settings import Settings
from backend.training.registry import ProjectModels
from backend.training.rq import QUEUE_NAME
from backend.training.service import TrainingService
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.e2e.servers import free_port
from tests.training_stand_in import TOKEN, TrainingLabelStudio

TINY = {"train_epochs": 1, "train_imgsz": 160, "train_batch": 8, "train_min_images": 10, "device": "cpu"}


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    port = free_port()
    process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        from redis import Redis

        deadline = time.monotonic() + 30
        while True:
            try:
                Redis(port=port, socket_connect_timeout=1).ping()
                break
            except Exception:
                assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def queue_settings(tmp_path: Path, queue: str) -> Settings:
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    return Settings.load({"model_root": str(root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
                          "cache_dir": str(tmp_path / "cache"), "train_queue": queue, **TINY}, environ={})


@pytest.mark.slow
def test_rq_worker_trains_queued_jobs_and_the_backend_serves_them(redis_url: str, tmp_path: Path) -> None:
    settings = queue_settings(tmp_path, redis_url)
    service = TrainingService(settings)
    with TrainingLabelStudio(21, range(6000, 6016)) as ls:
        credentials = Credentials(ls.url, TOKEN)
        assert service.trigger("21.1700000000", "test", credentials) == "queued"
        assert service.trigger("21.1700000000", "test", credentials) == "coalesced"  # one more run after the queued one
        assert service.board.state("21.1700000000")["state"] == "queued"
        env = {**os.environ, **settings.as_environ()}
        worker = subprocess.run([str(Path(sys.executable).parent / "rq"), "worker", "--burst", "--url", redis_url,
                                 QUEUE_NAME], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-3000:]
    state = service.board.state("21.1700000000")
    assert state["state"] in ("promoted", "rejected") and state["version"] == 2, (state, worker.stderr[-3000:])
    models = ProjectModels(settings.model_root_path, "21.1700000000")
    assert models.versions() == [1, 2]  # the coalesced trigger ran once more, from the first run's model
    assert models.card(1)["status"] == "promoted" and models.card(2)["base_model"] == "p21-v1.pt"
    expected = 2 if state["state"] == "promoted" else 1
    assert service.status()[0]["promoted_version"] == f"p21-v{expected}"


def test_unreachable_queue_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    service = TrainingService(queue_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    assert service.trigger("22.1", "test", None) == "queued"
    state = service.board.state("22.1")
    assert state["state"] == "failed" and "cannot reach the training queue" in state["message"]
    assert service.trigger("22.1", "again", None) == "queued"  # a failed job does not block the next trigger


def test_a_queued_job_lives_as_long_as_its_rq_job(redis_url: str, tmp_path: Path) -> None:
    from redis import Redis
    from rq.job import Job

    service = TrainingService(queue_settings(tmp_path, redis_url))
    assert service.trigger("23.1", "test", None) == "queued"
    state = service.board.state("23.1")
    assert state["rq_job"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with service.board.locked("23.1") as locked:  # the serving worker that queued it restarted: the job still waits in redis
        locked["launcher"]["pid"] = dead.pid
    assert service.trigger("23.1", "test", None) == "coalesced"
    Job.fetch(state["rq_job"], connection=Redis.from_url(redis_url)).delete()  # as when its worker died and it expired
    assert service.trigger("23.1", "test", None) == "queued"
    assert service.board.state("23.1")["rq_job"] != state["rq_job"]


def test_a_job_queued_by_an_earlier_version_with_a_bare_id_is_dropped_with_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from backend.training.rq import run_queued_job

    monkeypatch.setenv("MODEL_ROOT", str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="backend.training"):
        run_queued_job(12, "old-job", "http://label-studio:8080", "token")  # as RQ calls a job queued before uids
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "names project '12', not a Label Studio project uid" in error and "Start Training" in error
    assert not (tmp_path / "projects").exists()  # nothing trained, nothing written
