"""Training jobs for classification, pose and OBB projects (tiny: 2 epochs at 64 px from the demo models),
served afterwards by their project's model; a base model of the wrong task is refused in one sentence."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from formats.label_config import parse_label_config
from backend.settings import Settings
from backend.training import trainer
from backend.training.jobs import JobBoard
from backend.training.registry import ProjectModels
from backend.training.run import JobSpec, _label_mapper, run_job
from backend.training.tasks import METRICS
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, local_url
from tests.task_training_data import CONFIGS, RENAMES, annotated_tasks, renamed_config, renamed_results
from tests.training_stand_in import TOKEN, TrainingLabelStudio
from formats.yolo_dataset import write_yolo_dataset
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image

pytestmark = pytest.mark.slow

TRAIN_SEEDS = range(93_000, 93_016)
HELD_OUT_SEED = 94_000
TINY = {"train_epochs": 2, "train_imgsz": 64, "train_batch": 8, "train_min_images": 10, "device": "cpu"}
TASK_MODELS = ("demo-shapes-cls.pt", "demo-shapes-pose.pt", "demo-shapes-obb.pt", DEMO_DET, DEMO_SEG)
PICTURES = {"classify": generate_classify_image, "pose": generate_pose_image, "obb": generate_obb_image}
@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("task-training") / "models"
    root.mkdir()
    for name in TASK_MODELS:
        shutil.copyfile(MODELS_DIR / name, root / name)
    return root


def settings_for(root: Path, images: Path) -> Settings:
    values = {"model_root": str(root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
              "cache_dir": str(root.parent / "cache"), "local_files_document_root": str(images),
              "model_score_threshold": 0.25, **TINY}
    return Settings.load(values, environ={})


def run_training(settings: Settings, project: int, ls: TrainingLabelStudio) -> dict:
    board = JobBoard(settings.model_root_path)
    uid = f"{project}.1700000000"  # the stand-in's created_at
    assert board.request(uid, "test") == "queued"
    run_job(settings, JobSpec(uid, board.state(uid)["job_id"], ls.url, TOKEN), board)
    return board.state(uid)


def stand_in(task: str, project: int, config: str) -> TrainingLabelStudio:
    """Label Studio's API for one project: the demo tasks of `task`, annotated with the renamed labels."""
    ls = TrainingLabelStudio(project, [], label_config=config)
    ls.files, ls.tasks = annotated_tasks(task, TRAIN_SEEDS, lambda name: f"/data/upload/{project}/{name}")
    for task_dict in ls.tasks:
        task_dict["annotations"][0]["result"] = renamed_results(task, task_dict["annotations"][0]["result"])
    return ls


@pytest.fixture(scope="module")
def held_out_images(model_root: Path) -> Path:
    images = model_root.parent / "images"
    images.mkdir()
    for task, picture in PICTURES.items():
        cv2.imwrite(str(images / f"{task}.png"), picture(HELD_OUT_SEED)[0])
    return images


@pytest.fixture(scope="module")
def client(model_root: Path, held_out_images: Path) -> Iterator[TestClient]:
    settings = settings_for(model_root, held_out_images)
    with TestClient(create_app(settings, build_services(settings))) as test_client:
        yield test_client


@pytest.mark.parametrize("task, project", [("classify", 31), ("pose", 32), ("obb", 33)])
def test_task_project_trains_scores_by_its_metric_and_is_served_by_its_model(
        task: str, project: int, model_root: Path, held_out_images: Path, client: TestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "limit_resources", lambda threads: 2)  # no os.nice on the test process
    config = renamed_config(task)
    with stand_in(task, project, config) as ls:
        state = run_training(settings_for(model_root, held_out_images), project, ls)
    assert state["state"] == "promoted", state
    assert f"val {METRICS[task]} new" in state["message"]
    card = ProjectModels(model_root, f"{project}.1700000000").card(1)
    assert card["task"] == task and card["metric"] == METRICS[task] and card["map_previous"] == 0.0
    assert set(card["classes"]) == set(RENAMES[task].values()) and card["images"] == len(TRAIN_SEEDS)
    assert card["base_model"] == {"classify": "demo-shapes-cls.pt", "pose": "demo-shapes-pose.pt",
                                  "obb": "demo-shapes-obb.pt"}[task]
    response = client.post("/predict", json={"project": f"{project}.1700000000", "label_config": config,
                                             "tasks": [{"id": 1, "data": {"image": local_url(f"{task}.png")}}]})
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    assert answer["model_version"].startswith(f"p{project}-v1@")
    labels = {label for region in answer["result"] for key in ("choices", "rectanglelabels")
              for label in region["value"].get(key, [])}
    assert labels <= set(RENAMES[task].values())
    if task == "classify":  # a choice is always made; boxes and keypoints need more than 2 epochs to pass 0.25
        assert len(labels) == 1


def test_a_base_model_of_the_wrong_task_is_refused_in_one_sentence(model_root: Path, held_out_images: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "limit_resources", lambda threads: 2)
    config = CONFIGS["classify"].replace('model_path="demo-shapes-cls.pt"', f'model_path="{DEMO_DET}"')
    with stand_in("classify", 34, config) as ls:
        state = run_training(settings_for(model_root, held_out_images), 34, ls)
    assert state["state"] == "refused"
    assert state["message"] == (f"the labeling config trains a YOLO classify model but its base model {DEMO_DET} is "
                                "a detect model: set the control's model_path to a classify model")
    assert ls.requests["/api/projects/34/export"] == 1 and not any(p.startswith("/data/upload") for p in ls.requests)
    assert ProjectModels(model_root, "34.1700000000").versions() == []


@pytest.mark.parametrize("task, model, floor", [("classify", "demo-shapes-cls.pt", 0.95), ("pose", "demo-shapes-pose.pt", 0.3),
                                                ("obb", "demo-shapes-obb.pt", 0.5)])
def test_a_model_of_the_configs_labels_is_scored_on_what_it_serves(task: str, model: str, floor: float,
                                                                   tmp_path: Path) -> None:
    """The demo models on 40 held-out pictures of their own task, through the demo configs' label mapping
    (predicted_values): near their recorded figures (models/demo-shapes-task-metrics.json: top-1 0.995,
    pose mAP50-95 0.40, OBB box mAP50-95 0.64 on 200 pictures)."""
    files, tasks = annotated_tasks(task, range(95_000, 95_040), lambda name: str(tmp_path / name))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    summary = write_yolo_dataset(tasks, tmp_path / "data", task=task, label_config=CONFIGS[task], val_fraction=0.99)
    config = parse_label_config(CONFIGS[task])
    options = trainer.TrainOptions(1, 160, 8, "cpu", 2)
    score = trainer.score(MODELS_DIR / model, tmp_path / "data" / "data.yaml", task,
                          _label_mapper(config, task, tuple(summary.categories)), tmp_path / "work", options)
    assert score.map50_95 >= floor, score


def test_classify_head_rows_start_from_the_base_class_serving_each_choice() -> None:
    from torch import nn

    from backend.training.heads import align_classify_head, aligned_rows

    base_names = {0: "circle", 1: "square", 2: "triangle"}
    by_class = {"circle": "Round", "triangle": "Pointy"}  # no Choice for "square"
    sources = aligned_rows(base_names, ["Boxy", "Pointy", "Round"], by_class.get)
    assert sources == [None, 2, 0]
    base, head = nn.Linear(8, 3), nn.Linear(8, 3)
    before = head.weight.detach().clone()
    align_classify_head(head, base, sources)
    assert head.weight[1].tolist() == base.weight[2].tolist() and head.bias[2].item() == base.bias[0].item()
    assert head.weight[0].tolist() not in (before[0].tolist(), *base.weight.tolist())  # re-initialised


def test_tools_train_follows_the_models_task(tmp_path: Path) -> None:
    """`python -m tools.train` on a classification export and model: a classify dataset, top-1 scores, a card."""
    import json

    from tools import train as train_tool

    files, tasks = annotated_tasks("classify", range(98_000, 98_012), lambda name: str(tmp_path / name))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    (tmp_path / "config.xml").write_text(CONFIGS["classify"])
    assert train_tool.main(["--json_file_path", str(tmp_path / "export.json"), "--model", str(MODELS_DIR / "demo-shapes-cls.pt"),
                            "--out_dir", str(tmp_path / "run"), "--label_config", str(tmp_path / "config.xml"),
                            "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--threads", "2"]) == 0
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["task"] == "classify" and card["classes"] == ["Circle", "Square", "Triangle"] and card["images"] == 12
    assert 0.0 <= card["map_new"] <= 1.0 and card["map_previous"] >= 0.5  # the demo model, through predicted_values
    assert sorted(p.name for p in (tmp_path / "run" / "dataset" / "train").iterdir()) == ["Circle", "Square", "Triangle"]
