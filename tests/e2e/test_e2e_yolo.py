"""A real Label Studio 1.23.2 and the backend started with the user's command: connect, retrieve
predictions from the Data Manager, and check what Label Studio stored against the backend's own YOLO."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from formats.geometry import ls_rect_to_box, mask_iou, percent_to_pixels, polygons_to_mask
from backend.sources.label_studio import AccessTokens, Credentials
from backend.models.yolo import Detections, YoloModel
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR
from tests.e2e.conftest import (BASIC_AUTH, LS_LEGACY_TOKEN, LS_VERSION, SCORE_THRESHOLD, Backend, LabelStudio,
                                MakeProject, Project, StartBackend, shapes_rgb)
from tests.e2e.servers import free_port
from tools.shapes_dataset import CLASS_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REGION_TYPES = {"rectanglelabels", "polygonlabels", "brushlabels"}
BOX_TOLERANCE_PX = 0.5


@pytest.fixture(scope="module")
def own_yolo() -> dict[str, YoloModel]:
    """The backend's YOLO adapter in this process, for the answers the stored predictions must match."""
    return {task: YoloModel(MODELS_DIR / name, name, "cpu", False, 0)
            for task, name in (("detect", DEMO_DET), ("segment", DEMO_SEG))}


def own_detections(model: YoloModel, seed: int) -> Detections:
    return model.predict([shapes_rgb(seed)], SCORE_THRESHOLD)[0]


def regions_of(prediction: dict, region_type: str) -> list[dict]:
    return [region for region in prediction["result"] if region["type"] == region_type]


def brush_mask(region: dict) -> np.ndarray:
    width, height = region["original_width"], region["original_height"]
    values = np.asarray(decode_rle(region["value"]["rle"]))
    assert values.size == width * height * 4, "brush RLE does not decode to the image's RGBA size"
    return values.reshape(height, width, 4)[:, :, 3] > 0


def stored_prediction(label_studio: LabelStudio, task_id: int) -> dict:
    stored = label_studio.client.predictions(task_id)
    assert len(stored) == 1, f"task {task_id}: expected one prediction, Label Studio stored {len(stored)}"
    return stored[0]


def assert_rectangles_match(prediction: dict, expected: Detections) -> None:
    stored = sorted(((r["value"]["rectanglelabels"][0], ls_rect_to_box(r["value"], r["original_width"], r["original_height"]),
                      r["score"]) for r in regions_of(prediction, "rectanglelabels")), key=lambda item: -item[2])
    wanted = sorted(((name, tuple(box), float(score)) for name, box, score
                     in zip(expected.class_names, expected.boxes, expected.scores)), key=lambda item: -item[2])
    assert [label for label, _, _ in stored] == [name for name, _, _ in wanted]
    for (_, box, score), (_, own_box, own_score) in zip(stored, wanted):
        assert np.allclose(box, own_box, atol=BOX_TOLERANCE_PX), (box, own_box)
        assert score == pytest.approx(own_score, abs=1e-4)


# ---------------------------------------------------------------- connecting


def test_label_studio_is_the_pinned_version(label_studio: LabelStudio) -> None:
    assert label_studio.client.request("GET", "/api/version").json()["release"] == LS_VERSION


def test_model_is_connected_with_the_backends_version(label_studio: LabelStudio, yolo_backend: Backend,
                                                      shapes_project: Project) -> None:
    assert shapes_project.connected_state == "Connected"
    state = label_studio.client.model_state(shapes_project.ml_id)  # re-checks /health and /setup
    assert (state.readable_state, state.error_message) == ("Connected", None)
    assert state.model_version == yolo_backend.health()["model_version"]


def test_label_studio_refuses_a_url_without_a_backend(label_studio: LabelStudio, shapes_project: Project) -> None:
    answer = label_studio.client.try_connect_model(shapes_project.id, f"http://127.0.0.1:{free_port()}", "nothing here")
    assert answer.status_code == 400
    assert "health check failed" in answer.text


# ---------------------------------------------------------------- what Label Studio stored


def test_every_task_gets_one_prediction_from_the_backend(label_studio: LabelStudio, yolo_backend: Backend,
                                                         shapes_project: Project) -> None:
    assert shapes_project.retrieve_answer["processed_items"] == len(shapes_project.task_seeds)
    version = yolo_backend.health()["model_version"]
    types_seen: set[str] = set()
    for task_id in shapes_project.task_seeds:
        prediction = stored_prediction(label_studio, task_id)
        assert prediction["model_version"] == version
        types_seen |= {region["type"] for region in prediction["result"]}
    assert types_seen == REGION_TYPES


def test_stored_regions_are_well_formed(label_studio: LabelStudio, shapes_project: Project) -> None:
    for task_id, seed in shapes_project.task_seeds.items():
        height, width = shapes_rgb(seed).shape[:2]
        for region in stored_prediction(label_studio, task_id)["result"]:
            value = region["value"]
            assert (region["to_name"], region["original_width"], region["original_height"]) == ("image", width, height)
            assert value[region["type"]][0] in CLASS_NAMES and 0.0 < region["score"] <= 1.0
            if region["type"] == "rectanglelabels":
                assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-6
                assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-6
            elif region["type"] == "polygonlabels":
                points = np.asarray(value["points"])
                assert points.shape[0] >= 3 and points.min() >= 0 and points.max() <= 100
            else:
                assert brush_mask(region).any()


def test_rectangles_match_the_backends_own_yolo(label_studio: LabelStudio, shapes_project: Project,
                                                own_yolo: dict[str, YoloModel]) -> None:
    for task_id, seed in shapes_project.task_seeds.items():
        assert_rectangles_match(stored_prediction(label_studio, task_id), own_detections(own_yolo["detect"], seed))


def test_masks_match_the_backends_own_yolo(label_studio: LabelStudio, shapes_project: Project,
                                           own_yolo: dict[str, YoloModel]) -> None:
    for task_id, seed in shapes_project.task_seeds.items():
        prediction = stored_prediction(label_studio, task_id)
        expected = own_detections(own_yolo["segment"], seed)
        stored = sorted(((r["value"]["brushlabels"][0], brush_mask(r), r["score"])
                         for r in regions_of(prediction, "brushlabels")), key=lambda item: -item[2])
        wanted = sorted(((name, mask, float(score)) for name, mask, score
                         in zip(expected.class_names, expected.masks, expected.scores) if mask.any()),
                        key=lambda item: -item[2])
        assert [label for label, _, _ in stored] == [name for name, _, _ in wanted]
        for (_, mask, _), (_, own_mask, _) in zip(stored, wanted):
            assert mask_iou(mask, own_mask) >= 0.99
        height, width = shapes_rgb(seed).shape[:2]
        for label in set(expected.class_names):
            polygons = [percent_to_pixels(np.asarray(r["value"]["points"]), width, height)
                        for r in regions_of(prediction, "polygonlabels") if r["value"]["polygonlabels"] == [label]]
            label_masks = np.logical_or.reduce([m for name, m in zip(expected.class_names, expected.masks) if name == label])
            assert mask_iou(polygons_to_mask(polygons, width, height), label_masks) >= 0.9


# ---------------------------------------------------------------- tokens


def test_a_refused_setup_token_is_an_error_with_the_fix(label_studio: LabelStudio, start_backend: StartBackend,
                                                        make_project: MakeProject) -> None:
    """Label Studio 1.23 sends the user's legacy token in /setup (kept with its hostname) but refuses it while legacy
    tokens are off (a new organization's default). A backend given nothing else says so at /setup, in an ERROR line
    with the fix and in /health; its downloads fail with the same hint, and the task gets no regions."""
    assert not label_studio.client.legacy_tokens_enabled()
    backend = start_backend(personal_access_token=False)
    project = make_project(backend, "e2e legacy tokens off", seeds=(5004,))
    record = backend.setup_record(project.id)
    assert record["hostname"] == label_studio.setup_hostname
    # Not a personal access token (a JWT): the user's legacy token, even though 1.23 turns legacy tokens off.
    assert record["access_token"] == LS_LEGACY_TOKEN
    assert record["label_config"] == project.label_config
    (task_id,) = project.task_seeds
    assert all(prediction["result"] == [] for prediction in label_studio.client.predictions(task_id))
    log = backend.server.log_text()
    errors = [line for line in log.splitlines() if "[ERROR]" in line and "refuses the token Label Studio sent in /setup" in line]
    assert errors, backend.server.log_tail()
    assert "legacy token authentication has been disabled" in errors[0]
    assert "Personal Access Token" in errors[0] and "LABEL_STUDIO_API_KEY=<that token>" in errors[0]
    assert list(backend.health()["label_studio_token_refused"]) == [label_studio.setup_hostname]
    assert "failed with HTTP 401: Label Studio refused the backend's token" in log


def test_personal_access_token_downloads_uploads(label_studio: LabelStudio, start_backend: StartBackend,
                                                 make_project: MakeProject, own_yolo: dict[str, YoloModel]) -> None:
    """LABEL_STUDIO_API_KEY set to a personal access token (as every backend here is started): the backend
    exchanges it for access tokens, and Label Studio accepts them."""
    backend = start_backend()
    project = make_project(backend, "e2e personal access token", seeds=(5005,))
    (task_id, seed), = project.task_seeds.items()
    assert_rectangles_match(stored_prediction(label_studio, task_id), own_detections(own_yolo["detect"], seed))
    assert backend.health()["label_studio_token_refused"] == {}
    assert "[ERROR]" not in backend.server.log_text()
    # the same exchange, in this process, against the real server
    token = label_studio.personal_access_token()
    assert AccessTokens(timeout=30).bearer_or_legacy(Credentials(label_studio.url, token)) != token


def test_backend_with_basic_auth_gets_label_studios_credentials(label_studio: LabelStudio, yolo_backend: Backend,
                                                                shapes_project: Project) -> None:
    """The suite's backend runs with BASIC_AUTH_USER and BASIC_AUTH_PASS and is connected with them through
    Connect Model's basic auth fields: Label Studio connects and predicts (the tests above), and is refused
    without the right password."""
    assert yolo_backend.basic_auth == BASIC_AUTH and shapes_project.connected_state == "Connected"
    for wrong in (None, (BASIC_AUTH[0], "wrong")):
        refused = label_studio.client.try_connect_model(shapes_project.id, yolo_backend.url, "wrong credentials", wrong)
        assert refused.status_code == 400 and "authentication parameters" in refused.text
