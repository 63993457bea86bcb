"""annotate_dir's pose, OBB and Taxonomy tasks through a real Label Studio 1.23.2: the task files
imported as they are, each prediction stored by Label Studio as annotate_dir wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from tests.conftest import MODELS_DIR
from tests.e2e.conftest import SCORE_THRESHOLD, LabelStudio
from tests.e2e.test_e2e_tasks import CONFIGS, SEEDS
from tools.annotate_dir import annotate
from tools.annotate_options import AnnotateOptions
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("kind, model, config", [
    ("pose", "demo-shapes-pose.pt", "demo-shapes-pose.xml"),
    ("obb", "demo-shapes-obb.pt", "demo-shapes-obb.xml"),
    ("cls", "demo-shapes-cls.pt", "demo-shapes-taxonomy.xml"),
])
def test_annotate_dir_tasks_import_into_label_studio_as_written(label_studio: LabelStudio, tmp_path: Path, kind: str,
                                                                model: str, config: str) -> None:
    generate = {"pose": generate_pose_image, "obb": generate_obb_image, "cls": generate_classify_image}[kind]
    folder = tmp_path / kind
    folder.mkdir()
    for seed in SEEDS:
        cv2.imwrite(str(folder / f"{kind}-{seed}.png"), generate(seed)[0])
    xml = (CONFIGS / config).read_text()
    annotate(AnnotateOptions(folder, out_dir=tmp_path / "out", model=str(MODELS_DIR / model), label_config=CONFIGS / config,
                             overrides=(("cache_dir", str(tmp_path / "cache")), ("model_score_threshold", str(SCORE_THRESHOLD))), ls_tasks=tmp_path / "tasks.json"), environ={})
    written = json.loads((tmp_path / "tasks.json").read_text())
    assert len(written) == len(SEEDS) and any(task["predictions"][0]["result"] for task in written)

    client = label_studio.client
    project_id = client.create_project(f"e2e annotate_dir {kind}", xml)
    imported = client.request("POST", f"/api/projects/{project_id}/import", json=written).json()
    assert imported["task_count"] == len(written) and imported["prediction_count"] == len(written)
    for task_id in client.task_ids(project_id):
        image = client.task(task_id)["data"]["image"]
        (expected,) = next(task["predictions"] for task in written if task["data"]["image"] == image)
        (prediction,) = client.predictions(task_id)
        assert prediction["result"] == expected["result"] and prediction["model_version"] == expected["model_version"]
