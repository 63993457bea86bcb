"""A training job that fails, whatever the reason, leaves an ERROR line with the reason in the backend's log:
a process killed by a signal (named), a job whose process is gone, an exception inside the job."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backend.training import run
from backend.training.dataset import DatasetError
from backend.training.jobs import JobBoard
from backend.training.run import JobSpec
from backend.training.service import TrainingService
from tests.conftest import demo_settings


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_job_process_killed_by_a_signal_is_an_error_naming_it(tmp_path: Path, image_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    killed = tmp_path / "killed-at-start"
    killed.write_text("#!/bin/sh\nkill -9 $$\n")
    killed.chmod(0o755)
    settings = demo_settings(image_root, tmp_path, model_root=str(tmp_path / "models"))
    service = TrainingService(settings)
    assert service.board.request("7.1700000000", "Start Training") == "queued"
    monkeypatch.setattr(sys, "executable", str(killed))  # the job's `python -m backend.training.run`
    service._run_child(JobSpec("7.1700000000", service.board.state("7.1700000000")["job_id"]))
    assert service.board.state("7.1700000000")["state"] == "failed"
    (message,) = errors(caplog)
    assert message.startswith("training project 7.1700000000 failed: the training process was killed by signal 9 (SIGKILL)")


def test_a_job_whose_process_is_gone_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    board = JobBoard(tmp_path)
    board.request("4.1", "first")
    with board.locked("4.1") as state:  # as a runner on this host that no longer exists would have left it
        state.update({"state": "running", "runner": {"host": socket.gethostname(), "pid": dead_pid()}})
    assert board.request("4.1", "again") == "queued"
    (message,) = errors(caplog)
    assert message.startswith("training project 4.1 failed: the training process ended without a result")


@pytest.mark.parametrize("problem", [DatasetError("the project has no labeling config"), RuntimeError("disk full")])
def test_a_job_that_raises_is_an_error_with_the_reason(tmp_path: Path, image_root: Path, problem: Exception,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object) -> tuple[str, str, dict]:
        raise problem

    monkeypatch.setattr(run, "_train_and_publish", broken)
    settings = demo_settings(image_root, tmp_path, model_root=str(tmp_path / "models"))
    board = JobBoard(settings.model_root_path)
    board.request("9.1700000000", "Start Training")
    run.run_job(settings, JobSpec("9.1700000000", board.state("9.1700000000")["job_id"]), board)
    assert board.state("9.1700000000")["state"] == "failed"
    assert any(m.startswith("training project 9.1700000000: failed: ") and str(problem) in m for m in errors(caplog))
