"""SAM 3 through a real Label Studio: a project whose labels no YOLO class knows gets SAM 3's regions
(CONCEPT_MODEL, the reduced random-weight SAM 3 of tests/sam3_reduced.py), stored as the backend answers them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import config_xml
from tests.e2e.conftest import E2E_SEEDS, Backend, LabelStudio, MakeProject, Project, StartBackend, shapes_rgb
from tests.sam3_reduced import CHECKPOINT, MetaReference, model_root, threshold_keeping  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEEDS = E2E_SEEDS[:2]
COMPARED = ("from_name", "to_name", "type", "value", "score", "original_width", "original_height")


@pytest.fixture(scope="module")
def label_config(model_root: Path) -> str:
    """Labels of the shapes pictures' own kind that no demo YOLO class is; a threshold keeping 3 'scratch'."""
    scores = MetaReference(model_root / CHECKPOINT).text(shapes_rgb(SEEDS[0]), "scratch", 0.0)["scores"]
    return config_xml(f'<RectangleLabels name="defects" toName="image" '
                      f'model_score_threshold="{threshold_keeping(scores, 3)}">'
                      '<Label value="scratch"/><Label value="Dent" predicted_values="dent,bump"/></RectangleLabels>',
                      '<BrushLabels name="masks" toName="image" model_score_threshold="0.99">'
                      '<Label value="circle"/><Label value="scratch"/></BrushLabels>')


@pytest.fixture(scope="module")
def sam3_backend(start_backend: StartBackend, model_root: Path, label_config: str) -> Backend:
    backend = start_backend((f"model_root={model_root}", f"concept_model={CHECKPOINT}"))
    # Label Studio's Connect Model waits 3 s for /setup; on this shared machine hashing the checkpoint for the
    # model version (done in the background at start-up) may not have finished yet.
    requests.post(f"{backend.url}/setup", json={"project": "0", "schema": label_config}, timeout=300).raise_for_status()
    return backend


@pytest.fixture(scope="module")
def sam3_project(sam3_backend: Backend, make_project: MakeProject, label_config: str) -> Project:
    return make_project(sam3_backend, "e2e sam3", seeds=SEEDS, label_config=label_config)


def test_labels_no_yolo_class_knows_get_sam3_regions_stored_as_the_backend_answers(
        label_studio: LabelStudio, sam3_backend: Backend, sam3_project: Project, label_config: str) -> None:
    found = 0
    for task_id in sam3_project.task_seeds:
        (stored,) = label_studio.client.predictions(task_id)
        direct = sam3_backend.predict({"tasks": [label_studio.client.task(task_id)], "label_config": label_config,
                                       "project": f"{sam3_project.id}"})["results"][0]
        assert stored["model_version"] == direct["model_version"]
        assert "sam3-reduced@" in direct["model_version"]
        ours = [{key: region[key] for key in COMPARED} for region in direct["result"]]
        theirs = [{key: region[key] for key in COMPARED} for region in stored["result"]]
        assert theirs == ours
        found += sum(region["value"]["rectanglelabels"] == ["scratch"] for region in stored["result"]
                     if region["type"] == "rectanglelabels")
    assert found >= 3  # the first picture's threshold keeps three
    assert np.isfinite([region["score"] for region in stored["result"]]).all()
