"""tools.cvat_function: the backend's models as a CVAT auto-annotation function, checked with the real
cvat-sdk (spec validation, the driver's label mapping) and cvat-cli (against a stand-in CVAT server),
and decoded back to the backend's own Label Studio regions."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from cvat_sdk import models
from cvat_sdk.auto_annotation import DetectionFunctionSpec
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask, encode_mask
from cvat_cli._internal.agent_driver_detection import AgentDetectionFunctionDriver
from fastapi.testclient import TestClient
from PIL import Image

from backend.serving.app import build_services, create_app
from formats.geometry import (ls_rect_corners, ls_rect_to_box, ls_rect_to_cvat_rectangle, mask_to_cvat_rle,
                              percent_to_pixels)
from formats.rle import ls_rle_to_mask
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT, SHAPES_SEEDS, demo_settings, local_url
from tests.fake_cvat import FakeCvat, FakeTask
from tools.annotate_options import label_config_xml
from tools.cvat_function import BackendDetectionFunction, CvatFunctionError, create
from tools.shapes_dataset import CLASS_NAMES, generate_image

SHAPES = {"boxes": DEMO_DET, "polygons": DEMO_SEG, "masks": DEMO_SEG}
DEMO_POSE = "demo-shapes-pose.pt"
DEMO_SAM = {"yolo_sam": True, "model_name": "sam", "sam_config": "demo", "sam_checkpoint_file": str(MODELS_DIR / "demo-tiny-sam.pt")}
THRESHOLD = 0.25  # the backend test client's MODEL_SCORE_THRESHOLD


@pytest.fixture(scope="module")
def make_function(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., BackendDetectionFunction]:
    """create(**parameters) on the demo models; functions with the same parameters are built once."""
    functions: dict[tuple, BackendDetectionFunction] = {}
    cache_dir = str(tmp_path_factory.mktemp("cvat-cache"))

    def make(**parameters: object) -> BackendDetectionFunction:
        key = tuple(sorted((k, str(v)) for k, v in parameters.items()))
        if key not in functions:
            functions[key] = create(model_root=str(MODELS_DIR), cache_dir=cache_dir, **parameters)
        return functions[key]

    return make


def context(conf_threshold: float | None = THRESHOLD, conv_mask_to_poly: bool = False) -> _DetectionFunctionContextImpl:
    return _DetectionFunctionContextImpl(frame_name="frame.png", conf_threshold=conf_threshold,
                                         conv_mask_to_poly=conv_mask_to_poly)


def frame(image_root: Path, seed: int) -> Image.Image:
    """The frame as CVAT hands it to a function: the PNG's pixels, the same file the backend reads."""
    with Image.open(image_root / f"shapes_{seed}.png") as image:
        return image.convert("RGB")


def dataset_labels(label_type: str = "any", names: tuple[str, ...] = CLASS_NAMES) -> list[models.Label]:
    return [models.Label._new_from_openapi_data(id=100 + index, name=name, type=label_type, attributes=[], sublabels=[])
            for index, name in enumerate(names)]


def mapped(function: BackendDetectionFunction, shapes: list, label_type: str = "any", conv_mask_to_poly: bool = False,
           frame_index: int = 3) -> list[models.LabeledShapeRequest]:
    """The shapes after the SDK driver's own validation and label mapping (it raises BadFunctionError)."""
    names = tuple(label.name for label in function.spec.labels)
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, dataset_labels(label_type, names),
                               allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)
    tags, remapped = mapper.validate_and_remap(copy.deepcopy(shapes), frame_index)
    assert tags == [] and len(remapped) == len(shapes)
    return remapped


def backend_regions(client: TestClient, shape: str, seed: int) -> list[dict]:
    """What the backend's own /predict answers for the image with the same labeling config."""
    config = label_config_xml(list(CLASS_NAMES), shape)
    tasks = [{"id": seed, "data": {"image": local_url(f"shapes_{seed}.png")}}]
    response = client.post("/predict", json={"tasks": tasks, "label_config": config})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["result"]


def assert_shape_is_region(cvat_shape: models.LabeledShapeRequest, region: dict) -> None:
    """The CVAT shape holds exactly the region's pixels: box within 0.5 px, mask pixel for pixel, same polygon."""
    value, width, height = region["value"], region["original_width"], region["original_height"]
    label = value[region["type"]][0]
    assert CLASS_NAMES[cvat_shape.label_id] == label and cvat_shape.frame == 0
    points = np.asarray(cvat_shape.points, dtype=np.float64)
    if region["type"] == "rectanglelabels":
        assert cvat_shape.type.value == "rectangle" and cvat_shape.rotation == 0
        assert np.abs(points - np.array(ls_rect_to_box(value, width, height))).max() <= 0.5
    elif region["type"] == "polygonlabels":
        assert cvat_shape.type.value == "polygon"
        np.testing.assert_allclose(points.reshape(-1, 2), percent_to_pixels(np.array(value["points"]), width, height), atol=1e-6)
    else:
        assert cvat_shape.type.value == "mask"
        decoded = decode_mask(cvat_shape.points, image_width=width, image_height=height)
        np.testing.assert_array_equal(decoded, ls_rle_to_mask(value["rle"], width, height))


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize("shape, label_type", [("boxes", "rectangle"), ("polygons", "polygon"), ("masks", "mask")])
def test_spec_lists_the_models_classes_and_passes_the_sdks_validation(make_function, shape: str, label_type: str) -> None:
    function = make_function(yolo_det_model=DEMO_DET, yolo_seg_model=DEMO_SEG, shape=shape)
    spec = function.spec
    assert isinstance(spec, DetectionFunctionSpec)
    DetectionFunctionSpec(labels=spec.labels)  # the SDK's validators run again on a fresh spec
    assert [(label.name, label.id, label.type) for label in spec.labels] == [
        (name, index, label_type) for index, name in enumerate(CLASS_NAMES)]
    # What `cvat-cli function create-native` registers in CVAT for the function.
    fields = AgentDetectionFunctionDriver.get_remote_function_fields(spec)
    assert fields == {"labels_v2": [{"name": name, "attributes": [], "type": label_type} for name in CLASS_NAMES]}
    # The driver maps it to a task with the same label names, typed or not; other types are refused.
    mapped(function, [], label_type)
    with pytest.raises(Exception, match="has type"):
        mapped(function, [], "points")


# ---------------------------------------------------------------- detect


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes_are_the_backends_own_regions_and_pass_the_driver(make_function, client: TestClient, image_root: Path, shape: str) -> None:
    function = make_function(**{"yolo_det_model" if shape == "boxes" else "yolo_seg_model": SHAPES[shape]}, shape=shape)
    assert function.shape == shape
    found = 0
    for seed in SHAPES_SEEDS:
        shapes = function.detect(context(), frame(image_root, seed))
        regions = backend_regions(client, shape, seed)
        assert len(shapes) == len(regions)
        for cvat_shape, region in zip(shapes, regions):
            assert_shape_is_region(cvat_shape, region)
        for remapped in mapped(function, shapes, {"boxes": "rectangle", "polygons": "polygon", "masks": "mask"}[shape]):
            assert remapped.label_id >= 100 and remapped.frame == 3 and remapped.source == "auto"
        found += len(shapes)
    assert found >= len(SHAPES_SEEDS)


def test_conf_threshold_overrides_the_default_threshold(make_function, client: TestClient, image_root: Path) -> None:
    function = make_function(yolo_det_model=DEMO_DET, shape="boxes", model_score_threshold=0.9)
    kept_by_threshold = {0.9: 0, 0.5: 0}
    for seed in SHAPES_SEEDS:
        regions = backend_regions(client, "boxes", seed)  # every region scoring at least 0.25
        image = frame(image_root, seed)
        assert len(function.detect(context(conf_threshold=None), image)) == sum(r["score"] >= 0.9 for r in regions)
        for threshold in (0.5, THRESHOLD):
            expected = [region for region in regions if region["score"] >= threshold]
            shapes = function.detect(context(conf_threshold=threshold), image)
            assert len(shapes) == len(expected)
            for cvat_shape, region in zip(shapes, expected):
                assert_shape_is_region(cvat_shape, region)
        kept_by_threshold[0.9] += sum(r["score"] >= 0.9 for r in regions)
        kept_by_threshold[0.5] += sum(r["score"] >= 0.5 for r in regions)
    assert kept_by_threshold[0.5] > kept_by_threshold[0.9]  # the thresholds made a difference


def test_conv_mask_to_poly_answers_the_backends_polygons(make_function, image_root: Path) -> None:
    masks = make_function(yolo_seg_model=DEMO_SEG, shape="masks")
    polygons = make_function(yolo_seg_model=DEMO_SEG, shape="polygons")
    for seed in SHAPES_SEEDS[:4]:
        image = frame(image_root, seed)
        converted = masks.detect(context(conv_mask_to_poly=True), image)
        assert [s.to_dict() for s in converted] == [s.to_dict() for s in polygons.detect(context(), image)]
        assert all(s.type.value == "polygon" for s in converted)
        mapped(masks, converted, "polygon", conv_mask_to_poly=True)


def test_yolo_sam_gives_sam_masks_for_a_detection_models_boxes(make_function, make_client, image_root: Path) -> None:
    function = make_function(yolo_det_model=DEMO_DET, shape="masks", **DEMO_SAM)
    client = make_client(yolo_seg_model=DEMO_DET, **DEMO_SAM)  # the backend answering BrushLabels from the same boxes
    found = 0
    for seed in SHAPES_SEEDS[:6]:
        shapes = function.detect(context(), frame(image_root, seed))
        regions = backend_regions(client, "masks", seed)
        assert len(shapes) == len(regions)
        for cvat_shape, region in zip(shapes, regions):
            assert_shape_is_region(cvat_shape, region)
        found += len(shapes)
    assert found > 0


def test_frames_with_alpha_or_a_palette_are_predicted_on_their_colors(make_function, image_root: Path) -> None:
    function = make_function(yolo_seg_model=DEMO_SEG, shape="masks")
    image = frame(image_root, SHAPES_SEEDS[0])
    expected = [s.to_dict() for s in function.detect(context(), image)]
    assert expected
    for other in (image.convert("RGBA"), image.convert("RGBA").convert("RGBa")):
        assert [s.to_dict() for s in function.detect(context(), other)] == expected
    palette = image.quantize(256)
    assert [s.to_dict() for s in function.detect(context(), palette)] == [
        s.to_dict() for s in function.detect(context(), palette.convert("RGB"))]


def test_an_obb_model_answers_rotated_rectangles_of_the_backends_regions(tmp_path: Path) -> None:
    from ultralytics import YOLO

    YOLO("yolov8n-obb.yaml").save(tmp_path / "obb.pt")  # random weights: boxes only at a threshold of 0
    images = tmp_path / "images"
    images.mkdir()
    names = [f"shapes_{seed}.png" for seed in SHAPES_SEEDS[:3]]
    for name, seed in zip(names, SHAPES_SEEDS):
        cv2.imwrite(str(images / name), generate_image(seed, size=64).image)
    small = {"model_root": str(tmp_path), "yolo_obb_model": "obb.pt", "yolo_imgsz": 64}  # few candidates, quick NMS
    function = create(cache_dir=str(tmp_path / "cache"), **small)
    assert function.shape == "boxes" and function.rotated
    assert {label.type for label in function.spec.labels} == {"rectangle"}
    settings = demo_settings(images, tmp_path / "backend-cache", **small)
    config = label_config_xml([label.name for label in function.spec.labels], "boxes").replace(
        "<RectangleLabels ", '<RectangleLabels model_obb="true" model_score_threshold="0" ')
    rotated = 0
    with TestClient(create_app(settings, build_services(settings))) as client:
        for name in names:
            with Image.open(images / name) as image:
                shapes = function.detect(context(conf_threshold=0.0), image.convert("RGB"))
            response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url(name)}}],
                                                     "label_config": config})
            regions = response.json()["results"][0]["result"]
            assert len(shapes) == len(regions) > 0
            for cvat_shape, region in zip(shapes, regions):
                assert function.spec.labels[cvat_shape.label_id].name == region["value"]["rectanglelabels"][0]
                assert cvat_shape.type.value == "rectangle"
                x1, y1, x2, y2 = cvat_shape.points
                theta = np.radians(cvat_shape.rotation)
                center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
                corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) - center
                turned = corners @ np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]]) + center
                assert np.abs(turned - ls_rect_corners(region["value"], 64, 64)).max() <= 0.5
                rotated += cvat_shape.rotation != 0
            mapped(function, shapes, "rectangle")
    assert rotated > 0
    with pytest.raises(CvatFunctionError) as masks:
        create(model_root=str(tmp_path), yolo_obb_model="obb.pt", shape="masks", cache_dir=str(tmp_path / "cache"))
    assert "OBB model" in one_sentence(masks)


def test_a_pose_model_answers_skeletons_of_the_backends_keypoints(make_function, make_client, image_root: Path) -> None:
    function = make_function(yolo_pose_model=DEMO_POSE)
    keypoints = [str(k) for k in range(4)]  # the demo pose model's keypoints (Ultralytics' default names)
    assert [(label.name, label.type, [(sl.name, sl.id, sl.type) for sl in label.sublabels]) for label in function.spec.labels] == [
        (name, "skeleton", [(k, index, "points") for index, k in enumerate(keypoints)]) for name in ("triangle", "square")]
    DetectionFunctionSpec(labels=function.spec.labels)
    labels = "".join(f'<Label value="{name} {k}" model_index="{k}" predicted_values="{name}"/>'
                     for name in ("triangle", "square") for k in keypoints)
    config = f'<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">{labels}</KeyPointLabels></View>'
    client = make_client(yolo_pose_model=DEMO_POSE)
    found = 0
    for seed in SHAPES_SEEDS:
        skeletons = function.detect(context(), frame(image_root, seed))
        response = client.post("/predict", json={"tasks": [{"id": seed, "data": {"image": local_url(f"shapes_{seed}.png")}}],
                                                 "label_config": config})
        objects: dict[str, list[dict]] = {}  # the backend's keypoints by object: later ones name the first as parentID
        for region in response.json()["results"][0]["result"]:
            objects.setdefault(region.get("parentID") or region["id"], []).append(region)
        assert len(skeletons) == len(objects)
        for skeleton, regions in zip(skeletons, objects.values()):
            class_name = regions[0]["value"]["keypointlabels"][0].split()[0]
            assert skeleton.type.value == "skeleton" and function.spec.labels[skeleton.label_id].name == class_name
            by_index = {int(r["value"]["keypointlabels"][0].split()[1]): r for r in regions}
            assert [element.label_id for element in skeleton.elements] == list(range(4))
            for element in skeleton.elements:
                region = by_index.get(element.label_id)
                assert element.outside == (region is None)
                if region is not None:
                    np.testing.assert_allclose(element.points, percent_to_pixels(
                        np.array([region["value"]["x"], region["value"]["y"]]), region["original_width"], region["original_height"]), atol=1e-6)
        skeleton_labels = [models.Label._new_from_openapi_data(
            id=100 + index, name=label.name, type="skeleton", attributes=[], sublabels=[
                models.Sublabel._new_from_openapi_data(id=200 + 10 * index + sl.id, name=sl.name, type="points", attributes=[])
                for sl in label.sublabels]) for index, label in enumerate(function.spec.labels)]
        mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, skeleton_labels,
                                   allow_unmatched_labels=False, conv_mask_to_poly=False)
        assert len(mapper.validate_and_remap(copy.deepcopy(skeletons), 0)[1]) == len(skeletons)
        found += len(skeletons)
    assert found >= len(SHAPES_SEEDS)


def test_a_detection_model_alone_defaults_to_boxes(make_function) -> None:
    assert make_function(yolo_det_model=DEMO_DET).shape == "boxes"
    assert make_function(yolo_seg_model=DEMO_SEG).shape == "polygons"
    assert make_function(model=str(MODELS_DIR / DEMO_SEG), shape="masks").shape == "masks"


# ---------------------------------------------------------------- bad usage


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    return message


def test_bad_usage_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(CvatFunctionError) as unknown:
        create(model_root=str(MODELS_DIR), yolo_seg_modle=DEMO_SEG)
    assert "unknown -p parameter 'yolo_seg_modle'" in one_sentence(unknown)
    with pytest.raises(CvatFunctionError) as missing:
        create(model_root=str(MODELS_DIR), yolo_seg_model="no-such-model.pt", cache_dir=str(tmp_path))
    assert "YOLO_SEG_MODEL" in one_sentence(missing) and "no-such-model.pt" in str(missing.value)
    with pytest.raises(CvatFunctionError) as bad_shape:
        create(model_root=str(MODELS_DIR), yolo_seg_model=DEMO_SEG, shape="ellipses")
    assert "-p shape must be boxes, polygons, masks" in one_sentence(bad_shape)
    with pytest.raises(CvatFunctionError) as no_masks:
        create(model_root=str(MODELS_DIR), yolo_det_model=DEMO_DET, shape="masks", cache_dir=str(tmp_path))
    assert "is a detection model" in one_sentence(no_masks) and "yolo_sam" in str(no_masks.value)
    with pytest.raises(CvatFunctionError) as bad_value:
        create(model_root=str(MODELS_DIR), yolo_seg_model=DEMO_SEG, model_score_threshold="high")
    assert "MODEL_SCORE_THRESHOLD" in one_sentence(bad_value)
    broken_toml = tmp_path / "settings.toml"
    broken_toml.write_text("model_root = \n")
    with pytest.raises(CvatFunctionError) as bad_config:
        create(config=str(broken_toml))
    assert "-p config" in one_sentence(bad_config) and "not valid TOML" in str(bad_config.value)


def test_a_classification_model_is_refused_with_one_sentence(tmp_path: Path) -> None:
    from ultralytics import YOLO

    YOLO("yolov8n-cls.yaml").save(tmp_path / "cls.pt")  # random weights, built offline
    with pytest.raises(CvatFunctionError) as refused:
        create(model_root=str(tmp_path), yolo_seg_model="cls.pt", cache_dir=str(tmp_path / "cache"))
    assert "'classify' model" in one_sentence(refused)
    with pytest.raises(CvatFunctionError) as pose_shape:
        create(model_root=str(MODELS_DIR), yolo_pose_model=DEMO_POSE, shape="masks", cache_dir=str(tmp_path / "cache"))
    assert "pose model" in one_sentence(pose_shape)


def test_settings_come_from_a_toml_file_with_p_overrides(tmp_path: Path, image_root: Path) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(f'model_root = "{MODELS_DIR}"\nyolo_det_model = "{DEMO_DET}"\nmodel_score_threshold = 0.9\n'
                             f'cache_dir = "{tmp_path / "cache"}"\n')
    function = create(config=str(settings_file), model_score_threshold=THRESHOLD)
    assert function.shape == "boxes" and [label.name for label in function.spec.labels] == list(CLASS_NAMES)
    assert sum(len(function.detect(context(conf_threshold=None), frame(image_root, seed))) for seed in SHAPES_SEEDS) > 0


# ---------------------------------------------------------------- pure converters


def test_mask_to_cvat_rle_is_the_sdks_encoding() -> None:
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((4, 3), bool), np.eye(6, dtype=bool), np.eye(6, dtype=bool)[::-1]]
    masks += [rng.random((int(h), int(w))) < rng.random() for h, w in rng.integers(1, 60, size=(200, 2))]
    for mask in masks:
        assert mask_to_cvat_rle(mask) == encode_mask(mask)
        if mask.any():
            np.testing.assert_array_equal(decode_mask(mask_to_cvat_rle(mask), image_width=mask.shape[1],
                                                      image_height=mask.shape[0]), mask)


@pytest.mark.parametrize("rotation", [0.0, 30.0, 90.0, 200.0, 359.0])
def test_rotated_rectangle_turns_around_its_centre_in_cvat(rotation: float) -> None:
    value = {"x": 20.0, "y": 30.0, "width": 25.0, "height": 10.0, "rotation": rotation}
    (x1, y1, x2, y2), cvat_rotation = ls_rect_to_cvat_rectangle(value, 640, 480)
    assert cvat_rotation == rotation
    theta = np.radians(cvat_rotation)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]) - center
    turned = corners @ np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]]) + center
    np.testing.assert_allclose(turned, ls_rect_corners(value, 640, 480), atol=1e-9)


# ---------------------------------------------------------------- cvat-cli against a stand-in CVAT


def cli_parameters(**parameters: object) -> list[str]:
    """cvat-cli's `-p NAME=TYPE:VALUE` arguments."""
    return [arg for name, value in parameters.items() for arg in ("-p", f"{name}={type(value).__name__}:{value}")]


def run_cvat_cli(server: FakeCvat, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVAT_ACCESS_TOKEN": server.token, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "cvat_cli", "--server-host", server.url, *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)


def detected_shapes(function: BackendDetectionFunction, image_root: Path, seeds: list[int], conf_threshold: float | None,
                    task_label: Callable[[str], str]) -> list[dict]:
    """What the function answers in process for the frames: (type, frame, the task's label name, points)."""
    shapes = [{"type": cvat_shape.type.value, "frame": index, "label": task_label(CLASS_NAMES[cvat_shape.label_id]),
               "points": list(cvat_shape.points)}
              for index, seed in enumerate(seeds)
              for cvat_shape in function.detect(context(conf_threshold), frame(image_root, seed))]
    assert shapes, "the demo model found nothing on these frames"
    return shapes


def uploaded_shapes(task: FakeTask, shapes: list[dict]) -> list[dict]:
    return [{"type": s["type"], "frame": s["frame"], "label": task.label_name(s["label_id"]), "points": s["points"]}
            for s in shapes]


@pytest.mark.slow
def test_cvat_cli_auto_annotates_a_task_end_to_end(make_function, tmp_path: Path, image_root: Path) -> None:
    seeds = list(SHAPES_SEEDS[:4])
    task = FakeTask(7, [(f"shapes_{seed}.png", generate_image(seed).image) for seed in seeds],
                    [{"name": name, "type": "mask"} for name in reversed(CLASS_NAMES)])
    parameters = {"yolo_seg_model": DEMO_SEG, "shape": "masks", "model_score_threshold": THRESHOLD}
    with FakeCvat(task, token="secret") as server:
        result = run_cvat_cli(server, tmp_path, "task", "auto-annotate", "7", "--function-module", "tools.cvat_function",
                              *cli_parameters(model_root=str(MODELS_DIR), cache_dir=str(tmp_path / "cache"), **parameters),
                              "--clear-existing")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {request.split("?")[0].rstrip("/") for request in server.requests} == {
        "GET /api/server/about", "GET /api/tasks/7", "GET /api/labels", "GET /api/tasks/7/data/meta",
        "GET /api/tasks/7/data", "PUT /api/tasks/7/annotations"}
    assert [method for method, _, _ in task.uploads] == ["PUT"]
    uploaded = task.uploads[0][2]["shapes"]
    assert uploaded_shapes(task, uploaded) == detected_shapes(make_function(**parameters), image_root, seeds, None, str)
    assert all(s["source"] == "auto" for s in uploaded)


def test_cvat_cli_reports_bad_parameters_in_one_line(tmp_path: Path) -> None:
    task = FakeTask(7, [("a.png", generate_image(5000).image)], [{"name": "circle", "type": "any"}])
    with FakeCvat(task, token="secret") as server:
        result = run_cvat_cli(server, tmp_path, "task", "auto-annotate", "7", "--function-module", "tools.cvat_function",
                              "-p", "yolo_seg_modle=str:x.pt")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "CRITICAL" in line] == [
        next(line for line in result.stderr.splitlines() if "unknown -p parameter 'yolo_seg_modle'" in line)]
    assert task.uploads == []


@pytest.mark.slow
def test_cvat_cli_registers_the_function_and_its_agent_answers_the_ui(make_function, tmp_path: Path, image_root: Path) -> None:
    seeds = list(SHAPES_SEEDS[4:7])
    task = FakeTask(7, [(f"shapes_{seed}.png", generate_image(seed).image) for seed in seeds],
                    [{"name": name.upper(), "type": "polygon"} for name in CLASS_NAMES])
    parameters = cli_parameters(model_root=str(MODELS_DIR), yolo_seg_model=DEMO_SEG, shape="masks",
                                cache_dir=str(tmp_path / "cache"))
    # The UI's "Automatic annotation" of the task, labels mapped by the user, masks converted to polygons.
    request = {"type": "annotate_task", "task": 7, "threshold": THRESHOLD, "conv_mask_to_poly": True,
               "mapping": {name: {"name": name.upper()} for name in CLASS_NAMES}}
    with FakeCvat(task, token="secret") as server:
        created = run_cvat_cli(server, tmp_path, "function", "create-native", "YOLO demo masks",
                               "--function-module", "tools.cvat_function", *parameters)
        server.pending.append({"ar_id": "ar-1", "ar_params": request})
        agent = run_cvat_cli(server, tmp_path, "function", "run-agent", "1", "--burst",
                             "--function-module", "tools.cvat_function", *parameters)
    assert created.returncode == 0, created.stderr[-3000:]
    assert created.stdout.splitlines()[-1] == "1"  # the new function's id, for `function run-agent 1 ...`
    assert server.functions == [{"provider": "native", "name": "YOLO demo masks", "visibility": "private", "kind": "detector",
                                 "labels_v2": [{"name": name, "attributes": [], "type": "mask"} for name in CLASS_NAMES]}]
    assert agent.returncode == 0, agent.stderr[-3000:]
    outcome, answer = server.answers["ar-1"]
    assert outcome == "complete", answer
    polygons = make_function(yolo_seg_model=DEMO_SEG, shape="polygons")
    assert uploaded_shapes(task, answer["annotations"]["shapes"]) == detected_shapes(polygons, image_root, seeds, THRESHOLD, str.upper)
