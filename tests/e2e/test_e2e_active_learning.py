"""Active learning with the real Label Studio 1.23.2: the Data Manager's prediction score column shows the
backend's task score (TASK_SCORE=quality), and uncertainty sampling serves the lowest-scored task first."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHAPE_LABELS, config_xml
from tests.e2e.conftest import Backend, LabelStudio, MakeProject

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECT_CONFIG = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>')
SEEDS = (5000, 5001, 5002, 5003, 5004, 5005)


def test_data_manager_shows_our_score_and_uncertainty_sampling_serves_the_lowest(
        label_studio: LabelStudio, yolo_backend: Backend, make_project: MakeProject) -> None:
    client = label_studio.client
    project = make_project(yolo_backend, "e2e active learning", seeds=SEEDS, label_config=RECT_CONFIG)
    stored = {}
    for task_id in project.task_seeds:
        (stored[task_id],) = client.predictions(task_id)
    # The backend's own answer for each task (its images read from Label Studio as on "Retrieve Predictions").
    tasks = [client.task(task_id) for task_id in sorted(stored)]
    answers = yolo_backend.predict({"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks],
                                    "label_config": RECT_CONFIG})["results"]
    ours = {task["id"]: answer["score"] for task, answer in zip(tasks, answers)}
    assert all(0 <= score <= 1 for score in ours.values()) and len(set(ours.values())) > 1
    assert any(abs(ours[t] - np.mean([r["score"] for r in stored[t]["result"]] or [0])) > 1e-3 for t in ours), \
        "the task score should be the quality estimate, not the mean of the region scores"

    # The project's current model version (Settings > Model) is the one its predictions carry.
    version = stored[min(stored)]["model_version"]
    client.request("PATCH", f"/api/projects/{project.id}", json={"sampling": "Uncertainty sampling", "model_version": version})
    listed = client.request("GET", "/api/tasks", params={"project": project.id, "fields": "all", "page_size": 100}).json()
    shown = {task["id"]: task["predictions_score"] for task in listed["tasks"]}
    for task_id, score in ours.items():
        assert stored[task_id]["score"] == pytest.approx(score, abs=1e-6)
        assert shown[task_id] == pytest.approx(score, abs=1e-6)

    served = client.request("GET", f"/api/projects/{project.id}/next").json()
    assert served["id"] == min(ours, key=ours.get)
