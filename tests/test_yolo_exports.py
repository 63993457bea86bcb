"""Ultralytics exports (`.onnx`, `*_openvino_model/`, `.torchscript`) load like `.pt` checkpoints: task
and class names from their metadata, confined to MODEL_ROOT, and `/predict` answers with the same
classes and nearly the same boxes and masks as the checkpoint they were exported from. (`.engine`
needs TensorRT on an NVIDIA GPU: loaded by the same code, not run here.)"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from formats.geometry import ls_rect_to_box, mask_iou
from formats.rle import ls_rle_to_mask
from backend.models import yolo_files
from backend.models.cache import ModelPathError, resolve_model_path
from backend.models.yolo import YoloModel
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, SHAPES_SEEDS, local_url

pytest.importorskip("onnxruntime")
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
# (score, box corners in pixels, brush mask IoU): float32 runtimes differ from torch in the last digits;
# OpenVINO's CPU plugin may compute in bfloat16 where the processor has it
TOLERANCES = {".onnx": (0.005, 0.5, 0.99), ".torchscript": (0.005, 0.5, 0.99), "_openvino_model": (0.03, 2.0, 0.95)}


def export(model_root: Path, checkpoint: str, fmt: str) -> Path:
    from ultralytics import YOLO

    options = {"simplify": False} if fmt == "onnx" else {}  # onnxslim is not needed to run the export
    return Path(YOLO(str(model_root / checkpoint)).export(format=fmt, verbose=False, **options))


@pytest.fixture(scope="module")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_ROOT with the demo checkpoints and their ONNX, TorchScript (and OpenVINO) exports."""
    root = tmp_path_factory.mktemp("exports")
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
        for fmt in ("onnx", "torchscript") + (("openvino",) if HAS_OPENVINO else ()):
            export(root, name, fmt)
    return root


def predict(client: TestClient, seeds: list[int]) -> list[list[dict]]:
    tasks = [{"id": seed, "data": {"image": local_url(f"shapes_{seed}.png")}} for seed in seeds]
    response = client.post("/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    assert response.status_code == 200, response.text
    return [result["result"] for result in response.json()["results"]]


def by_control(regions: list[dict], control: str) -> list[dict]:
    return sorted((r for r in regions if r["from_name"] == control),
                  key=lambda r: (r["value"].get("x", 0), r["value"].get("y", 0)))


@pytest.mark.parametrize("suffix", [".onnx", ".torchscript",
                                    pytest.param("_openvino_model", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))])
def test_exported_models_predict_like_their_checkpoints(make_client: Callable[..., TestClient], export_root: Path,
                                                        suffix: str) -> None:
    seeds = list(SHAPES_SEEDS)[:6]
    checkpoint = predict(make_client(model_root=str(export_root)), seeds)
    exported = predict(make_client(model_root=str(export_root), yolo_det_model=DEMO_DET.removesuffix(".pt") + suffix,
                                   yolo_seg_model=DEMO_SEG.removesuffix(".pt") + suffix), seeds)
    assert sum(len(regions) for regions in checkpoint) > 0
    score_tolerance, box_tolerance, min_iou = TOLERANCES[suffix]
    for expected, found in zip(checkpoint, exported):
        for control in ("rect", "poly", "brush"):
            want, got = by_control(expected, control), by_control(found, control)
            assert [r["value"][f"{r['type']}"] for r in got] == [r["value"][f"{r['type']}"] for r in want]
            for a, b in zip(want, got):
                width, height = a["original_width"], a["original_height"]
                assert abs(a["score"] - b["score"]) < score_tolerance
                if control == "rect":
                    np.testing.assert_allclose(ls_rect_to_box(b["value"], width, height),
                                               ls_rect_to_box(a["value"], width, height), atol=box_tolerance)
                if control == "brush":
                    iou = mask_iou(ls_rle_to_mask(a["value"]["rle"], width, height),
                                   ls_rle_to_mask(b["value"]["rle"], width, height))
                    assert iou > min_iou


def test_task_and_names_come_from_the_metadata_not_the_file_name(export_root: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "best.onnx"  # Ultralytics would guess "detect" from this name
    shutil.copyfile(export_root / DEMO_SEG.replace(".pt", ".onnx"), renamed)
    model = YoloModel(renamed, "YOLO_SEG_MODEL", "cpu", False, 0)
    assert model.task == "segment" and model.has_masks
    assert model.class_names == ("circle", "square", "triangle")


def test_an_export_without_metadata_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import onnx

    (tmp_path / "other.onnx").write_bytes(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])).SerializeToString())
    with pytest.raises(ModelPathError, match="'other.onnx' has no Ultralytics metadata.*yolo export model=best.pt format=onnx"):
        YoloModel(tmp_path / "other.onnx", "YOLO_DET_MODEL", "cpu", False, 0)


def test_a_missing_runtime_is_named(export_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(yolo_files.RUNTIMES, "onnx", ("no_such_runtime_module", "pip install onnxruntime (or onnxruntime-gpu)"))
    with pytest.raises(ModelPathError, match="YOLO_DET_MODEL: 'demo-shapes-det.onnx' is a onnx export, which needs pip install onnxruntime"):
        YoloModel(export_root / "demo-shapes-det.onnx", "YOLO_DET_MODEL", "cpu", False, 0)


def test_a_fixed_size_export_ignores_another_yolo_imgsz(export_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = YoloModel(export_root / "demo-shapes-det.onnx", "YOLO_DET_MODEL", "cpu", False, 320)
    assert model.imgsz is None
    assert "was exported for a fixed" in caplog.text and "YOLO_IMGSZ=320 does not apply" in caplog.text
    assert len(model.predict([np.zeros((100, 80, 3), np.uint8)], 0.25)) == 1


def test_exports_are_confined_to_model_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", tmp_path / "outside"
    (outside / "x_openvino_model").mkdir(parents=True)
    root.mkdir()
    (root / "linked_openvino_model").symlink_to(outside / "x_openvino_model", target_is_directory=True)
    (root / "linked.onnx").symlink_to(outside / "x.onnx")
    for name in ("linked_openvino_model", "linked.onnx", "../outside/x_openvino_model", str(outside / "x.onnx")):
        with pytest.raises(ModelPathError, match="refused"):
            resolve_model_path(root, name, "model_path")
    assert yolo_files.model_exists(outside / "x_openvino_model") and not yolo_files.model_exists(outside)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed")
def test_a_label_config_can_name_an_openvino_directory(make_client: Callable[..., TestClient], export_root: Path,
                                                       tmp_path: Path) -> None:
    config = ALL_CONTROLS_CONFIG.replace('<BrushLabels name="brush" toName="image"',
                                         '<BrushLabels name="brush" toName="image" model_path="demo-shapes-seg_openvino_model"')
    client = make_client(model_root=str(export_root), cache_dir=tmp_path)  # its own /setup store
    assert client.post("/setup", json={"project": "5.1", "schema": config, "hostname": "", "access_token": ""}).status_code == 200
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("shapes_5000.png")}}],
                                             "label_config": config})
    assert response.status_code == 200, response.text
    brushes = [r for r in response.json()["results"][0]["result"] if r["from_name"] == "brush"]
    assert brushes and "demo-shapes-seg_openvino_model" in response.json()["results"][0]["model_version"]
