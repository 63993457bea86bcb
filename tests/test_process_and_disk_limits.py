"""Issue 21: training and /setup are bounded in processes and disk. At most TRAIN_CONCURRENCY trainers per MODEL_ROOT
(whichever worker takes the trigger), the others wait first come first served up to TRAIN_QUEUE_LENGTH and
are refused beyond; a trainer dies with the worker that started it and its job is failed at ERROR; only
TRAIN_KEEP_VERSIONS model files are kept."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.sources import label_studio
from backend.sources.label_studio import SetupStore
from backend.settings import Settings
from backend.training import service as service_module
from backend.training.jobs import JobBoard
from backend.training.registry import ProjectModels
from backend.training.retention import keep_versions
from backend.training.service import TrainingService
from backend.training.slots import TrainingSlots
from tests.conftest import DEMO_SEG, MODELS_DIR, REPO_ROOT, config_xml, demo_settings

PROJECT = "12.1700000000"


def test_slots_are_taken_first_come_first_served_across_workers(tmp_path: Path) -> None:
    worker_a, worker_b = TrainingSlots(tmp_path, 1, 2), TrainingSlots(tmp_path, 1, 2)  # two processes' views
    running = worker_a.wait("job-1", "1")
    assert worker_a.enqueue("job-2", "2") and worker_b.enqueue("job-3", "3")
    assert not worker_b.enqueue("job-4", "4")  # TRAIN_QUEUE_LENGTH=2 jobs already wait
    order: list[str] = []
    held = threading.Semaphore(0)

    def train(slots: TrainingSlots, job: str) -> None:
        with slots.wait(job, job[-1]):
            order.append(job)
            held.acquire(timeout=30)

    threads = [threading.Thread(target=train, args=(worker_b, "job-3")),
               threading.Thread(target=train, args=(worker_a, "job-2"))]
    for thread in threads:
        thread.start()
    time.sleep(2.5)
    assert order == []  # TRAIN_CONCURRENCY=1: job-1 holds the only slot
    running.close()
    deadline = time.monotonic() + 20
    while not order and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    assert order == ["job-2"]  # queued before job-3, and alone
    held.release()  # job-2 ends
    deadline = time.monotonic() + 20
    while len(order) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    held.release()
    for thread in threads:
        thread.join(30)
    assert order == ["job-2", "job-3"] and worker_a.waiting() == []


def test_concurrency_two_runs_two_jobs_at_once(tmp_path: Path) -> None:
    slots = TrainingSlots(tmp_path, 2, 5)
    first, second = slots.wait("a", "1"), slots.wait("b", "2")
    assert slots.enqueue("c", "3")
    taken: list[object] = []
    waiter = threading.Thread(target=lambda: taken.append(slots.wait("c", "3")))
    waiter.start()
    time.sleep(2.5)
    assert taken == []
    second.close()
    waiter.join(20)
    assert taken and taken[0] is not None
    first.close()
    taken[0].close()


def test_a_trigger_beyond_the_queue_is_refused_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.load({"model_root": str(tmp_path), "train_queue_length": 1}, environ={})
    started: list[list[str]] = []

    class FinishedChild:  # a training process that records nothing and exits
        returncode = 0

        def __init__(self, command: list[str], **kwargs: object) -> None:
            started.append(command)
            assert kwargs["env"]["BACKEND_TRAINING_SLOT_HELD"] == "1" and kwargs["pass_fds"]

        def communicate(self, data: bytes) -> None:
            pass

    monkeypatch.setattr(service_module.subprocess, "Popen", FinishedChild)
    outside = TrainingSlots(tmp_path, 1, 1).wait("elsewhere", "0")  # another host trains
    service = TrainingService(settings)
    assert service.trigger("1.1700000000", "test", None) == "queued"
    assert service.trigger("2.1700000000", "test", None) == "refused"
    refused = service.board.state("2.1700000000")
    assert refused["state"] == "refused" and refused["message"] == (
        "refused: 1 training jobs already wait for a free slot (TRAIN_CONCURRENCY=1, TRAIN_QUEUE_LENGTH=1); "
        "start the training again later")
    time.sleep(1.5)
    assert started == []  # waiting for the slot, without a process
    outside.close()
    deadline = time.monotonic() + 20
    while not started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(started) == 1


WORKER = textwrap.dedent("""
    import os, subprocess, sys, time
    env = {**os.environ, "BACKEND_TRAINING_PARENT": str(os.getpid())}
    child = subprocess.Popen([sys.executable, "-c", "from backend.training.slots import die_with_parent; "
                              "die_with_parent(); import time; time.sleep(120)"], env=env)
    print(child.pid, flush=True)
    time.sleep(120)
""")


def test_a_trainer_dies_with_the_worker_that_started_it(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    trainer = int(worker.stdout.readline())
    time.sleep(1.0)  # die_with_parent has run
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{trainer}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            os.waitpid(trainer, os.WNOHANG)
        except ChildProcessError:
            pass
    status = Path(f"/proc/{trainer}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_the_job_of_a_dead_trainer_is_failed_at_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = TrainingService(Settings.load({"model_root": str(tmp_path)}, environ={}))
    board = JobBoard(tmp_path)
    assert board.request(PROJECT, "test") == "queued"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with board.locked(PROJECT) as state:  # as a trainer killed with its worker leaves it
        state.update({"state": "running", "runner": {"host": os.uname().nodename, "pid": dead.pid}})
    caplog.set_level(logging.ERROR, logger="backend.training")
    (status,) = service.status()
    assert status["state"] == "failed" and "the serving worker that started it stopped" in status["message"]
    assert any("training project 12.1700000000 failed: the training process ended without a result" in record.getMessage()
               for record in caplog.records if record.levelno == logging.ERROR)


def test_only_train_keep_versions_model_files_are_kept(tmp_path: Path) -> None:
    models = ProjectModels(tmp_path, PROJECT)
    statuses = ["promoted", "rejected", "promoted", "rejected", "rejected", "promoted", "rejected"]
    for version, status in enumerate(statuses, 1):
        models.publish(version, MODELS_DIR / DEMO_SEG, {"version": version, "status": status, "task": "segment"},
                       status == "promoted")
        models.run_dir(version).mkdir(parents=True)
        (models.run_dir(version) / "results.png").write_bytes(b"plot")
    models.promote(3)  # a rollback: version 3 is served, 6 is newer
    assert keep_versions(models, 3) == [2, 4, 5, 7]  # rejected candidates first, oldest first
    assert [v for v in models.versions() if models.model_path(v).is_file()] == [1, 3, 6]
    assert [v for v in models.versions() if models.run_dir(v).is_dir()] == [1, 3, 6]  # the plots go with the model
    assert models.versions() == list(range(1, 8)) and models.next_version() == 8  # the cards stay
    assert keep_versions(models, 1) == [1, 6] and models.promoted().version == 3  # the served one always stays
    assert [v for v in models.versions() if models.model_path(v).is_file()] == [3]
    assert [v for v in models.versions() if models.run_dir(v).is_dir()] == [3]


# ---------------------------------------------------------------- /setup: sizes and the stored projects


@pytest.mark.parametrize("field, size, message", [
    ("access_token", 9000, "'access_token' is 9000 bytes, more than 8192"),
    ("hostname", 3000, "'hostname' is 3000 bytes, more than 2048"),
    ("schema", 6000, "'schema' is 6000 bytes, more than 5000 (MAX_LABEL_CONFIG_BYTES)")])
def test_setup_fields_over_their_limits_are_413(image_root: Path, tmp_path: Path, field: str, size: int, message: str) -> None:
    settings = demo_settings(image_root, tmp_path / "cache", max_label_config_bytes=5000)
    client = TestClient(create_app(settings, build_services(settings)))
    body = {"project": "3.1700000000", "schema": config_xml(), "hostname": "http://127.0.0.1:8080", "access_token": "t"}
    body[field] = body[field] + " " * (size - len(body[field])) if field == "schema" else "x" * size
    response = client.post("/setup", json=body)
    assert response.status_code == 413 and response.json()["error"] == message
    assert not list((tmp_path / "cache" / "setup").glob("project-*.json"))


def test_the_setup_store_keeps_the_most_recent_projects(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = SetupStore(tmp_path, max_projects=3)
    caplog.set_level(logging.WARNING)
    for project in range(1, 6):
        store.save(f"{project}.1700000000", "http://127.0.0.1:8080", "token", "<View/>")
        time.sleep(0.01)
    assert sorted(path.name for path in tmp_path.glob("project-*.json")) == [
        f"project-{project}.1700000000.json" for project in (3, 4, 5)]
    assert "forgot the /setup of project 1.1700000000 (MAX_SETUP_PROJECTS=3" in caplog.text
    monkeypatch.setattr(label_studio, "SETUP_STORE_MAX_BYTES", 1000)
    store.save("6.1700000000", "http://127.0.0.1:8080", "token", "<View>" + " " * 900 + "</View>")
    assert [path.name for path in tmp_path.glob("project-*.json")] == ["project-6.1700000000.json"]


# ---------------------------------------------------------------- CACHE_DIR/images: IMAGE_CACHE_MAX_GB


def test_the_image_cache_keeps_the_recently_used_within_its_budget(tmp_path: Path) -> None:
    """Downloads past IMAGE_CACHE_MAX_GB prune the least recently used files; a cache hit counts as a use."""
    from backend.sources.images import ImageFetcher, image_cache_budget
    from backend.sources.label_studio import AccessTokens
    from tests.fake_label_studio import LoopbackServer, QuietHandler

    class Pictures(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.reply(200, bytes(400_000))  # the cache does not decode: any 400 kB body will do

    settings = Settings.load({"cache_dir": str(tmp_path / "cache"), "image_cache_max_gb": 0.001}, environ={})  # 1 MB
    budget = image_cache_budget(settings)
    fetcher = ImageFetcher(settings.cache_path / "images", "", 10, 10**8, AccessTokens(timeout=10), 10**7,
                           address_policy=None, cache_budget=budget)
    with LoopbackServer(Pictures) as server:
        fetched = {name: fetcher.fetch(f"{server.url}/{name}.png", None, None) for name in "abc"}
        for age, name in enumerate("cba", 1):  # fetched a, b, c minutes ago: a is the least recently used
            os.utime(fetched[name], (time.time() - 60 * age,) * 2)
        assert fetcher.fetch(f"{server.url}/a.png", None, None) == fetched["a"]  # a hit: now a is the newest of them
        fetched["d"] = fetcher.fetch(f"{server.url}/d.png", None, None)  # 1.2 MB downloaded since the first scan
    kept = sorted(name for name, path in fetched.items() if path.exists())
    assert kept == ["a", "d"]  # b and c, the least recently used, went until 0.8 MB were left
    assert sum(path.stat().st_size for path in (settings.cache_path / "images").iterdir()) <= 1_000_000


def test_pruning_counts_and_deletes_only_the_cache_own_files(tmp_path: Path) -> None:
    """Files at another depth, hidden files and folders are neither counted nor deleted (a cache pointed by
    mistake at a folder of models loses at most what a cache would hold there)."""
    from backend.models.lru_folder import prune

    root = tmp_path / "cache"
    (root / "model-a").mkdir(parents=True)
    (root / "weights.pt").write_bytes(bytes(5000))  # not at depth 1: not the cache's
    for index in range(4):
        path = root / "model-a" / f"{index}.pt"
        path.write_bytes(bytes(1000))
        os.utime(path, (1000 + index,) * 2)
    (root / "model-a" / "nested").mkdir()
    assert prune(root, 2500, "test cache", ".pt", depth=1) == 2
    assert sorted(p.name for p in (root / "model-a").iterdir()) == ["2.pt", "3.pt", "nested"]
    assert (root / "weights.pt").exists()
    images = tmp_path / "images"
    (images / "folder").mkdir(parents=True)
    (images / "a.png").write_bytes(bytes(1000))
    (images / ".keep").write_bytes(bytes(1000))
    assert prune(images, 0, "test cache") == 1
    assert sorted(p.name for p in images.iterdir()) == [".keep", ".prune.lock", "folder"]
