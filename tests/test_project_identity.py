"""Issue 20's attacks, each shown failing: only Label Studio steers the backend.

Callers here are on loopback (what protected mode answers) unless a test says otherwise; the attacker's
server is a stand-in that records what it receives.
"""

from __future__ import annotations

import json
import logging
import shutil
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import cv2
import pytest
from fastapi.testclient import TestClient

from backend.models.cache import ModelPathError, resolve_model_path
from backend.serving.app import build_services, create_app
from backend.sources.label_studio import Credentials, SetupStore
from backend.training.registry import promoted_version
from backend.training.dataset import DatasetError, read_project
from backend.training.registry import ProjectModels
from backend.training.service import TrainingService
from tests.conftest import DEMO_DET, DEMO_SEG, config_xml, demo_settings
from tests.fake_label_studio import FakeLabelStudio, LoopbackServer, QuietHandler
from tests.test_training_jobs import model_root  # noqa: F401 - the fixture: MODEL_ROOT with the demo models
from tests.training_stand_in import TOKEN as STAND_IN_TOKEN, TrainingLabelStudio
from tools.shapes_dataset import generate_image

REAL = "12.1700000000"  # the real project: id 12, created 2023-11-14T22:13:20Z
REAL_CREATED_AT = "2023-11-14T22:13:20Z"
CLAIMED = "12.1"  # the same id, claimed by another server
CONFIG = config_xml('<RectangleLabels name="rect" toName="image"><Label value="circle"/><Label value="square"/>'
                    '<Label value="triangle"/></RectangleLabels>')
KEY = "operator-key-0123456789"
UPLOAD = "upload/1/shape.png"
REMOTE = ("10.1.2.3", 40000)


def downloads(server: FakeLabelStudio) -> list[tuple[str, str | None]]:
    """What the server was asked for, without /setup's token check (backend/sources/token_check.py)."""
    return [(path, auth) for path, auth in server.requests if not path.startswith("/api/current-user/")]


def png() -> bytes:
    ok, encoded = cv2.imencode(".png", generate_image(5000).image)
    assert ok
    return encoded.tobytes()


def app_client(image_root: Path, tmp_path: Path, model_root: Path, address: tuple[str, int] = ("127.0.0.1", 1),
               **overrides: object) -> TestClient:
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(model_root), **overrides)
    return TestClient(create_app(settings, build_services(settings)), client=address)


def publish(root: Path, project: str, weights: str, promote: bool = True) -> Path:
    models = ProjectModels(root, project)
    card = {"version": models.next_version(), "status": "promoted" if promote else "rejected", "task": "detect",
            "classes": ["circle", "square", "triangle"]}
    return models.publish(card["version"], root / weights, card, promote)


def setup(client: TestClient, project: str, hostname: str, token: str):  # noqa: ANN201 - a response
    return client.post("/setup", json={"project": project, "schema": CONFIG, "hostname": hostname,
                                       "access_token": token})


def predict(client: TestClient, project: str, url: str) -> dict:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": url}}], "label_config": CONFIG,
                                             "project": project})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def start_training(project_id: object, created_at: object = REAL_CREATED_AT, action: str = "START_TRAINING") -> dict:
    return {"action": action, "project": {"id": project_id, "created_at": created_at, "title": "p"}}


# ---------------------------------------------------------------- row 1: a claimed project id


def test_another_server_claiming_the_project_id_trains_apart_and_cannot_replace_the_served_model(
        image_root: Path, tmp_path: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatched = []
    monkeypatch.setattr(TrainingService, "_dispatch", lambda self, spec: dispatched.append(spec))
    publish(model_root, REAL, DEMO_DET)  # what the real project is served
    client = app_client(image_root, tmp_path, model_root)
    with FakeLabelStudio({}, "atk") as attacker:
        assert setup(client, CLAIMED, attacker.url, "atk").status_code == 200
        answer = client.post("/webhook", json=start_training(12, "1970-01-01T00:00:01Z"))
        assert answer.status_code == 201 and answer.json()["project"] == CLAIMED
        (spec,) = dispatched
        assert (spec.project, spec.hostname, spec.token) == (CLAIMED, attacker.url, "atk")
        publish(model_root, spec.project, DEMO_SEG)  # what the job could train and promote from the caller's data
    assert promoted_version(client.app.state.get_services().settings, REAL).relative_path == \
        f"projects/{REAL}/p12-v1.pt"
    assert predict(client, REAL, f"/data/local-files/?d=shapes_{5000}.png")["model_version"].startswith("p12-v1@")
    assert sorted(p.name for p in (model_root / "projects").iterdir()) == [CLAIMED, REAL]
    # a bare id or a bare-id webhook reaches neither
    assert promoted_version(client.app.state.get_services().settings, "12") is None
    refused = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 12}})
    assert refused.status_code == 400 and "created_at" in refused.json()["error"]


def test_a_job_refuses_a_project_created_at_another_time_than_its_uid(tmp_path: Path) -> None:
    """The training job reads the project from Label Studio and checks it is the one the uid names."""
    with TrainingLabelStudio(12, []) as ls:  # its projects were created at 1700000000
        credentials = Credentials(ls.url, STAND_IN_TOKEN)
        with pytest.raises(DatasetError, match=f"not the project {CLAIMED}"):
            read_project(credentials, CLAIMED, tmp_path / "claimed", 30)
        assert read_project(credentials, REAL, tmp_path / "real", 30).title == "training stand-in"


# ---------------------------------------------------------------- rows 2 and 4: hosts and tokens


def test_with_label_studio_url_set_the_key_never_goes_to_a_host_named_in_setup(
        image_root: Path, tmp_path: Path, model_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend.serving.services")
    with FakeLabelStudio({UPLOAD: png()}, KEY) as real, FakeLabelStudio({UPLOAD: png()}, "atk") as attacker:
        client = app_client(image_root, tmp_path, model_root, label_studio_url=real.url, label_studio_api_key=KEY)
        for _ in range(2):
            assert setup(client, REAL, attacker.url, "atk").status_code == 200
        predict(client, REAL, f"/{UPLOAD.replace('upload', 'data/upload')}")
        assert attacker.requests == []
        assert downloads(real) and all(auth == f"Token {KEY}" for _, auth in real.requests)
    said = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
    assert len(said) == 1 and attacker.url in said[0]


def test_setup_cannot_rebind_a_project_to_another_host_nor_erase_its_token(
        image_root: Path, tmp_path: Path, model_root: Path) -> None:
    with FakeLabelStudio({UPLOAD: png()}, KEY) as real, FakeLabelStudio({}, "atk") as attacker:
        client = app_client(image_root, tmp_path, model_root)
        assert setup(client, REAL, real.url, KEY).status_code == 200
        rebind = setup(client, REAL, attacker.url, "atk")
        assert rebind.status_code == 409
        message = rebind.json()["error"]
        assert real.url in message and "delete" in message and f"project-{REAL}.json" in message
        assert setup(client, REAL, real.url, "").status_code == 200  # an empty token keeps the stored one
        predict(client, REAL, "/data/upload/1/shape.png")
        assert attacker.requests == [] and downloads(real)[-1][1] == f"Token {KEY}"


def test_an_untrusted_setup_cannot_replace_a_trusted_token_but_a_trusted_one_takes_over_an_untrusted_binding(
        tmp_path: Path) -> None:
    store = SetupStore(tmp_path / "setup")
    store.save(REAL, "http://ls:8080", "real-token", CONFIG, trusted=True)
    store.save(REAL, "http://ls:8080", "other-token", CONFIG, trusted=False)
    assert store.load(REAL)["access_token"] == "real-token" and store.load(REAL)["trusted"] is True
    store.save("13.1", "http://attacker", "atk", CONFIG, trusted=False)
    store.save("13.1", "http://ls:8080", "real-token", CONFIG, trusted=True)
    assert (store.load("13.1")["hostname"], store.load("13.1")["trusted"]) == ("http://ls:8080", True)
    assert store.load("12") == {} and store.load("12.1700000000.5") == {}


# ---------------------------------------------------------------- row 3: downloads


def test_a_loopback_host_named_in_setup_is_trusted_only_for_label_studios_own_paths(
        image_root: Path, tmp_path: Path, model_root: Path) -> None:
    with FakeLabelStudio({UPLOAD: png(), "secret.png": png()}, KEY) as ls:
        client = app_client(image_root, tmp_path, model_root)
        assert setup(client, REAL, ls.url, KEY).status_code == 200
        predict(client, REAL, f"{ls.url}/secret.png")  # an absolute task URL: the URL policy refuses loopback
        assert downloads(ls) == []
        predict(client, REAL, f"{ls.url}/data/upload/1/shape.png")  # Label Studio's own path on its host
        assert downloads(ls) == [("/data/upload/1/shape.png", f"Token {KEY}")]


def test_a_host_named_by_an_unauthenticated_remote_caller_is_not_trusted_with_private_addresses(
        image_root: Path, tmp_path: Path, model_root: Path) -> None:
    with FakeLabelStudio({UPLOAD: png()}, KEY) as ls:
        client = app_client(image_root, tmp_path, model_root, REMOTE, allow_unauthenticated=True)
        assert setup(client, REAL, ls.url, KEY).status_code == 200
        predict(client, REAL, "/data/upload/1/shape.png")
        assert ls.requests == []  # neither a download nor /setup's token check


def test_the_token_does_not_follow_a_redirect_to_another_host(image_root: Path, tmp_path: Path,
                                                               model_root: Path) -> None:
    seen: list[str | None] = []

    class Elsewhere(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            seen.append(self.headers.get("Authorization"))
            self.reply(200, png())

    with LoopbackServer(Elsewhere) as elsewhere:
        class Redirecting(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(302)
                self.send_header("Location", f"{elsewhere.url}/shape.png")
                self.send_header("Content-Length", "0")
                self.end_headers()

        with LoopbackServer(Redirecting) as ls:
            client = app_client(image_root, tmp_path, model_root, allow_private_urls=True)
            assert setup(client, REAL, ls.url, KEY).status_code == 200
            predict(client, REAL, "/data/upload/1/shape.png")
    assert seen == [None]


# ---------------------------------------------------------------- rows 5 and 6: webhooks


def test_webhooks_for_projects_the_backend_cannot_reach_start_nothing(
        image_root: Path, tmp_path: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrainingService, "_dispatch", lambda self, spec: pytest.fail("a job was dispatched"))
    client = app_client(image_root, tmp_path, model_root, train_every=1)
    for project_id in range(100, 120):
        answer = client.post("/webhook", json=start_training(project_id))
        assert (answer.status_code, answer.json()["status"]) == (200, "ignored: unknown project")
    answer = client.post("/webhook", json=start_training(7, action="ANNOTATION_CREATED"))
    assert (answer.status_code, answer.json()["status"]) == (200, "ignored: unknown project")
    assert not (model_root / "projects").exists()


@pytest.mark.parametrize("project_id", [12.5, 12.0, 10**30, 2**31, 0, -1, True, "12", None])
def test_webhook_project_ids_must_be_positive_integers_below_2_31(
        image_root: Path, tmp_path: Path, model_root: Path, project_id: object) -> None:
    client = app_client(image_root, tmp_path, model_root, label_studio_url="http://127.0.0.1:9",
                        label_studio_api_key=KEY)
    answer = client.post("/webhook", json=start_training(project_id))
    assert answer.status_code == 400 and "project.id" in answer.json()["error"]
    assert not (model_root / "projects").exists()


def test_the_largest_project_id_is_accepted(image_root: Path, tmp_path: Path, model_root: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dispatched = []
    monkeypatch.setattr(TrainingService, "_dispatch", lambda self, spec: dispatched.append(spec))
    client = app_client(image_root, tmp_path, model_root, label_studio_url="http://127.0.0.1:9",
                        label_studio_api_key=KEY)
    answer = client.post("/webhook", json=start_training(2**31 - 1))
    assert answer.status_code == 201 and dispatched[0].project == f"{2**31 - 1}.1700000000"


@pytest.mark.parametrize("action", ["PROJECT_UPDATED", "TASKS_CREATED", "SOMETHING_NEW", "ANNOTATION_CREATED"])
def test_actions_the_backend_does_not_act_on_are_ignored_without_touching_the_disk(
        image_root: Path, tmp_path: Path, model_root: Path, action: str) -> None:
    client = app_client(image_root, tmp_path, model_root, label_studio_url="http://127.0.0.1:9",
                        label_studio_api_key=KEY)  # TRAIN_EVERY=0: annotation events are not acted on either
    answer = client.post("/webhook", json=start_training(12, action=action))
    assert answer.status_code == 200 and answer.json() == {"status": "ignored", "action": action}
    assert not (model_root / "projects").exists()


# ---------------------------------------------------------------- row 8: model paths


def test_model_path_cannot_name_a_projects_trained_models(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    publish(model_root, REAL, DEMO_DET)
    publish(model_root, REAL, DEMO_SEG, promote=False)  # a rejected candidate
    client = app_client(image_root, tmp_path, model_root)
    for version in (1, 2):
        name = f"projects/{REAL}/p12-v{version}.pt"
        config = CONFIG.replace('toName="image"', f'toName="image" model_path="{name}"')
        answer = client.post("/setup", json={"project": "13.1700000000", "schema": config})
        assert answer.status_code == 400 and "trained models" in answer.json()["error"]
        with pytest.raises(ModelPathError, match="serve only their own project"):
            resolve_model_path(model_root, name, "model_path")
        with pytest.raises(ModelPathError):
            resolve_model_path(model_root, f"./projects/../projects/{REAL}/p12-v{version}.pt", "model_path")
    assert resolve_model_path(model_root, f"projects/{REAL}/p12-v1.pt", "trained model", trained=True).is_file()


# ---------------------------------------------------------------- migration


def legacy_project(root: Path, project_id: int) -> Path:
    """MODEL_ROOT/projects/<id>/ as earlier versions wrote it: a promoted p<id>-v1."""
    folder = root / "projects" / str(project_id)
    folder.mkdir(parents=True)
    shutil.copyfile(root / DEMO_DET, folder / f"p{project_id}-v1.pt")
    (folder / f"p{project_id}-v1.json").write_text(json.dumps({"version": 1, "status": "promoted", "task": "detect"}))
    (folder / "promoted.json").write_text(json.dumps({"project": project_id, "version": 1, "task": "detect",
                                                      "file": f"p{project_id}-v1.pt", "classes": []}))
    (folder / "job.json").write_text(json.dumps({"project": project_id, "state": "promoted"}))
    return folder


def test_an_earlier_versions_project_folder_is_adopted_by_label_studios_own_setup(
        image_root: Path, tmp_path: Path, model_root: Path) -> None:
    legacy_project(model_root, 12)
    untrusted = app_client(image_root, tmp_path, model_root, REMOTE, allow_unauthenticated=True)
    assert setup(untrusted, CLAIMED, "", "").status_code == 200
    assert (model_root / "projects" / "12").is_dir()  # an unauthenticated remote caller adopts nothing
    client = app_client(image_root, tmp_path, model_root)
    assert setup(client, REAL, "", "").status_code == 200
    assert not (model_root / "projects" / "12").exists()
    settings = client.app.state.get_services().settings
    assert promoted_version(settings, REAL).relative_path == f"projects/{REAL}/p12-v1.pt"
    assert client.get("/health").json()["training"][0]["project"] == REAL
    assert setup(client, CLAIMED, "", "").status_code == 200
    assert promoted_version(settings, CLAIMED) is None  # adopted once, by the first
