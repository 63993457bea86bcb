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

from formats.label_config import parse_label_config
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


def start_wrapper(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`label-studio-ml start backend ARGS` in its own session, output into a file (a pipe could fill up)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": ""}
    log = tmp_path / "wrapper.log"
    with log.open("wb") as out:
        wrapper = subprocess.Popen([str(bin_dir / "label-studio-ml"), "start", "backend", *args], cwd=REPO_ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return wrapper, log


def wait_for_health(port: int, wrapper: subprocess.Popen, log: Path) -> httpx.Response:
    deadline = time.time() + 90
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        except httpx.TransportError:
            assert wrapper.poll() is None, log.read_text()
            assert time.time() < deadline, "backend did not start in 90 s"
            time.sleep(0.5)


def live_processes_in_group(group: int) -> list[str]:
    """Command lines of the processes in process group `group` that are not zombies (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            found.append(command)
    return found


def test_label_studio_ml_start_serves_the_backend(tmp_path: Path) -> None:
    port = free_port()
    wrapper, log = start_wrapper(tmp_path, "--port", str(port), "--with", *DEMO_WITH)
    try:
        response = wait_for_health(port, wrapper, log)
        assert response.json()["status"] == "UP"
        assert re.fullmatch(r"demo-shapes-det@[0-9a-f]{7},demo-shapes-seg@[0-9a-f]{7}", response.json()["model_version"])
        assert f"serving on http://0.0.0.0:{port}" in log.read_text()
    finally:
        os.killpg(wrapper.pid, 15)
        wrapper.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_killing_the_wrapper_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    wrapper, log = start_wrapper(tmp_path, "--host", "127.0.0.1", "--port", str(port), "--with", *DEMO_WITH)
    try:
        assert wait_for_health(port, wrapper, log).status_code == 200
        wrapper.kill()  # SIGKILL: the wrapper cannot pass anything on to its children
        wrapper.wait(timeout=10)
        deadline = time.time() + 5
        while live_processes_in_group(wrapper.pid):
            assert time.time() < deadline, f"still running: {live_processes_in_group(wrapper.pid)}\n{log.read_text()}"
            time.sleep(0.2)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert f"label-studio-ml (pid {wrapper.pid}) exited: stopping the server" in log.read_text()
    finally:
        try:
            os.killpg(wrapper.pid, 9)
        except ProcessLookupError:
            pass


def test_a_port_in_use_is_an_error_before_serving(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_wsgi("--host", "127.0.0.1", "--port", port, "--with", *DEMO_WITH, timeout=60)
        wrapper, log = start_wrapper(tmp_path, "--host", "127.0.0.1", "--port", port, "--with", *DEMO_WITH)
        wrapper.wait(timeout=60)
    message = f"error: port {port} on 127.0.0.1 is already in use"
    assert done.returncode == 1 and message in done.stderr, done.stdout + done.stderr
    assert "serving on" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    # label-studio-ml itself exits 0 whatever its child did; the output says which command keeps the status
    output = log.read_text()
    assert message in output and "serving on" not in output
    assert "exit status 1, which label-studio-ml does not pass on" in output and "`python backend/_wsgi.py --host" in output


def test_a_failed_check_through_label_studio_ml_names_the_command_that_keeps_the_status(tmp_path: Path) -> None:
    wrapper, log = start_wrapper(tmp_path, "--check", "--with", *DEMO_WITH, "yolo_seg_model=nope.pt")
    wrapper.wait(timeout=120)
    output = log.read_text()
    assert "FAILED: YOLO_SEG_MODEL" in output
    assert "exit status 1, which label-studio-ml does not pass on (it exits 0); `python backend/_wsgi.py --check" in output


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
