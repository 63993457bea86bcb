"""Training without training: webhooks, the job board across processes, the registry and which model serves."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from formats.label_config import parse_label_config
from backend.training.model_choice import model_choice
from backend.settings import Settings, SettingsError
from backend.training.registry import promoted_version
from backend.training.jobs import JobBoard
from backend.training.registry import ProjectModels, main as registry_main
from backend.training.service import TrainingService
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, config_xml, demo_settings, load_protocol_fixture

RENAMED = '<Label value="disc"/><Label value="box"/><Label value="wedge"/>'
FIXTURE_UID = "1.1795827629"  # the uid of the captured webhooks' project (id 1, created 2026-11-28T01:00:29Z)
REACHABLE = {"label_studio_url": "http://127.0.0.1:9", "label_studio_api_key": "key"}  # jobs are not dispatched here


@pytest.fixture()
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    return root


def publish(root: Path, project: str, weights: str = DEMO_SEG, task: str = "segment", promote: bool = True) -> Path:
    models = ProjectModels(root, project)
    version = models.next_version()
    card = {"version": version, "status": "promoted" if promote else "rejected", "task": task,
            "classes": ["disc", "box", "wedge"], "map_new": 0.5, "map_previous": 0.0}
    return models.publish(version, root / weights, card, promote)


def _hammer(root: str, project: str, n: int, out: multiprocessing.Queue) -> None:
    board = JobBoard(Path(root))
    out.put([board.request(project, "test") for _ in range(n)])


def test_triggers_from_two_processes_queue_one_job_and_one_rerun(model_root: Path) -> None:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_hammer, args=(str(model_root), "12.1", 25, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = out.get(timeout=60) + out.get(timeout=60)
    for worker in workers:
        worker.join(30)
    assert sorted(set(results)) == ["absorbed", "coalesced", "queued"]
    assert results.count("queued") == 1 and results.count("coalesced") == 1 and results.count("absorbed") == 48
    state = JobBoard(model_root).state("12.1")
    assert state["state"] == "queued" and state["rerun"] is True


def test_two_app_instances_share_the_job_and_answer_at_once(model_root: Path, image_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dispatched = []
    monkeypatch.setattr(TrainingService, "_dispatch", lambda self, spec: dispatched.append(spec))
    webhook = load_protocol_fixture("webhook-start-training.json")
    clients = [TestClient(create_app(settings, build_services(settings))) for settings in
               (demo_settings(image_root, tmp_path / f"cache{i}", model_root=str(model_root), **REACHABLE)
                for i in range(2))]
    answers = [clients[i % 2].post("/webhook", json=webhook) for i in range(4)]
    assert [a.status_code for a in answers] == [201] * 4
    assert [a.json()["status"] for a in answers] == ["queued", "coalesced", "absorbed", "absorbed"]
    assert len(dispatched) == 1 and dispatched[0].project == FIXTURE_UID
    health = clients[1].get("/health").json()
    assert health["training"] == [{"project": FIXTURE_UID, "state": "queued", "phase": "queued", "rerun": True,
                                   "promoted_version": None}]
    metrics = clients[0].get("/metrics").text
    assert f'backend_training_job_state{{project="{FIXTURE_UID}",state="queued"}} 1' in metrics


def test_webhook_events(model_root: Path, image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatched = []
    monkeypatch.setattr(TrainingService, "_dispatch", lambda self, spec: dispatched.append(spec))
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(model_root), train_every=2, **REACHABLE)
    client = TestClient(create_app(settings, build_services(settings)))
    event = load_protocol_fixture("webhook-annotation-created.json")
    first, second = client.post("/webhook", json=event), client.post("/webhook", json=event)
    assert (first.status_code, first.json()["status"], first.json()["annotation_events"]) == (201, "counted", 1)
    assert (second.status_code, second.json()["status"]) == (201, "queued")
    assert len(dispatched) == 1
    ignored = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert (ignored.status_code, ignored.json()["status"]) == (200, "ignored")
    refused = client.post("/webhook", json={"project": {"id": 1}})
    assert refused.status_code == 400 and "action" in refused.json()["error"]
    no_project = client.post("/webhook", json={"action": "START_TRAINING"})
    assert no_project.status_code == 400 and "project" in no_project.json()["error"]


def test_annotation_events_are_only_acknowledged_without_train_every(model_root: Path, image_root: Path,
                                                                    tmp_path: Path) -> None:
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(model_root))
    client = TestClient(create_app(settings, build_services(settings)))
    answer = client.post("/webhook", json=load_protocol_fixture("webhook-annotation-created.json"))
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert JobBoard(model_root).all_states() == [] and not (model_root / "projects").exists()


def test_a_job_whose_process_died_is_failed_and_started_again(model_root: Path) -> None:
    board = JobBoard(model_root)
    assert board.request("5.1", "first") == "queued"
    job_id = board.state("5.1")["job_id"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with board.locked("5.1") as state:  # as a runner that was SIGKILLed would have left it
        state.update({"state": "running", "runner": {"host": os.uname().nodename, "pid": dead.pid}})
    assert board.request("5.1", "again") == "queued"
    state = board.state("5.1")
    assert state["job_id"] != job_id and state["state"] == "queued"
    assert board.finish("5.1", job_id, "promoted", "late") is None  # the dead job's end no longer counts


def test_follow_up_job_after_a_coalesced_trigger(model_root: Path) -> None:
    board = JobBoard(model_root)
    board.request("3.1", "a")
    job_id = board.state("3.1")["job_id"]
    assert board.start("3.1", job_id)
    assert board.request("3.1", "b") == "coalesced"
    follow_up = board.finish("3.1", job_id, "promoted", "done", version=1)
    assert follow_up is not None
    state = board.state("3.1")
    assert state["state"] == "queued" and state["previous_job"]["state"] == "promoted"
    assert board.fail_if_unfinished("3.1", follow_up, "process killed") is None
    assert board.state("3.1")["state"] == "failed" and "killed" in board.state("3.1")["message"]


def test_promoted_model_serves_trainable_controls_of_its_project_only(model_root: Path) -> None:
    settings = Settings.load({"model_root": str(model_root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG},
                             environ={})
    config = parse_label_config(config_xml(f'<PolygonLabels name="poly" toName="image">{RENAMED}</PolygonLabels>',
                                           f'<RectangleLabels name="fixed" toName="image" model_trainable="false">{RENAMED}'
                                           "</RectangleLabels>"))
    poly, fixed = config.prediction_controls
    assert model_choice(poly, settings, "12.1700000000").path_value == DEMO_SEG
    publish(model_root, "12.1700000000")
    assert model_choice(poly, settings, "12.1700000000").path_value == "projects/12.1700000000/p12-v1.pt"
    assert model_choice(poly, settings, "12.1700000000").setting == "trained model p12-v1 of project 12.1700000000"
    assert model_choice(fixed, settings, "12.1700000000").path_value == DEMO_DET  # model_trainable="false"
    assert model_choice(poly, settings, "13.1700000000").path_value == DEMO_SEG  # another project
    assert model_choice(poly, settings, "12.1").path_value == DEMO_SEG  # the same id on another Label Studio
    assert model_choice(poly, settings, 12).path_value == DEMO_SEG  # a bare id names no project
    assert model_choice(poly, settings, None).path_value == DEMO_SEG
    assert promoted_version(settings, "12.1700000000").name == "p12-v1"


def test_detection_model_does_not_replace_a_mask_control(model_root: Path) -> None:
    settings = Settings.load({"model_root": str(model_root), "yolo_seg_model": DEMO_SEG}, environ={})
    publish(model_root, "4.1", weights=DEMO_DET, task="detect")
    (poly,) = parse_label_config(config_xml(f'<PolygonLabels name="p" toName="image">{RENAMED}</PolygonLabels>')).controls
    assert model_choice(poly, settings, "4.1").path_value == DEMO_SEG


def test_versions_rejected_candidates_and_rollback(model_root: Path, capsys: pytest.CaptureFixture) -> None:
    publish(model_root, "7.1")
    publish(model_root, "7.1", promote=False)
    models = ProjectModels(model_root, "7.1")
    assert models.versions() == [1, 2] and models.promoted().version == 1
    publish(model_root, "7.1")
    assert models.promoted().version == 3
    assert registry_main(["--model_root", str(model_root), "--project", "7.1", "--promote", "1"]) == 0
    assert models.promoted().version == 1
    assert "* v1" in capsys.readouterr().out
    assert registry_main(["--model_root", str(model_root), "--project", "7.1", "--promote", "9"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert registry_main(["--model_root", str(model_root), "--project", "7", "--promote", "1"]) == 2
    error = capsys.readouterr().err
    assert "not a project uid" in error and "7.1" in error  # names the projects that have trained
    assert sorted(p.name for p in models.directory.iterdir() if p.name.startswith(".tmp")) == []


def test_versions_endpoint_lists_trained_versions(model_root: Path, image_root: Path, tmp_path: Path) -> None:
    publish(model_root, "8.1")
    JobBoard(model_root).request("8.1", "test")
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(model_root))
    client = TestClient(create_app(settings, build_services(settings)))
    trained = client.get("/versions").json()["trained"]
    assert [(v["name"], v["served"], v["status"]) for v in trained["8.1"]] == [("p8-v1", True, "promoted")]


def test_killed_between_writes_leaves_the_old_version_served(model_root: Path) -> None:
    """A process killed while publishing: each file appears whole or not at all, the pointer last."""
    publish(model_root, "9.1")
    script = ("import os, signal, sys; from pathlib import Path\n"
              "from backend.training import registry\n"
              "real = registry.write_json_atomic\n"
              "def dying(path, record):\n"
              "    if path.name == 'promoted.json': os.kill(os.getpid(), signal.SIGKILL)\n"
              "    real(path, record)\n"
              "registry.write_json_atomic = dying\n"
              f"m = registry.ProjectModels(Path({str(model_root)!r}), '9.1')\n"
              f"m.publish(2, Path({str(model_root / DEMO_SEG)!r}), {{'version': 2, 'task': 'segment'}}, True)\n")
    process = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert process.returncode == -signal.SIGKILL
    models = ProjectModels(model_root, "9.1")
    assert models.promoted().version == 1
    assert models.next_version() == 3  # the orphan v2 keeps its number
    assert json.loads((models.directory / "promoted.json").read_text())["version"] == 1


def test_training_settings() -> None:
    for bad in ({"train_imgsz": 100}, {"train_epochs": 0}, {"train_device": "gpu"}, {"train_queue": "http://x"},
                {"train_every": -1}):
        with pytest.raises(SettingsError):
            Settings.load(bad, environ={})
    assert Settings.load({"train_queue": "redis://localhost:6379/0"}, environ={}).train_queue


def test_brush_masks_train_segmentation_and_untrainable_controls_are_left_out(tmp_path: Path) -> None:
    """Dataset of a config with a trainable BrushLabels and a model_trainable="false" RectangleLabels."""
    import cv2

    from formats.geometry import mask_to_polygons
    from formats.rle import mask_to_ls_rle
    from backend.sources.images import ImageFetcher
    from backend.sources.label_studio import AccessTokens
    from backend.training.dataset import ProjectData, TooFewImages, build_dataset
    from tools.shapes_dataset import generate_image

    config = config_xml(f'<BrushLabels name="brush" toName="image">{RENAMED}</BrushLabels>',
                        f'<RectangleLabels name="fixed" toName="image" model_trainable="false">{RENAMED}</RectangleLabels>')
    images = tmp_path / "images"
    images.mkdir()
    tasks = []
    for index, seed in enumerate(range(6000, 6006)):
        sample = generate_image(seed)
        cv2.imwrite(str(images / f"s{seed}.png"), sample.image)
        height, width = sample.image.shape[:2]
        regions = [{"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": width,
                    "original_height": height, "value": {"format": "rle", "rle": mask_to_ls_rle(instance.mask),
                                                         "brushlabels": [("disc", "box", "wedge")[instance.class_id]]}}
                   for instance in sample.instances]
        regions.append({"from_name": "fixed", "to_name": "image", "type": "rectanglelabels", "original_width": width,
                        "original_height": height, "value": {"x": 1, "y": 1, "width": 5, "height": 5,
                                                             "rectanglelabels": ["box"]}})
        tasks.append({"id": index + 1, "data": {"image": f"/data/local-files/?d=s{seed}.png"},
                      "annotations": [{"id": index + 1, "result": regions, "was_cancelled": False}]})
    tasks.append({"id": 99, "data": {"image": "/data/local-files/?d=missing.png"},
                  "annotations": [{"id": 99, "result": [], "was_cancelled": False}]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    fetcher = ImageFetcher(tmp_path / "cache", str(images), 10.0, 10**8, AccessTokens(timeout=10.0), 10**8)
    data = ProjectData("brush", config, export)
    dataset = build_dataset(data, fetcher, None, tmp_path / "dataset", 6, 0.5)
    assert (dataset.task, dataset.classes, dataset.images, dataset.images_failed) == ("segment", ("disc", "box", "wedge"), 6, 1)
    lines = [line.split() for path in (tmp_path / "dataset" / "labels").rglob("*.txt")
             for line in path.read_text().splitlines()]
    outlines = sum(len(mask_to_polygons(instance.mask, tolerance=0.5)) for seed in range(6000, 6006)
                   for instance in generate_image(seed).instances)
    assert len(lines) == outlines  # one polygon per brush part; the untrainable rectangles are not there
    with pytest.raises(TooFewImages, match="6 annotated image"):
        build_dataset(data, fetcher, None, tmp_path / "dataset2", 7, 0.5)
