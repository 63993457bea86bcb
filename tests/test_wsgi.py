"""The user's commands: `label-studio-ml start backend ...` and `python backend/_wsgi.py --check`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.label_config import parse_label_config
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT

DEMO_WITH = [f"yolo_det_model={DEMO_DET}", f"yolo_seg_model={DEMO_SEG}", f"model_root={MODELS_DIR}"]


def run_wsgi(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "backend/_wsgi.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": ""})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_check_loads_configured_models() -> None:
    done = run_wsgi("--check", "--with", *DEMO_WITH, "device=cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok: YOLO_DET_MODEL={DEMO_DET} (detect, 3 classes" in done.stdout
    assert f"ok: YOLO_SEG_MODEL={DEMO_SEG} (segment, 3 classes" in done.stdout


def test_check_reports_a_missing_model_by_setting() -> None:
    done = run_wsgi("--check", "--with", *DEMO_WITH, "yolo_seg_model=nope.pt")
    assert done.returncode == 1
    assert "FAILED: YOLO_SEG_MODEL" in done.stdout and "nope.pt" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--with", "bogus=1"], "unknown setting 'bogus'"),
    (["--with", "novalue"], "key=value"),
    (["--with", "batch_size=many"], "BATCH_SIZE"),
])
def test_bad_arguments_exit_with_a_message(args: list[str], message: str) -> None:
    done = run_wsgi(*args, "--check")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_label_studio_ml_start_serves_the_backend(tmp_path: Path) -> None:
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CACHE_DIR": str(tmp_path)}
    server = subprocess.Popen([str(bin_dir / "label-studio-ml"), "start", "backend", "--port", str(port),
                               "--with", *DEMO_WITH], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "backend did not start in 90 s"
                time.sleep(0.5)
        assert response.json()["status"] == "UP"
        assert re.fullmatch(r"demo-shapes-det@[0-9a-f]{7},demo-shapes-seg@[0-9a-f]{7}", response.json()["model_version"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_shipped_label_config_is_ready_for_the_default_models() -> None:
    config = parse_label_config((REPO_ROOT / "label_config.xml").read_text())
    by_name = {c.name: c for c in config.controls}
    assert {c.tag for c in config.prediction_controls} == {"RectangleLabels", "PolygonLabels", "BrushLabels"}
    assert all(len(c.labels) == 80 for c in config.controls)
    assert by_name["rect"].smart and by_name["keypoint"].smart and by_name["keypoint"].tag == "KeyPointLabels"
    import ultralytics
    import yaml

    coco = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/datasets/coco.yaml").read_text())["names"]
    assert list(by_name["rect"].labels) == [coco[i] for i in sorted(coco)]
