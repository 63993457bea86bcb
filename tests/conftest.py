"""Shared fixtures: demo models, synthetic images served as Local Storage, an app factory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
import starlette.testclient
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.settings import Settings
from tools.shapes_dataset import generate_image

# Test clients call as a Label Studio on the same machine does: from loopback, which protected mode answers
# (backend/serving/access.py). Tests of other callers pass `client=(address, port)`.
_client_default = starlette.testclient.TestClient.__init__.__defaults__
assert _client_default[-1] in (("testclient", 50000), ("127.0.0.1", 50000))
starlette.testclient.TestClient.__init__.__defaults__ = (*_client_default[:-1], ("127.0.0.1", 50000))

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
LS_PROTOCOL_DIR = REPO_ROOT / "tests" / "data" / "ls-protocol"
DEMO_DET = "demo-shapes-det.pt"
DEMO_SEG = "demo-shapes-seg.pt"
SHAPES_SEEDS = range(5000, 5012)  # held out from the demo models' training seeds (0..359)


def ultralytics_asset(name: str) -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / name


def load_protocol_fixture(name: str) -> dict:
    return json.loads((LS_PROTOCOL_DIR / name).read_text())


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Local Storage root holding shapes PNGs and Ultralytics' real photos."""
    root = tmp_path_factory.mktemp("local-files")
    for seed in SHAPES_SEEDS:
        cv2.imwrite(str(root / f"shapes_{seed}.png"), generate_image(seed).image)
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copyfile(ultralytics_asset(name), root / name)
    return root


def local_url(name: str) -> str:
    return f"/data/local-files/?d={name}"


def demo_settings(image_root: Path, cache_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_root": str(MODELS_DIR),
        "yolo_det_model": DEMO_DET,
        "yolo_seg_model": DEMO_SEG,
        "local_files_document_root": str(image_root),
        "cache_dir": str(cache_dir),
        "model_score_threshold": 0.25,
    }
    values.update(overrides)
    return Settings.load(values, environ={})


@pytest.fixture(scope="session")
def make_client(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TestClient]]:
    """TestClient factory; clients with the same settings share services (models load once)."""
    clients: dict[tuple, TestClient] = {}
    cache_dir = tmp_path_factory.mktemp("cache")

    def make(**overrides: object) -> TestClient:
        key = tuple(sorted((k, str(v)) for k, v in overrides.items()))
        if key not in clients:
            settings = demo_settings(image_root, overrides.pop("cache_dir", cache_dir), **overrides)
            clients[key] = TestClient(create_app(settings, build_services(settings)))
        return clients[key]

    yield make
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def config_xml(*controls: str) -> str:
    return "<View><Image name=\"image\" value=\"$image\"/>" + "".join(controls) + "</View>"


SHAPE_LABELS = "<Label value=\"circle\"/><Label value=\"square\"/><Label value=\"triangle\"/>"
ALL_CONTROLS_CONFIG = config_xml(
    f"<RectangleLabels name=\"rect\" toName=\"image\">{SHAPE_LABELS}</RectangleLabels>",
    f"<PolygonLabels name=\"poly\" toName=\"image\">{SHAPE_LABELS}</PolygonLabels>",
    f"<BrushLabels name=\"brush\" toName=\"image\">{SHAPE_LABELS}</BrushLabels>",
)
