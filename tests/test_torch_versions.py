"""A torchvision that does not match torch ("operator torchvision::nms does not exist" when SAM is built):
`--check` and start-up say so in one sentence with the pair to install, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.models.torch_versions import matching_torchvision, torchvision_mismatch
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.e2e.servers import free_port

SAM_WITH = [f"yolo_det_model={DEMO_DET}", f"yolo_seg_model={DEMO_SEG}", f"model_root={MODELS_DIR}", "device=cpu",
            "model_name=sam", "sam_checkpoint_file=demo-tiny-sam.pt"]


@pytest.fixture()
def broken_torchvision(tmp_path: Path) -> dict[str, str]:
    """An environment whose `import torchvision` fails as a torchvision built for another torch does."""
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def run_wsgi(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "backend/_wsgi.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_torchvision_for_each_torch_release() -> None:
    assert [matching_torchvision(v) for v in ("2.0.1", "2.5.1", "2.8.0+cpu")] == ["0.15.*", "0.20.*", "0.23.*"]


def test_other_runtime_errors_are_not_named_a_mismatch() -> None:
    assert torchvision_mismatch(RuntimeError("CUDA out of memory")) is None


def test_check_names_the_mismatch_in_one_sentence(broken_torchvision: dict[str, str]) -> None:
    done = run_wsgi(broken_torchvision, "--check", "--with", *SAM_WITH)
    assert done.returncode == 1
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert line.startswith("FAILED: torchvision ") and " does not match torch " in line
    assert "operator torchvision::nms does not exist" in line and "pip install --force-reinstall torch==" in line
    assert "Traceback" not in done.stdout + done.stderr


def test_start_up_names_the_mismatch_in_one_sentence(broken_torchvision: dict[str, str]) -> None:
    done = run_wsgi(broken_torchvision, "--port", str(free_port()), "--host", "127.0.0.1", "--with", *SAM_WITH)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: torchvision ")
    assert "Traceback" not in done.stdout + done.stderr


def test_gunicorn_names_the_mismatch_in_one_sentence_before_any_worker_starts(
        broken_torchvision: dict[str, str]) -> None:
    env = {**broken_torchvision, "PORT": str(free_port()), "HOST": "127.0.0.1", "WORKERS": "2",
           **{setting.split("=")[0].upper(): setting.split("=", 1)[1] for setting in SAM_WITH}}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn.conf.py", "backend._wsgi:app"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 3  # the master stops before any worker starts, not a loop of restarted workers
    assert "Booting worker" not in done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "error: torchvision " in output and "pip install --force-reinstall torch==" in output
    assert "Traceback" not in output
