"""`python -m tools.preannotate` against a real Label Studio 1.23.2: a project of a few hundred
tasks (images as Local Storage files) gets the predictions the backend's /predict gives, a rerun
creates nothing, a run killed half way completes on restart without duplicates, and the same job
on a Ray cluster started with `ray start --head` gives the same predictions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import ALL_CONTROLS_CONFIG, REPO_ROOT
from tests.e2e.conftest import DEMO_WITH, E2E_SEEDS, Backend, LabelStudio, StartBackend
from tests.e2e.servers import free_port
from tests.test_preannotate import assert_same_regions
from tools.shapes_dataset import generate_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_TASKS = 240
SEEDS = (*E2E_SEEDS, 5004, 5005, 5006, 5007)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preannotate-images")
    for seed in SEEDS:
        cv2.imwrite(str(root / f"shapes-{seed}.png"), generate_image(seed).image)
    return root


def task_data(index: int) -> dict:
    return {"image": f"/data/local-files/?d=shapes-{SEEDS[index % len(SEEDS)]}.png", "n": index}


def make_project(label_studio: LabelStudio, title: str) -> int:
    client = label_studio.client
    project_id = client.create_project(title, ALL_CONTROLS_CONFIG)
    client.request("POST", f"/api/projects/{project_id}/import", json=[{"data": task_data(i)} for i in range(N_TASKS)])
    return project_id


def all_tasks(label_studio: LabelStudio, project_id: int) -> list[dict]:
    answer = label_studio.client.request("GET", "/api/tasks", params={"project": project_id, "page_size": 1000,
                                                                      "fields": "all"}).json()
    assert answer["total"] == N_TASKS
    return answer["tasks"]


def preannotate(label_studio: LabelStudio, project_id: int, image_dir: Path, cache_dir: Path,
                *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tools.preannotate", "--ls_url", label_studio.url,
               "--api_key", label_studio.personal_access_token(), "--project", str(project_id), "--batch", "8",
               "--page_size", "50", "--with", *DEMO_WITH, f"local_files_document_root={image_dir}",
               f"cache_dir={cache_dir}", *extra]
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, f"exit {process.returncode}:\n{out}\n{err[-3000:]}"
    return out


def without_ids(regions: list[dict]) -> list[dict]:
    return [{key: value for key, value in region.items() if key != "id"} for region in regions]


@pytest.fixture(scope="module")
def backend(start_backend: StartBackend, image_dir: Path) -> Backend:
    return start_backend([f"local_files_document_root={image_dir}"])


def test_project_gets_the_backends_predictions_once(label_studio: LabelStudio, backend: Backend, image_dir: Path,
                                                   tmp_path: Path) -> None:
    project_id = make_project(label_studio, "preannotate")

    out = finish(preannotate(label_studio, project_id, image_dir, tmp_path / "cache"))

    assert f"predicted and written: {N_TASKS}" in out and "failed: 0" in out
    tasks = all_tasks(label_studio, project_id)
    assert all(len(task["predictions"]) == 1 for task in tasks)
    version = backend.health()["model_version"]
    by_seed_index = {task["data"]["n"]: task for task in tasks}
    sample = [by_seed_index[i] for i in range(len(SEEDS))]
    answer = backend.predict({"tasks": [{"id": t["id"], "data": t["data"]} for t in sample],
                              "label_config": ALL_CONTROLS_CONFIG, "project": f"{project_id}.1"})
    for task, expected in zip(sample, answer["results"]):
        (stored,) = task["predictions"]
        assert stored["model_version"] == expected["model_version"] == version
        assert without_ids(stored["result"]) == without_ids(expected["result"])
        assert stored["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert {region["type"] for task in sample for region in task["predictions"][0]["result"]} == \
        {"rectanglelabels", "polygonlabels", "brushlabels"}
    project = label_studio.client.request("GET", f"/api/projects/{project_id}").json()
    assert project["total_predictions_number"] == N_TASKS

    again = finish(preannotate(label_studio, project_id, image_dir, tmp_path / "cache"))

    assert "predicted and written: 0" in again and f"already predicted by this version): {N_TASKS}" in again
    assert all(len(task["predictions"]) == 1 for task in all_tasks(label_studio, project_id))


def test_a_killed_run_completes_on_restart_without_duplicates(label_studio: LabelStudio, backend: Backend,
                                                              image_dir: Path, tmp_path: Path) -> None:
    project_id = make_project(label_studio, "preannotate killed")
    process = preannotate(label_studio, project_id, image_dir, tmp_path / "cache")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        done = label_studio.client.request("GET", f"/api/projects/{project_id}").json()["total_predictions_number"]
        if done >= N_TASKS // 3:
            break
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    written = sum(len(task["predictions"]) for task in all_tasks(label_studio, project_id))
    assert N_TASKS // 3 <= written < N_TASKS

    out = finish(preannotate(label_studio, project_id, image_dir, tmp_path / "cache"))

    assert f"predicted and written: {N_TASKS - written}" in out and f"version): {written}" in out
    tasks = all_tasks(label_studio, project_id)
    assert all(len(task["predictions"]) == 1 for task in tasks)
    assert len({task["predictions"][0]["model_version"] for task in tasks}) == 1


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local Ray cluster as a user starts one (`ray start --head`); its address."""
    pytest.importorskip("ray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = (tmp_path_factory.mktemp("ray") / "ray.log").open("wb")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(15)
        assert head.poll() is None, "ray start --head exited"
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_ray_cluster_run_gives_the_same_predictions(label_studio: LabelStudio, backend: Backend, image_dir: Path,
                                                    ray_cluster: str, tmp_path: Path) -> None:
    project_id = make_project(label_studio, "preannotate on ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"

    out = finish(preannotate(label_studio, project_id, image_dir, tmp_path / "cache", "--ray", ray_cluster,
                             "--actors", "2"))

    assert f"predicted and written: {N_TASKS}" in out and "model actor processes used: 2" in out
    tasks = all_tasks(label_studio, project_id)
    assert all(len(task["predictions"]) == 1 for task in tasks)
    by_index = {task["data"]["n"]: task for task in tasks}
    sample = [by_index[i] for i in range(len(SEEDS))]
    answer = backend.predict({"tasks": [{"id": t["id"], "data": t["data"]} for t in sample],
                              "label_config": ALL_CONTROLS_CONFIG, "project": f"{project_id}.1"})
    for task, expected in zip(sample, answer["results"]):
        stored = task["predictions"][0]
        assert stored["model_version"] == expected["model_version"]
        assert_same_regions(stored["result"], expected["result"])
    again = finish(preannotate(label_studio, project_id, image_dir, tmp_path / "cache", "--ray", ray_cluster))
    assert "predicted and written: 0" in again
