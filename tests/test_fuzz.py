"""Hostile input (issue 5): hundreds of malformed bodies against the FastAPI app. Every answer is a
JSON 2xx/4xx without a stack trace, and no file outside the allowed roots (models, Local Storage,
cache) is ever opened: a Python audit hook watches `open` during each request."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.settings import Settings
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPE_LABELS, config_xml
from tools.shapes_dataset import generate_image

SAM_CHECKPOINT = MODELS_DIR / "demo-tiny-sam.pt"
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_BYTES = 20_000_000
VALID_IMAGE = "/data/local-files/?d=shapes.png"
INTERACTIVE_CONFIG = config_xml(
    f"<KeyPointLabels name=\"kp\" toName=\"image\" smart=\"true\">{SHAPE_LABELS}</KeyPointLabels>",
    f"<RectangleLabels name=\"rect\" toName=\"image\" smart=\"true\">{SHAPE_LABELS}</RectangleLabels>",
    f"<BrushLabels name=\"brush\" toName=\"image\">{SHAPE_LABELS}</BrushLabels>",
)


# ---------------------------------------------------------------- watching file opens


class OpenWatch:
    """Paths under `forbidden` opened while `active`; the audit hook cannot be removed, so it idles."""

    def __init__(self) -> None:
        self.forbidden: tuple[str, ...] = ()
        self.active = False
        self.seen: list[str] = []

    def hook(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(self.forbidden):
                self.seen.append(path)


WATCH = OpenWatch()
sys.addaudithook(WATCH.hook)


# ---------------------------------------------------------------- hostile files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header for a huge image with a tiny compressed body: decoding it would need gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 65536, 9)) + png_chunk(b"IEND", b""))


def gif_declaring(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" \
        + struct.pack("<HH", width, height) + b"\x00\x02\x02D\x01\x00;"


@dataclass(frozen=True)
class Sandbox:
    image_root: Path
    model_root: Path
    outside: Path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    base = tmp_path_factory.mktemp("fuzz")
    outside, image_root, model_root = base / "outside", base / "images", base / "models"
    for directory in (outside, image_root, model_root, image_root / "sub"):
        directory.mkdir()
    shapes = cv2.imencode(".png", generate_image(5000).image)[1].tobytes()
    (outside / "canary.png").write_bytes(shapes)
    shutil.copyfile(MODELS_DIR / DEMO_DET, outside / "canary.pt")
    (outside / "secret.txt").write_text("secret")
    (image_root / "shapes.png").write_bytes(shapes)
    (image_root / "escape.png").symlink_to(outside / "canary.png")
    (image_root / "bomb.png").write_bytes(png_declaring(60_000, 60_000))
    (image_root / "bomb.gif").write_bytes(gif_declaring(65_000, 65_000))
    big = np.zeros((1500, 1500, 3), np.uint8)  # under PIL's own limit, over MAX_IMAGE_PIXELS
    (image_root / "big.png").write_bytes(cv2.imencode(".png", big)[1].tobytes())
    (image_root / "truncated.png").write_bytes(shapes[: len(shapes) // 2])
    (image_root / "empty.png").write_bytes(b"")
    (image_root / "text.png").write_text("not an image")
    (image_root / "xxe.svg").write_text('<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                                        '<svg xmlns="http://www.w3.org/2000/svg">&e;</svg>')
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, model_root / name)
    (model_root / "escape.pt").symlink_to(outside / "canary.pt")
    (model_root / "corrupt.pt").write_bytes(os.urandom(4096))
    (model_root / "image.pt").write_bytes(shapes)
    WATCH.forbidden = (str(outside.resolve()), "/etc/", "/root/.ssh", "/proc/self/environ")
    return Sandbox(image_root, model_root, outside)


@pytest.fixture(scope="module")
def client(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    values: dict[str, object] = {
        "model_root": str(sandbox.model_root), "yolo_det_model": DEMO_DET, "yolo_seg_model": DEMO_SEG,
        "local_files_document_root": str(sandbox.image_root), "cache_dir": str(tmp_path_factory.mktemp("cache")),
        "model_score_threshold": 0.25, "max_image_pixels": MAX_IMAGE_PIXELS, "max_request_bytes": MAX_REQUEST_BYTES,
        "download_timeout": 2.0, "device": "cpu",
    }
    if SAM_CHECKPOINT.is_file():
        values.update(model_name="sam", sam_config="demo", sam_checkpoint_file=str(SAM_CHECKPOINT))
    settings = Settings.load(values, environ={})
    with TestClient(create_app(settings, build_services(settings)), raise_server_exceptions=False) as test_client:
        yield test_client


# ---------------------------------------------------------------- the cases


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


RAW_BODIES: dict[str, bytes] = {
    "empty": b"", "spaces": b"   ", "null": b"null", "list": b"[]", "number": b"123", "string": b'"x"',
    "open-brace": b"{", "close-brace": b"}", "single-quotes": b"{'a': 1}", "invalid-utf8": b"\xff\xfe\xfd",
    "nan": b'{"tasks": NaN}', "infinity": b'{"tasks": Infinity}', "minus-infinity": b'{"a": -Infinity}',
    "float-overflow": b'{"tasks": [], "label_config": 1e999}', "huge-integer": b'{"tasks": ' + b"9" * 5000 + b"}",
    "deep-brackets": b"[" * 100_000, "deep-objects": nested(5000), "depth-70": nested(70),
    "lone-surrogate": b'{"tasks": "\\ud800"}', "nul": b"\x00", "trailing-garbage": b'{"a": 1}garbage',
    "bom": b'\xef\xbb\xbf{"tasks": []}', "utf16": '{"tasks": []}'.encode("utf-16"), "duplicate-keys": b'{"tasks": [], "tasks": 5}',
    "control-chars": b'{"tasks": "\x01\x02"}',
}

TRAVERSAL_MODEL_PATHS = [
    "../../../etc/passwd", "/etc/passwd", "..\\..\\etc\\passwd", "~/.ssh/id_rsa", "~root/.ssh/id_rsa",
    "sub/../../outside/canary.pt", "./../outside/canary.pt", "escape.pt", "%2e%2e/%2e%2e/etc/passwd", "a\x00.pt",
    "x" * 300 + ".pt", "/".join(["a"] * 1200), "file:///etc/passwd", "http://127.0.0.1:1/x.pt", " ", "C:\\Windows\\x.pt",
    "\\\\server\\share\\x.pt", "nonexistent.pt", "corrupt.pt", "image.pt", "../outside/canary.pt", "/proc/self/environ",
]

BAD_LABEL_CONFIGS = [
    "", " ", "<View>", "<<<", "not xml at all", "<View></View>", "<View><Foo name='x'/></View>",
    "<View><Image name='i' value='$image'/><RectangleLabels name='r' toName='nope'><Label value='a'/></RectangleLabels></View>",
    "<View><Image name='i'/><BrushLabels name='b' toName='i'/></View>",
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY e SYSTEM "file:///etc/passwd">]><View><Image name="image" value="$image"/>'
    '<RectangleLabels name="r" toName="image"><Label value="&e;"/></RectangleLabels></View>',
    '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol;" if i == 1 else f"&lol{i - 1};") * 10}">' for i in range(1, 10))
    + ']><View><Image name="image" value="$image"/><RectangleLabels name="r" toName="image"><Label value="&lol9;"/>'
      '</RectangleLabels></View>',
    ALL_CONTROLS_CONFIG.replace('name="rect"', 'name="rect" model_score_threshold="abc"'),
    ALL_CONTROLS_CONFIG.replace('name="rect"', 'name="rect" model_score_threshold="2"'),
    ALL_CONTROLS_CONFIG.replace('name="rect"', 'name="rect" model_score_threshold="nan"'),
    ALL_CONTROLS_CONFIG.replace('name="rect"', 'name="rect" model_score_threshold="-1e999"'),
    ALL_CONTROLS_CONFIG.replace('name="rect"', 'name="rect" model_skip="maybe"'),
    config_xml("<RectangleLabels name=\"r\" toName=\"image\">" + "".join(f"<Label value=\"l{i}\"/>" for i in range(20000))
               + "</RectangleLabels>"),
    config_xml("<Unknown name=\"u\" toName=\"image\"/><Text name=\"t\" value=\"$text\"/>"),
    config_xml("<PolygonLabels name=\"p\" toName=\"image\" predicted_values=\"x\"><Label value=\"circle\" "
               "predicted_values=\"../../etc/passwd\"/></PolygonLabels>"),
] + [ALL_CONTROLS_CONFIG.replace('name="rect"', f'name="rect" model_path="{path}"')
     for path in TRAVERSAL_MODEL_PATHS if '"' not in path]

HOSTILE_IMAGE_URLS: list[object] = [
    "file:///etc/passwd", "file://localhost/etc/passwd", "FILE:///etc/passwd", "ftp://127.0.0.1:1/x.png",
    "gopher://127.0.0.1:1/x", "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "/etc/passwd",
    "etc/passwd", "../../etc/passwd", "//127.0.0.1:1/x.png", "\\\\127.0.0.1\\share\\x.png", "C:/Windows/win.ini",
    "http://127.0.0.1:1/x.png", "http://[::1", "http://", "https://", "http://127.0.0.1:1/" + "a" * 10000,
    "http://127.0.0.1:1/x.png\r\nX-Injected: 1", "/data/local-files/?d=../../etc/passwd",
    "/data/local-files/?d=/etc/passwd", "/data/local-files/?d=%2e%2e/%2e%2e/etc/passwd",
    "/data/local-files/?d=..%2f..%2foutside%2fcanary.png", "/data/local-files/?d=../outside/canary.png",
    "/data/local-files/?d=escape.png", "/data/local-files/?d=", "/data/local-files/",
    "/data/local-files/?d=shapes.png&d=../outside/canary.png", "/data/local-files/?d=" + "a" * 5000,
    "/data/local-files/?d=" + "/".join(["a"] * 3000), "/data/local-files/?d=a%00b", "/data/local-files/?d=a\x00b",
    "/data/local-files/?d=sub/../../outside/secret.txt", "/data/local-files/?d=.", "/data/local-files/?d=/",
    "/data/local-files/?d=sub", "/data/local-files/?d=bomb.png", "/data/local-files/?d=bomb.gif",
    "/data/local-files/?d=big.png", "/data/local-files/?d=truncated.png", "/data/local-files/?d=empty.png",
    "/data/local-files/?d=text.png", "/data/local-files/?d=xxe.svg", "/data/upload/../../etc/passwd",
    "/data/upload/1/x.png", "s3://bucket/x.png", "gs://bucket/x.png", "azure-blob://container/x.png", "", " ", "\n",
    1, 1.5, None, [], {}, True, ["/data/local-files/?d=shapes.png"], {"url": "/data/local-files/?d=shapes.png"},
]

MALFORMED_TASK_LISTS: list[object] = [
    None, "tasks", 1, {}, {"id": 1}, True, [None], ["x"], [1], [[]], [{}], [{"data": None}], [{"data": []}],
    [{"data": "image"}], [{"id": [], "data": {"image": VALID_IMAGE}}], [{"id": {"a": 1}, "data": {"image": VALID_IMAGE}}],
    [{"id": 10**30, "data": {"image": VALID_IMAGE}}], [{"id": -1, "data": {"image": VALID_IMAGE}}],
    [{"data": {"wrong_key": VALID_IMAGE}}], [{"data": {"image": VALID_IMAGE}}] * 0,
]


def keypoint(value: object, **extra: object) -> dict:
    return {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "value": value, **extra}


def rectangle(value: object) -> dict:
    return {"type": "rectanglelabels", "from_name": "rect", "to_name": "image", "value": value}


MALFORMED_CONTEXTS: list[object] = [
    [], "context", 1, {"result": "x"}, {"result": {}}, {"result": 5}, {"result": [None, 1, "x", []]},
    {"result": [{"type": "keypointlabels"}]}, {"result": [keypoint(None)]}, {"result": [keypoint([])]},
    {"result": [keypoint({"x": "a", "y": "b", "keypointlabels": ["circle"]})]},
    {"result": [keypoint({"x": 1e308, "y": -1e308, "keypointlabels": ["circle"]})]},
    {"result": [keypoint({"x": 10**400, "y": 5, "keypointlabels": ["circle"]})]},
    {"result": [keypoint({"x": True, "y": False, "keypointlabels": ["circle"]})]},
    {"result": [keypoint({"x": 50, "y": 50})]}, {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": [1]})]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": "circle"})]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["nope"]})]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["circle"]}, from_name="missing")]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["circle"]}, is_positive="no")]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["circle"]}, from_name=["kp"])]},
    {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["circle"]})] * 500},
    {"result": [rectangle({"x": 10, "y": 10, "keypointlabels": ["circle"]})]},
    {"result": [rectangle({"x": 10, "y": 10, "width": -50, "height": -50, "rectanglelabels": ["circle"]})]},
    {"result": [rectangle({"x": 200, "y": 200, "width": 10, "height": 10, "rectanglelabels": ["circle"]})]},
    {"result": [rectangle({"x": 0, "y": 0, "width": 1e300, "height": 1e300, "rectanglelabels": ["circle"]})]},
    {"result": [rectangle({"x": 0, "y": 0, "width": 0, "height": 0, "rectanglelabels": ["circle"]})]},
    {"result": [rectangle({"x": 10, "y": 10, "width": 50, "height": 50, "rotation": 1e308,
                           "rectanglelabels": ["circle"]})]},
    {"result": [{"type": "polygonlabels", "from_name": "brush", "value": {"points": [[1, 2]]}}]},
]
CONTEXT_TASK_LISTS: list[object] = [[None], ["x"], [{"data": "image"}], [{"data": []}], [{"data": {"image": 5}}],
                                    [{"data": {"image": "file:///etc/passwd"}}], [{"data": {"image": "http://[::1"}}]]


@dataclass(frozen=True)
class Case:
    path: str
    body: bytes


def json_case(path: str, payload: object) -> Case:
    return Case(path, json.dumps(payload, allow_nan=True).encode())


def build_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for path in ("/setup", "/predict", "/webhook"):
        for name, body in RAW_BODIES.items():
            cases[f"raw-{name}{path}"] = Case(path, body)
    for index, config in enumerate(BAD_LABEL_CONFIGS):
        cases[f"setup-config-{index}"] = json_case("/setup", {"schema": config, "project": "1.1"})
        cases[f"predict-config-{index}"] = json_case("/predict", {"tasks": [{"id": 1, "data": {"image": VALID_IMAGE}}],
                                                                  "label_config": config})
    for index, value in enumerate([None, 1, [], {}, True, 1.5, "x" * 100_000, [1, 2], {"a": "b"}]):
        cases[f"setup-project-{index}"] = json_case("/setup", {"schema": ALL_CONTROLS_CONFIG, "project": value})
        cases[f"setup-hostname-{index}"] = json_case("/setup", {"schema": ALL_CONTROLS_CONFIG, "hostname": value})
        cases[f"setup-token-{index}"] = json_case("/setup", {"schema": ALL_CONTROLS_CONFIG, "access_token": value})
        cases[f"predict-params-{index}"] = json_case("/predict", {"tasks": [], "label_config": ALL_CONTROLS_CONFIG,
                                                                  "params": value})
        cases[f"webhook-action-{index}"] = json_case("/webhook", {"action": value, "project": value})
    for index, url in enumerate(HOSTILE_IMAGE_URLS):
        cases[f"predict-url-{index}"] = json_case("/predict", {"tasks": [{"id": index, "data": {"image": url}}],
                                                               "label_config": ALL_CONTROLS_CONFIG})
    for index, tasks in enumerate(MALFORMED_TASK_LISTS):
        cases[f"predict-tasks-{index}"] = json_case("/predict", {"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    for index, context in enumerate(MALFORMED_CONTEXTS):
        cases[f"predict-context-{index}"] = json_case("/predict", {
            "tasks": [{"id": 1, "data": {"image": VALID_IMAGE}}], "label_config": INTERACTIVE_CONFIG,
            "params": {"context": context}})
    click = {"result": [keypoint({"x": 50, "y": 50, "keypointlabels": ["circle"]})]}
    for index, tasks in enumerate(CONTEXT_TASK_LISTS):
        cases[f"predict-context-tasks-{index}"] = json_case("/predict", {
            "tasks": tasks, "label_config": INTERACTIVE_CONFIG, "params": {"context": click}})
    return cases


CASES = build_cases()


def test_the_watch_sees_a_read_outside_the_roots(sandbox: Sandbox) -> None:
    WATCH.seen.clear()
    WATCH.active = True
    try:
        (sandbox.image_root / "escape.png").read_bytes()
    finally:
        WATCH.active = False
    assert WATCH.seen == [str((sandbox.outside / "canary.png").resolve())]


def test_there_are_at_least_200_cases() -> None:
    assert len(CASES) >= 200


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_body_is_answered_without_5xx_or_reading_outside(name: str, client: TestClient) -> None:
    case = CASES[name]
    WATCH.seen.clear()
    WATCH.active = True
    try:
        response = client.post(case.path, content=case.body, headers={"content-type": "application/json"})
    finally:
        WATCH.active = False
    assert WATCH.seen == [], f"opened outside the allowed roots: {WATCH.seen}"
    assert response.status_code < 500, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert response.json()["error"]
    elif case.path == "/predict":
        tasks = json.loads(case.body)["tasks"]
        results = response.json()["results"]
        assert len(results) == len(tasks)
        if name.startswith("predict-url"):
            assert results[0] == []


def test_hostile_tasks_do_not_stop_the_good_one_in_the_same_request(client: TestClient) -> None:
    urls = [url for url in HOSTILE_IMAGE_URLS if isinstance(url, str)] + [VALID_IMAGE]
    tasks = [{"id": index, "data": {"image": url}} for index, url in enumerate(urls)]
    WATCH.seen.clear()
    WATCH.active = True
    try:
        response = client.post("/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    finally:
        WATCH.active = False
    assert WATCH.seen == []
    results = response.json()["results"]
    assert results[:-1] == [[]] * (len(urls) - 1) and results[-1]["result"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50_mb_body_is_refused_with_413(client: TestClient, chunked: bool) -> None:
    body = b'{"tasks": [], "pad": "' + b"x" * 50_000_000 + b'"}'
    content = (body[i:i + 1_000_000] for i in range(0, len(body), 1_000_000)) if chunked else body
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.json()["error"]


@pytest.mark.parametrize("method,path", [("GET", "/predict"), ("PUT", "/setup"), ("DELETE", "/health"),
                                         ("GET", "/../../etc/passwd"), ("GET", "/data/local-files/?d=../../etc/passwd"),
                                         ("POST", "/health"), ("PATCH", "/webhook")])
def test_unknown_routes_and_methods_are_4xx(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert 400 <= response.status_code < 500


def test_server_still_serves_after_the_fuzzing(client: TestClient) -> None:
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": VALID_IMAGE}}],
                                             "label_config": ALL_CONTROLS_CONFIG})
    assert response.status_code == 200 and response.json()["results"][0]["result"]
    assert client.get("/health").json()["status"] == "UP"
