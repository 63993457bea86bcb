"""model_version names the models that answer a labeling config: file name and a short content hash."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.models import versions
from backend.serving.app import build_services, create_app
from formats.label_config import parse_label_config
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPE_LABELS, config_xml, demo_settings, local_url

RECT = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>')
RECT_AND_POLY = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>',
                           f'<PolygonLabels name="poly" toName="image">{SHAPE_LABELS}</PolygonLabels>')
SMART = config_xml(f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>',
                   '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="circle"/></KeyPointLabels>')
TAG = r"[0-9a-f]{7}"


@pytest.fixture()
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in (DEMO_DET, DEMO_SEG, "demo-tiny-sam.pt"):
        shutil.copyfile(MODELS_DIR / name, root / name)
    return root


def app(image_root: Path, cache_dir: Path, model_root: Path, **overrides: object) -> TestClient:
    settings = demo_settings(image_root, cache_dir, model_root=str(model_root), **overrides)
    return TestClient(create_app(settings, build_services(settings)))


def setup_version(client: TestClient, config: str, project: str = "1.1700000000") -> str:
    response = client.post("/setup", json={"project": project, "schema": config})
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def predicted_versions(client: TestClient, config: str) -> set[str]:
    tasks = [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}]
    response = client.post("/predict", json={"tasks": tasks, "label_config": config, "project": "1.1700000000"})
    assert response.status_code == 200, response.text
    return {result["model_version"] for result in response.json()["results"]}


def test_version_names_the_models_the_config_uses(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root)
    assert re.fullmatch(f"demo-shapes-det@{TAG}", setup_version(client, RECT))
    assert re.fullmatch(f"demo-shapes-det@{TAG},demo-shapes-seg@{TAG}", setup_version(client, RECT_AND_POLY))
    assert predicted_versions(client, RECT) == {setup_version(client, RECT)}
    assert predicted_versions(client, RECT_AND_POLY) == {setup_version(client, RECT_AND_POLY)}
    assert client.get("/versions").json()["versions"][0] == client.get("/health").json()["model_version"]
    assert setup_version(client, RECT_AND_POLY) in client.get("/versions").json()["versions"]


def test_version_is_stable_across_workers_and_restarts(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    first = app(image_root, tmp_path, model_root)
    version = setup_version(first, RECT_AND_POLY)
    assert setup_version(first, RECT_AND_POLY) == version
    versions._digests.clear()  # a new process knows no digests
    second = app(image_root, tmp_path / "other-worker", model_root)
    assert setup_version(second, RECT_AND_POLY) == version
    assert predicted_versions(second, RECT_AND_POLY) == {version}


def test_version_changes_with_model_path(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root)
    shutil.copyfile(model_root / DEMO_DET, model_root / "boxes-v2.pt")
    renamed = RECT.replace('name="rect"', 'name="rect" model_path="boxes-v2.pt"')
    default, other = setup_version(client, RECT), setup_version(client, renamed)
    assert other.startswith("boxes-v2@") and other != default
    assert default.split("@")[1] == other.split("@")[1]  # same content, same hash


def test_a_replaced_model_file_gives_a_new_version_and_is_loaded_again(image_root: Path, tmp_path: Path,
                                                                       model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root)
    before = setup_version(client, RECT)
    assert predicted_versions(client, RECT) == {before}
    services = client.app.state.get_services()
    choice = services.default_choices()[0]
    assert services.yolo.get(choice).task == "detect"
    replacement = model_root / "incoming.pt"
    shutil.copyfile(model_root / DEMO_SEG, replacement)
    replacement.replace(model_root / DEMO_DET)  # how a retrained model is usually published
    after = setup_version(client, RECT)
    assert after != before and after.startswith("demo-shapes-det@")
    assert predicted_versions(client, RECT) == {after}
    assert services.yolo.get(choice).task == "segment"  # the new file answers, not the cached old model
    assert sum(key[1] == str(model_root / DEMO_DET) for key in services.models.loaded()) == 1  # old one dropped


def test_sam_is_part_of_the_version_when_the_config_prompts_it(image_root: Path, tmp_path: Path,
                                                               model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root, model_name="sam", sam_config="demo",
                 sam_checkpoint_file="demo-tiny-sam.pt")
    assert re.fullmatch(f"demo-shapes-det@{TAG},demo-tiny-sam@{TAG}", setup_version(client, SMART))
    assert "demo-tiny-sam" not in setup_version(client, RECT)
    other_sam = app(image_root, tmp_path, model_root, model_name="sam", sam_config="demo",
                    sam_checkpoint_file="demo-tiny-sam.pt")
    assert setup_version(other_sam, SMART) == setup_version(client, SMART)


def test_model_version_setting_overrides_everything(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root, model_version="team-v7")
    assert setup_version(client, RECT_AND_POLY) == "team-v7"
    assert predicted_versions(client, RECT_AND_POLY) == {"team-v7"}
    assert client.get("/health").json()["model_version"] == "team-v7"
    assert client.get("/versions").json()["versions"] == ["team-v7"]


def test_digest_is_computed_once_per_file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    reads = []
    original = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: reads.append(self) or original(self, *a, **k))
    first = versions.model_tag(model)
    assert versions.model_tag(model) == first and len(reads) == 1
    model.write_bytes(b"other weights")
    reads.clear()
    assert versions.model_tag(model) != first and len(reads) == 1
    assert versions.model_tag(tmp_path / "missing.pt") == "missing"


def test_a_config_without_models_is_named_none(image_root: Path, tmp_path: Path, model_root: Path) -> None:
    client = app(image_root, tmp_path, model_root)
    config = config_xml('<TextArea name="c" toName="image"/>')  # (Choices have a classification model)
    assert client.app.state.get_services().model_version(parse_label_config(config)) == "none"
