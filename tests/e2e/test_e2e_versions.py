"""A replaced model file makes Label Studio predict again: the real Label Studio 1.23.2 and the user's command."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPE_LABELS, config_xml
from tests.e2e.conftest import LabelStudio, MakeProject, StartBackend

pytestmark = pytest.mark.e2e

CONFIG = config_xml(f'<RectangleLabels name="rect" toName="image" model_path="boxes.pt">{SHAPE_LABELS}'
                    '</RectangleLabels>')


def stored_versions(label_studio: LabelStudio, task_ids: list[int]) -> list[list[str]]:
    return [[p["model_version"] for p in label_studio.client.predictions(task_id)] for task_id in task_ids]


def test_replacing_the_model_file_gives_new_predictions_with_a_new_version(
        label_studio: LabelStudio, start_backend: StartBackend, make_project: MakeProject,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    model_root: Path = tmp_path_factory.mktemp("versioned-models")
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, model_root / name)
    shutil.copyfile(MODELS_DIR / DEMO_DET, model_root / "boxes.pt")
    backend = start_backend(extra_with=[f"model_root={model_root}"])
    project = make_project(backend, "e2e versions", label_config=CONFIG)
    task_ids = sorted(project.task_seeds)
    (first,) = {version for versions in stored_versions(label_studio, task_ids) for version in versions}
    assert re.fullmatch(r"boxes@[0-9a-f]{7}", first)
    assert label_studio.client.model_state(project.ml_id).model_version == first

    # The same files: "Retrieve predictions" finds every task up to date and adds nothing.
    label_studio.client.retrieve_predictions(project.id, task_ids)
    assert stored_versions(label_studio, task_ids) == [[first]] * len(task_ids)

    # A retrained model published under the same name.
    incoming = model_root / "incoming.pt"
    shutil.copyfile(MODELS_DIR / DEMO_SEG, incoming)
    incoming.replace(model_root / "boxes.pt")
    label_studio.client.retrieve_predictions(project.id, task_ids)
    second = label_studio.client.model_state(project.ml_id).model_version
    assert re.fullmatch(r"boxes@[0-9a-f]{7}", second) and second != first
    for versions in stored_versions(label_studio, task_ids):
        assert sorted(versions) == sorted([first, second])
