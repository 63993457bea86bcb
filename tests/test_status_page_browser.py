"""The status page in a real browser (headless Chromium through Selenium) during a real, tiny training job:
the progress bar moves by itself, the curves and the per-class table appear when the job ends, and the
"serve this version" button rolls back so that the backend's next prediction names the earlier version.

Needs Debian's `chromium` and `chromium-driver` (CI installs them; .ci/run); skipped without them.
SCREENSHOT_DIR=docs/images saves the page while training and after it (docs/status-page.md shows them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn

from backend.serving.app import build_services, create_app
from backend.settings import Settings
from backend.training.registry import ProjectModels
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR
from tests.training_stand_in import CREATED_AT, TOKEN, TRAINING_CONFIG, TrainingLabelStudio, shapes_png

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").is_file() else None)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--window-size=1180,1600")
PROJECT = "21.1700000000"  # the stand-in's project 21 (tests/training_stand_in.py CREATED_AT)
DOM = "21-1700000000"  # the same in element ids
TINY = {"train_epochs": 6, "train_imgsz": 64, "train_batch": 8, "train_min_images": 10, "device": "cpu",
        "model_score_threshold": 0.01}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def backend(tmp_path: Path) -> Iterator[str]:
    """The backend on a loopback port with Label Studio's API stood in for (12 annotated pictures); its project 21
    is served by a hand-made v1 (the start-up model, which knows none of the project's labels)."""
    root, images = tmp_path / "models", tmp_path / "images"
    root.mkdir()
    images.mkdir()
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    (images / "probe.png").write_bytes(shapes_png(7000))
    ProjectModels(root, PROJECT).publish(1, MODELS_DIR / DEMO_SEG, {
        "version": 1, "project": PROJECT, "status": "promoted", "task": "segment", "classes": ["disc", "box", "wedge"],
        "images": 0, "metric": "mask mAP50-95", "map_new": 0.0, "map_previous": 0.0}, promote=True)
    with TrainingLabelStudio(21, range(6000, 6012)) as ls:
        settings = Settings.load({"model_root": str(root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
                                  "cache_dir": str(tmp_path / "cache"), "local_files_document_root": str(images),
                                  "label_studio_url": ls.url, "label_studio_api_key": TOKEN, **TINY}, environ={})
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, build_services(settings)), host="127.0.0.1",
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the backend did not start"
            time.sleep(0.1)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@pytest.fixture()
def browser() -> Iterator[object]:
    if not CHROMIUM or not DRIVER:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def predicted_version(url: str) -> str:
    body = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=probe.png"}}], "label_config": TRAINING_CONFIG,
            "project": PROJECT}
    answer = requests.post(f"{url}/predict", json=body, timeout=120)
    answer.raise_for_status()
    return answer.json()["results"][0]["model_version"]


def screenshot(driver: object, name: str) -> None:
    if target := os.environ.get("SCREENSHOT_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / name))


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.25):  # noqa: ANN001, ANN201 - any callable
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except Exception:  # noqa: BLE001 - the page reloads under us: stale elements, not yet there
            pass
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def paused_at_epoch(job_file: Path, epoch: int) -> Iterator[int]:
    """Stops the trainer (its pid on the job board) once its val-split run reports `epoch` or a later one that
    is not the last, yields that epoch, and lets the trainer go on."""
    def running_epoch() -> tuple[int, int] | None:
        state = json.loads(job_file.read_text())
        if state.get("phase") == "training" and epoch <= int(state.get("epoch") or 0) < int(state["epochs"]):
            return int(state["runner"]["pid"]), int(state["epoch"])
        return None

    pid, _ = wait_for(running_epoch, 600, f"the trainer at epoch {epoch}", interval_s=0.02)
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = running_epoch()  # the board may have moved on between the look and the stop
        assert stopped, f"the trainer passed its last epoch before it could be paused: {job_file.read_text()}"
        yield stopped[1]
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_page_follows_a_training_job_and_rolls_back(backend: str, browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    url = backend
    job_file = tmp_path / "models" / "projects" / PROJECT / "job.json"
    assert predicted_version(url).startswith(f"p21-v1@")
    browser.get(url + "/")
    assert "How it runs" in browser.page_source and "protected" in browser.page_source
    answer = requests.post(f"{url}/webhook", json={"action": "START_TRAINING",
                                                   "project": {"id": 21, "created_at": CREATED_AT}}, timeout=30)
    assert answer.status_code == 201, answer.text

    def job_text() -> str:
        return browser.find_element(By.ID, f"job-{DOM}").text

    def bar_width() -> float:
        return float(browser.execute_script(
            f"return document.querySelector('#job-{DOM} .fill').getBoundingClientRect().width"))

    # The page reloads itself when the job starts, then moves the bar and the text without reloading. A tiny job's
    # epochs are shorter than the page's 2 s poll, so the trainer is paused (SIGSTOP) at an epoch until the page
    # has shown it: the test sees each step however fast or slow the machine is.
    with paused_at_epoch(job_file, 1) as epoch:
        first = wait_for(lambda: bar_width() if f"epoch {epoch} of" in job_text() else None, 120,
                         f"epoch {epoch} on the page")
        assert "elapsed" in job_text()
        wait_for(lambda: browser.execute_script(f"return document.getElementById('curves-{DOM}').naturalWidth"), 60,
                 "the live curves")
        screenshot(browser, "status-page-training.png")
    with paused_at_epoch(job_file, epoch + 1) as later:
        wait_for(lambda: f"epoch {later} of" in job_text() and bar_width() > first, 120, "the progress bar to move")

    # The job ends: the page shows the new version served, its per-class figures, the curves and Ultralytics' plots.
    wait_for(lambda: browser.find_elements(By.ID, f"per-class-{DOM}"), 900, "the per-class table")
    assert f"p21-v2" in browser.find_element(By.ID, f"project-{DOM}").text
    rows = browser.find_elements(By.CSS_SELECTOR, f"#per-class-{DOM} tr")
    assert len(rows) >= 2 and any(name in rows[1].text for name in ("disc", "box", "wedge"))
    for image in browser.find_elements(By.CSS_SELECTOR, f"#project-{DOM} img"):
        wait_for(lambda image=image: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                             image), 30, f"the picture {image.get_attribute('src')}")
    assert predicted_version(url).startswith(f"p21-v2@")
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "status-page-done.png")

    # Rolling back from the page: the next prediction is the earlier version's.
    browser.find_element(By.CSS_SELECTOR, f"button.serve[data-version='1']").click()
    wait_for(lambda: "served" in browser.find_element(By.ID, f"version-{DOM}-1").text, 30, "v1 served on the page")
    assert predicted_version(url).startswith(f"p21-v1@")
