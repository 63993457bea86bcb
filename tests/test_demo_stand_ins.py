"""Offline first start (backend/prediction/demo_stand_ins.py): default YOLO models that cannot be downloaded are
served by the shipped demo models, with a WARNING; models chosen on purpose never are. Downloads are made to
fail here (no network in the tests), as they do in a container without internet."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.models.cache import ModelCache, ModelPathError
from backend.prediction.demo_stand_ins import DemoFallbackYoloModels
from backend.serving.app import build_services, create_app
from backend.serving.cli import check_models
from backend.settings import Settings
from backend.training.model_choice import ModelChoice
from tests.conftest import MODELS_DIR, config_xml, local_url

DEMO_FILES = ("demo-shapes-det.pt", "demo-shapes-seg.pt", "demo-shapes-pose.pt")
SHAPE_LABELS = '<Label value="circle"/><Label value="square"/><Label value="triangle"/>'


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ultralytics' download of a missing checkpoint fails as it does without internet; the names asked for."""
    import ultralytics.utils.downloads

    asked: list[str] = []

    def no_internet(url: str, file: str | Path | None = None, **kwargs: object) -> None:
        asked.append(Path(url).name)
        raise ConnectionError(f"Download failure for {url}. Environment may be offline.")

    monkeypatch.setattr(ultralytics.utils.downloads, "safe_download", no_internet)
    return asked


def model_root(tmp_path: Path, files: tuple[str, ...] = DEMO_FILES) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in files:
        shutil.copy(MODELS_DIR / name, root / name)
    return root


def settings_for(root: Path, tmp_path: Path, **overrides: object) -> Settings:
    return Settings.load({"model_root": str(root), "cache_dir": str(tmp_path / "cache"), "device": "cpu", **overrides},
                         environ={})


def stand_in_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "demo model" in r.getMessage()]


def test_default_models_that_cannot_be_downloaded_are_served_by_the_demo_models(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, offline: list[str]) -> None:
    root = model_root(tmp_path)
    services = build_services(settings_for(root, tmp_path))
    with caplog.at_level(logging.WARNING):
        det, seg = (services.yolo.get(choice) for choice in services.default_choices())
        again = services.yolo.get(ModelChoice("yolov8n.pt", "YOLO_DET_MODEL"))
        pose = services.yolo.get(ModelChoice("yolov8n-pose.pt", "YOLO_POSE_MODEL", task_model=True))
    assert (det.path, seg.path, pose.path) == (root / "demo-shapes-det.pt", root / "demo-shapes-seg.pt",
                                               root / "demo-shapes-pose.pt")
    assert again is det and offline == ["yolov8n.pt", "yolov8n-seg.pt", "yolov8n-pose.pt"]  # tried once each
    assert services.yolo.path(ModelChoice("yolov8n.pt", "YOLO_DET_MODEL")) == root / "demo-shapes-det.pt"
    (det_warning, seg_warning, pose_warning) = stand_in_warnings(caplog)
    assert det_warning.startswith("YOLO_DET_MODEL is yolov8n.pt (the default), which is not in MODEL_ROOT")
    assert "could not be downloaded" in det_warning and "Environment may be offline" in det_warning
    assert "serving the demo model demo-shapes-det.pt instead" in det_warning
    assert det_warning.endswith("set YOLO_DET_MODEL to your model's file")
    assert "YOLO_SEG_MODEL" in seg_warning and "YOLO_POSE_MODEL" in pose_warning


def test_predictions_and_versions_come_from_the_demo_models(tmp_path: Path, image_root: Path) -> None:
    root = model_root(tmp_path)
    settings = settings_for(root, tmp_path, local_files_document_root=str(image_root), model_score_threshold=0.25)
    config = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>',
                        f'<PolygonLabels name="poly" toName="image">{SHAPE_LABELS}</PolygonLabels>')
    with TestClient(create_app(settings, build_services(settings))) as client:
        response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}],
                                                 "label_config": config})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert {region["type"] for region in result["result"]} == {"rectanglelabels", "polygonlabels"}
    assert result["model_version"].startswith("demo-shapes-det@") and ",demo-shapes-seg@" in result["model_version"]


def test_the_check_serves_the_demo_models_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_models(settings_for(model_root(tmp_path), tmp_path)) == 0
    out = capsys.readouterr().out
    assert "ok: YOLO_DET_MODEL=yolov8n.pt -> demo-shapes-det.pt (detect, 3 classes" in out
    assert "ok: YOLO_SEG_MODEL=yolov8n-seg.pt -> demo-shapes-seg.pt (segment, 3 classes" in out


def test_without_the_demo_models_the_check_fails_naming_both_settings(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert check_models(settings_for(model_root(tmp_path, ()), tmp_path)) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAILED")]
    assert [line.split(":")[1].strip() for line in failed] == ["YOLO_DET_MODEL", "YOLO_SEG_MODEL"]
    assert all("no internet?" in line for line in failed)


@pytest.mark.parametrize("choice", [
    ModelChoice("mine.pt", "YOLO_DET_MODEL"),  # a model named on purpose
    ModelChoice("yolov8n.pt", 'model_path on <RectangleLabels name="rect">'),  # the default's name, from a config
])
def test_a_model_chosen_on_purpose_is_never_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     choice: ModelChoice) -> None:
    services = build_services(settings_for(model_root(tmp_path), tmp_path))
    with caplog.at_level(logging.WARNING), pytest.raises(ModelPathError, match=choice.path_value):
        services.yolo.get(choice)
    assert not stand_in_warnings(caplog)


def test_a_default_model_that_is_there_but_broken_is_an_error(tmp_path: Path) -> None:
    root = model_root(tmp_path)
    (root / "yolov8n.pt").write_bytes(b"not a checkpoint")
    services = build_services(settings_for(root, tmp_path))
    with pytest.raises(ModelPathError, match="YOLO_DET_MODEL"):
        services.yolo.get(ModelChoice("yolov8n.pt", "YOLO_DET_MODEL"))


def test_a_path_asked_before_any_load_names_the_model_that_will_answer(tmp_path: Path, offline: list[str]) -> None:
    """A model version can be computed before the first load: it must name the demo model, not the default."""
    root = model_root(tmp_path)
    models = DemoFallbackYoloModels(settings_for(root, tmp_path), ModelCache(), "cpu")
    assert models.path(ModelChoice("yolov8n-seg.pt", "YOLO_SEG_MODEL")) == root / "demo-shapes-seg.pt"
    assert offline == ["yolov8n-seg.pt"]


def test_a_path_asked_while_another_thread_loads_waits_for_its_answer(tmp_path: Path, offline: list[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up thread loads the defaults while a first /predict computes its model version: the version
    must wait for that load's answer (the race CI once met: 'yolov8n,demo-shapes-seg@...')."""
    import threading
    import time

    import ultralytics.utils.downloads

    slow_offline = ultralytics.utils.downloads.safe_download

    def slow(url: str, file: str | Path | None = None, **kwargs: object) -> None:
        time.sleep(0.5)
        slow_offline(url, file, **kwargs)

    monkeypatch.setattr(ultralytics.utils.downloads, "safe_download", slow)
    root = model_root(tmp_path)
    models = DemoFallbackYoloModels(settings_for(root, tmp_path), ModelCache(), "cpu")
    choice = ModelChoice("yolov8n.pt", "YOLO_DET_MODEL")
    loader = threading.Thread(target=models.get, args=(choice,))
    loader.start()
    time.sleep(0.1)  # the loader is inside its download attempt
    assert models.path(choice) == root / "demo-shapes-det.pt"
    loader.join()
    assert offline == ["yolov8n.pt"]
