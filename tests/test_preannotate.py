"""tools.preannotate in one process against a stand-in Label Studio API: predictions equal the
backend's /predict, reruns create nothing, faults (429, 500, lost answers, broken images) are
survived without duplicates, and the command line's exit codes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SHAPES_SEEDS, demo_settings, local_url
from tests.fake_label_studio_api import PROJECT_ID, TOKEN, FakeLabelStudioAPI
from tools.preannotate.__main__ import main
from tools.preannotate.client import RetryPolicy
from tools.preannotate.job import JobOptions, run_local

CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="rect" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></PolygonLabels>
  <BrushLabels name="brush" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></BrushLabels>
</View>"""
FAST_RETRY = RetryPolicy(attempts=6, base_delay_s=0.01, timeout_s=30)
N_TASKS = 30


def shapes_data(index: int) -> dict:
    return {"image": local_url(f"shapes_{SHAPES_SEEDS[index % len(SHAPES_SEEDS)]}.png")}


@pytest.fixture()
def fake() -> FakeLabelStudioAPI:
    with FakeLabelStudioAPI(CONFIG, N_TASKS, shapes_data) as server:
        yield server


@pytest.fixture(scope="module")
def job_options(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., JobOptions]:
    cache_dir = tmp_path_factory.mktemp("preannotate-cache")

    def make(fake: FakeLabelStudioAPI, **options: object) -> JobOptions:
        settings = demo_settings(image_root, cache_dir, device="cpu")
        values = {"batch": 4, "page_size": 7, "retry": FAST_RETRY, **options}
        return JobOptions(fake.url, TOKEN, PROJECT_ID, settings, **values)  # type: ignore[arg-type]

    return make


def without_ids(regions: list[dict]) -> list[dict]:
    """Regions without their random ids (everything else must be equal)."""
    return [{key: value for key, value in region.items() if key != "id"} for region in regions]


def assert_same_regions(regions: list[dict], expected: list[dict]) -> None:
    """Equal up to float rounding: a Ray actor runs torch with its own thread count, which may change
    the last digits of a box; labels, region kinds and order must be identical."""
    labels = lambda rs: [(r["from_name"], r["type"], r["value"][r["type"]]) for r in rs]  # noqa: E731
    assert labels(regions) == labels(expected)
    for region, wanted in zip(regions, expected):
        assert region["score"] == pytest.approx(wanted["score"], abs=1e-3)
        if region["type"] == "rectanglelabels":
            for key in ("x", "y", "width", "height"):
                assert region["value"][key] == pytest.approx(wanted["value"][key], abs=1e-2)


def stored(fake: FakeLabelStudioAPI) -> dict[int, list[dict]]:
    return {task_id: predictions for task_id, predictions in fake.predictions.items() if predictions}


def test_every_task_gets_the_prediction_predict_gives_and_a_rerun_creates_nothing(
        fake: FakeLabelStudioAPI, job_options: Callable[..., JobOptions], make_client) -> None:  # noqa: ANN001
    summary = run_local(job_options(fake))

    assert (summary.predicted, summary.skipped, summary.n_failed, summary.tasks_read) == (N_TASKS, 0, 0, N_TASKS)
    predictions = stored(fake)
    assert sorted(predictions) == list(fake.task_ids())
    assert all(len(p) == 1 for p in predictions.values())
    backend = make_client(device="cpu")
    tasks = [{"id": task_id, "data": shapes_data(i)} for i, task_id in enumerate(fake.task_ids())][:8]
    answer = backend.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()
    for task, expected in zip(tasks, answer["results"]):
        (written,) = predictions[task["id"]]
        assert written["model_version"] == expected["model_version"] == summary.model_version
        assert without_ids(written["result"]) == without_ids(expected["result"])
        assert written["score"] == pytest.approx(expected["score"])
    assert {region["type"] for p in predictions.values() for region in p[0]["result"]} == \
        {"rectanglelabels", "polygonlabels", "brushlabels"}
    assert max(fake.imported_batches) == 4

    imports_before = fake.requests["import"]
    again = run_local(job_options(fake))
    assert (again.predicted, again.skipped, again.n_failed) == (0, N_TASKS, 0)
    assert fake.requests["import"] == imports_before and sum(map(len, fake.predictions.values())) == N_TASKS


def test_a_stopped_run_resumes_without_duplicates(fake: FakeLabelStudioAPI, job_options: Callable[..., JobOptions]) -> None:
    class Stop(Exception):
        pass

    seen = []

    def stop_after_ten(outcome: object) -> None:
        seen.append(outcome)
        if len(seen) == 10:
            raise Stop

    with pytest.raises(Stop):
        run_local(job_options(fake), on_outcome=stop_after_ten)
    first = len(stored(fake))
    assert 10 <= first < N_TASKS

    resumed = run_local(job_options(fake))

    assert (resumed.skipped, resumed.predicted) == (first, N_TASKS - first)
    assert sorted(stored(fake)) == list(fake.task_ids()) and all(len(p) == 1 for p in fake.predictions.values())


def test_429_and_500_for_a_while_and_a_lost_import_answer_are_retried_without_duplicates(
        fake: FakeLabelStudioAPI, job_options: Callable[..., JobOptions]) -> None:
    fake.faults.update({"project": [500], "tasks": [429, 429, 502, 500], "import": [429, 503, 500],
                        "import-commit": [504]})

    summary = run_local(job_options(fake))

    assert summary.ok and summary.predicted == N_TASKS
    assert sorted(stored(fake)) == list(fake.task_ids()) and all(len(p) == 1 for p in fake.predictions.values())
    assert fake.requests["task"] >= 1  # after the lost answer, the tasks were read again, not resent
    assert not any(fake.faults.values())


def test_broken_images_fail_their_task_only_and_are_reported(image_root: Path, job_options: Callable[..., JobOptions],
                                                              tmp_path: Path) -> None:
    (image_root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = {3: {"image": local_url("broken.png")}, 5: {"image": local_url("absent.png")}, 8: {"picture": "x"}}
    with FakeLabelStudioAPI(CONFIG, 12, lambda i: bad.get(i) or shapes_data(i)) as fake:
        summary = run_local(job_options(fake))
        again = run_local(job_options(fake))

    assert (summary.predicted, summary.n_failed) == (9, 3)
    assert summary.failed == {"image cannot be read": 3}
    report = summary.report()
    assert "task 1004: image cannot be read: cannot decode image" in report
    assert "task 1006: image cannot be read: local file 'absent.png' not found" in report
    assert "task 1009: image cannot be read: task data has no 'image' image URL" in report
    assert sorted(stored(fake)) == [task_id for task_id in fake.task_ids() if task_id - 1001 not in bad]
    assert (again.skipped, again.n_failed, again.predicted) == (9, 3, 0)


def test_a_prediction_label_studio_refuses_fails_only_its_task(fake: FakeLabelStudioAPI,
                                                               job_options: Callable[..., JobOptions]) -> None:
    fake.faults["import"] = [400]  # the first batch is refused as a whole, then sent task by task

    summary = run_local(job_options(fake))

    assert summary.predicted == N_TASKS and summary.ok
    assert all(len(p) == 1 for p in fake.predictions.values()) and len(stored(fake)) == N_TASKS


def test_limit_dry_run_and_command_line(fake: FakeLabelStudioAPI, job_options: Callable[..., JobOptions],
                                        image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dry = run_local(job_options(fake, dry_run=True, limit=5))
    assert (dry.tasks_read, dry.predicted) == (5, 5) and not stored(fake) and fake.requests["import"] == 0
    assert "dry run, nothing written" in dry.report()

    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(f'model_root = "{job_options(fake).settings.model_root}"\nyolo_det_model = "demo-shapes-det.pt"\n'
                             f'yolo_seg_model = "demo-shapes-seg.pt"\nlocal_files_document_root = "{image_root}"\n'
                             f'cache_dir = "{tmp_path / "cache"}"\n')
    args = ["--ls_url", fake.url, "--api_key", TOKEN, "--project", str(PROJECT_ID), "--config", str(settings_file),
            "--with", "model_score_threshold=0.25", "device=cpu", "--limit", "6", "--batch", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "predicted and written: 6" in out and len(stored(fake)) == 6

    assert main([*args[:-4], "--api_key", "wrong"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert main([*args, "--with", "model_score_threshold=2"]) == 1
    assert "MODEL_SCORE_THRESHOLD" in capsys.readouterr().err.upper()
    assert main([*args, "--with", "yolo_seg_model=absent.pt"]) == 1
    assert "absent.pt" in capsys.readouterr().err
    fake.faults["tasks"] = [0, 0] + [500] * 10  # the task count and the first page, then nothing
    assert main([*args[:-4], "--retries", "2", "--page_size", "5"]) == 3
    assert "stopped early" in capsys.readouterr().out


def test_a_project_with_a_promoted_trained_model_is_predicted_by_it(image_root: Path, tmp_path: Path) -> None:
    import shutil

    from backend.training.registry import ProjectModels
    from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR
    from tools.preannotate.predicting import TaskPredictor

    root = tmp_path / "models"
    root.mkdir()
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    renamed = CONFIG.replace('"circle"', '"disc"').replace('"square"', '"box"').replace('"triangle"', '"wedge"')
    models = ProjectModels(root, f"{PROJECT_ID}.1700000000")
    card = {"version": 1, "status": "promoted", "task": "segment", "classes": ["disc", "box", "wedge"]}
    trained = tmp_path / "trained.pt"
    shutil.copyfile(MODELS_DIR / DEMO_SEG, trained)
    models.publish(1, trained, card, promote=True)
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(root))
    tasks = [{"id": 1, "data": shapes_data(0)}]
    own = TaskPredictor(settings, renamed, None, f"{PROJECT_ID}.1700000000")
    assert own.version.startswith(f"p{PROJECT_ID}-v1@")
    other = TaskPredictor(settings, renamed, None, PROJECT_ID + 1)
    assert not other.version.startswith("p")
    assert [o.prediction["model_version"] for o in own.predict(tasks)] == [own.version]
    (outcome,) = other.predict(tasks)
    assert outcome.prediction is None or outcome.prediction["result"] == []  # the start-up models know no "disc"


def test_clusters_option_gives_every_prediction_a_cluster_of_the_projects_centres(
        fake: FakeLabelStudioAPI, image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR

    root = tmp_path / "models"
    root.mkdir()
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    args = ["--ls_url", fake.url, "--api_key", TOKEN, "--project", str(PROJECT_ID), "--limit", "12", "--batch", "2",
            "--with", f"model_root={root}", "yolo_det_model=demo-shapes-det.pt", "yolo_seg_model=demo-shapes-seg.pt",
            f"local_files_document_root={image_root}", f"cache_dir={tmp_path / 'cache'}", "device=cpu"]
    assert main([*args, "--clusters", "65"]) == 1
    assert "CLUSTERS must be between 0 (off) and 64" in capsys.readouterr().err
    assert main([*args, "--clusters", "3"]) == 0
    clusters = {task_id: predictions[0]["cluster"] for task_id, predictions in stored(fake).items()}
    assert len(clusters) == 12 and set(clusters.values()) == {0, 1, 2}  # the first batch grew to 9 tasks: 3 x K
    assert len(list((root / "projects" / f"{PROJECT_ID}.1700000000").glob("clusters-k3-*.json"))) == 1
