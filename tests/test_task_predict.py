"""Pose, OBB, classification and video through /predict: decoded regions equal Ultralytics' own output
for the same model and input, and a model of the wrong task for a control is a 400 naming both."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from ultralytics import YOLO

from backend.serving.app import build_services, create_app
from formats.geometry import ls_rect_corners
from backend.models.yolo import INFERENCE_THREADS
from tests.conftest import MODELS_DIR, REPO_ROOT, demo_settings, local_url
from backend.settings import Settings
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image, write_video
from tools.track_video import video_tasks

CONFIGS = REPO_ROOT / "label_configs"
SEEDS = range(90_000, 90_006)  # held out: the demo models trained on seeds below 1,000
CONF = 0.25  # the client's MODEL_SCORE_THRESHOLD


@pytest.fixture(scope="module")
def task_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("task-files")
    for seed in SEEDS:
        cv2.imwrite(str(root / f"pose_{seed}.png"), generate_pose_image(seed)[0])
        cv2.imwrite(str(root / f"obb_{seed}.png"), generate_obb_image(seed)[0])
        cv2.imwrite(str(root / f"cls_{seed}.png"), generate_classify_image(seed)[0])
    write_video(root / "shapes.mp4", seconds=2.0)
    (root / "not-a-video.mp4").write_bytes(b"not a video")
    return root


@pytest.fixture(scope="module")
def client(task_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = demo_settings(task_root, tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings, build_services(settings))) as test_client:
        yield test_client


def predict(client: TestClient, config: str, urls: list[dict]) -> list[list[dict]]:
    response = client.post("/predict", json={"tasks": [{"id": i + 1, "data": data} for i, data in enumerate(urls)],
                                             "label_config": config})
    assert response.status_code == 200, response.text
    return [result["result"] for result in response.json()["results"]]


def ultralytics_results(model_file: str, paths: list[Path]) -> list:
    """Ultralytics' own results for the same batch as the backend's (one request of fewer than BATCH_SIZE
    tasks is one forward pass), with its torch thread count: another batch size or thread count rounds
    the last bits of float32 differently."""
    model = YOLO(str(MODELS_DIR / model_file))
    model.predict(str(paths[0]), verbose=False)
    torch.set_num_threads(INFERENCE_THREADS)
    return model.predict([str(path) for path in paths], conf=CONF, verbose=False, batch=len(paths))


def test_obb_corners_equal_ultralytics_within_half_a_pixel(client: TestClient, task_root: Path) -> None:
    config = (CONFIGS / "demo-shapes-obb.xml").read_text()
    paths = [task_root / f"obb_{seed}.png" for seed in SEEDS]
    answers = predict(client, config, [{"image": local_url(path.name)} for path in paths])
    compared = 0
    for regions, result in zip(answers, ultralytics_results("demo-shapes-obb.pt", paths)):
        corners = result.obb.xyxyxyxy.cpu().numpy()
        assert len(regions) == len(corners)
        for region, expected, score, cls in zip(regions, corners, result.obb.conf.tolist(), result.obb.cls.tolist()):
            height, width = result.orig_shape
            got = ls_rect_corners(region["value"], width, height)
            assert max(np.linalg.norm(got - corner, axis=1).min() for corner in expected) < 0.5
            assert region["value"]["rectanglelabels"] == [result.names[int(cls)]]
            assert region["score"] == round(score, 6)
            compared += 1
    assert compared >= 3


def test_pose_keypoints_equal_ultralytics(client: TestClient, task_root: Path) -> None:
    config = (CONFIGS / "demo-shapes-pose.xml").read_text()
    paths = [task_root / f"pose_{seed}.png" for seed in SEEDS]
    answers = predict(client, config, [{"image": local_url(path.name)} for path in paths])
    names = {("triangle", 0): "apex", ("triangle", 1): "base right", ("triangle", 2): "base left",
             ("square", 0): "top-left", ("square", 1): "top-right", ("square", 2): "bottom-right", ("square", 3): "bottom-left"}
    compared = 0
    for regions, result in zip(answers, ultralytics_results("demo-shapes-pose.pt", paths)):
        height, width = result.orig_shape
        boxes = [r for r in regions if r["type"] == "rectanglelabels"]
        points = [r for r in regions if r["type"] == "keypointlabels"]
        objects = zip(result.boxes.xyxy.cpu().numpy(), result.boxes.cls.tolist(), result.keypoints.xy.cpu().numpy(),
                      result.keypoints.conf.cpu().numpy())
        expected_boxes = 0
        for expected_box, cls, xy, kp_conf in objects:
            class_name = result.names[int(cls)]
            wanted = [(names[class_name, k], xy[k], kp_conf[k]) for k in range(len(xy))
                      if (class_name, k) in names and kp_conf[k] >= 0.5]  # model_point_threshold="0.5"
            if not wanted:
                continue  # no keypoint to show: no box either
            box = boxes[expected_boxes]
            expected_boxes += 1
            value = box["value"]
            got_box = np.array([value["x"] * width, value["y"] * height, (value["x"] + value["width"]) * width,
                                (value["y"] + value["height"]) * height]) / 100
            np.testing.assert_allclose(got_box, expected_box, atol=1e-6)
            assert value["rectanglelabels"] == [class_name] and box["from_name"] == "shape"
            children = [p for p in points if p.get("parentID") == box["id"]]
            assert [c["value"]["keypointlabels"] for c in children] == [[label] for label, _, _ in wanted]
            for child, (_, point, point_conf) in zip(children, wanted):
                got = np.array([child["value"]["x"] * width, child["value"]["y"] * height]) / 100
                np.testing.assert_allclose(got, point, atol=1e-6)
                assert child["value"]["width"] == 1.0 and child["score"] == round(float(point_conf), 6)
                compared += 1
        assert len(boxes) == expected_boxes
        assert all(any(p.get("parentID") == b["id"] for b in boxes) for p in points)
    assert compared >= 6


@pytest.mark.parametrize("choice", ["single", "multiple"])
def test_classification_probabilities_equal_ultralytics(client: TestClient, task_root: Path, choice: str) -> None:
    config = (CONFIGS / "demo-shapes-classify.xml").read_text().replace('choice="single"', f'choice="{choice}" model_score_threshold="0.2"')
    paths = [task_root / f"cls_{seed}.png" for seed in SEEDS]
    answers = predict(client, config, [{"image": local_url(path.name)} for path in paths])
    for regions, result in zip(answers, ultralytics_results("demo-shapes-cls.pt", paths)):
        probs = result.probs.data.cpu().numpy().astype(np.float64)
        if choice == "single":
            chosen = [int(np.argmax(probs))]
        else:
            chosen = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= 0.2]
        (region,) = regions
        assert region["value"]["choices"] == [result.names[i].capitalize() for i in chosen]
        assert region["score"] == round(float(np.mean(probs[chosen])), 6)


def test_video_tracks_equal_ultralytics_track_frame_for_frame(client: TestClient, task_root: Path) -> None:
    config = (CONFIGS / "demo-shapes-video.xml").read_text()
    (regions,) = predict(client, config, [{"video": local_url("shapes.mp4")}])
    video = cv2.VideoCapture(str(task_root / "shapes.mp4"))
    frame_count, width, height = (int(video.get(p)) for p in (cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                                               cv2.CAP_PROP_FRAME_HEIGHT))
    video.release()
    model = YOLO(str(MODELS_DIR / "demo-shapes-det.pt"))
    tracks: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    classes: dict[int, Counter] = defaultdict(Counter)
    for index, result in enumerate(model.track(str(task_root / "shapes.mp4"), stream=True, tracker="bytetrack.yaml",
                                               conf=0.25, iou=0.7, verbose=False)):
        torch.set_num_threads(INFERENCE_THREADS)  # as the backend, once Ultralytics' set-up lowered it
        if result.boxes.id is None:
            continue
        for track_id, box, cls in zip(result.boxes.id.int().tolist(), result.boxes.xyxy.cpu().numpy(), result.boxes.cls.tolist()):
            tracks[track_id][index + 1] = box  # Label Studio's frames count from 1
            classes[track_id][result.names[int(cls)]] += 1
    assert len(regions) == len(tracks) >= 3
    for region, (track_id, frames) in zip(regions, tracks.items()):
        value = region["value"]
        assert value["labels"] == [classes[track_id].most_common(1)[0][0]]
        assert value["framesCount"] == frame_count == 50 and value["duration"] == pytest.approx(2.0)
        assert [item["frame"] for item in value["sequence"]] == list(frames)
        for item in value["sequence"]:
            got = np.array([item["x"], item["y"], item["x"] + item["width"], item["y"] + item["height"]]) * np.array(
                [width, height, width, height]) / 100
            np.testing.assert_allclose(got, frames[item["frame"]], atol=1e-6)
            assert item["time"] == pytest.approx(item["frame"] / 25)
            assert item["enabled"] == (item["frame"] + 1 in frames)
    # the offline path gives the same regions
    settings = Settings.load({"model_root": str(MODELS_DIR)}, environ={})
    (task,) = video_tasks([task_root / "shapes.mp4"], config, settings, "/data/local-files/?d=")
    assert task["data"] == {"video": local_url("shapes.mp4")}
    offline = task["predictions"][0]["result"]
    assert [{**r, "id": None} for r in offline] == [{**r, "id": None} for r in regions]


def test_unreadable_or_missing_video_gets_no_prediction(client: TestClient) -> None:
    config = (CONFIGS / "demo-shapes-video.xml").read_text()
    tasks = [{"id": 1, "data": {"video": local_url("not-a-video.mp4")}}, {"id": 2, "data": {"video": local_url("nope.mp4")}}]
    response = client.post("/predict", json={"tasks": tasks, "label_config": config})
    assert response.status_code == 200 and response.json()["results"] == [[], []]


@pytest.mark.parametrize("config_file, old, new, message", [
    ("demo-shapes-classify.xml", "demo-shapes-cls.pt", "demo-shapes-seg.pt",
     "<Choices name=\"shape\"> needs a YOLO classification model, but model_path on <Choices name=\"shape\">="
     "'demo-shapes-seg.pt' is a YOLO segmentation model"),
    ("demo-shapes-pose.xml", "demo-shapes-pose.pt", "demo-shapes-obb.pt",
     "<KeyPointLabels name=\"corner\"> needs a YOLO pose model, but model_path on <KeyPointLabels name=\"corner\">="
     "'demo-shapes-obb.pt' is a YOLO OBB (rotated box) model (for rotated boxes set model_obb=\"true\" on a RectangleLabels)"),
    ("demo-shapes-obb.xml", "demo-shapes-obb.pt", "demo-shapes-det.pt",
     "<RectangleLabels name=\"rotated\"> needs a YOLO OBB (rotated box) model, but model_path on "
     "<RectangleLabels name=\"rotated\">='demo-shapes-det.pt' is a YOLO detection model"),
    ("demo-shapes-video.xml", "demo-shapes-det.pt", "demo-shapes-cls.pt", "'demo-shapes-cls.pt' is a YOLO 'classify' model"),
    ("demo-shapes-video.xml", 'model_tracker="bytetrack"', 'model_tracker="../trackers/mine.yaml"', "model_tracker on <VideoRectangle name=\"box\">"),
    ("demo-shapes-video.xml", 'model_tracker="bytetrack"', 'model_tracker="mine.yaml"', "'mine.yaml' is not a file in MODEL_ROOT"),
    ("demo-shapes-pose.xml", 'model_point_size="1"', 'model_point_size="big"', "model_point_size='big' on <corner> is not a number"),
])
def test_wrong_model_or_attribute_is_a_400_naming_the_control(client: TestClient, config_file: str, old: str, new: str,
                                                              message: str) -> None:
    config = (CONFIGS / config_file).read_text()
    assert old in config
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": local_url("cls_90000.png"),
                                                                          "video": local_url("shapes.mp4")}}],
                                             "label_config": config.replace(old, new)})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_smart_keypoints_stay_prompts_and_taxonomy_is_answered(client: TestClient) -> None:
    config = ('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image" smart="true">'
              '<Label value="circle" smart="true"/></KeyPointLabels><Taxonomy name="tax" toName="image" '
              'model_path="demo-shapes-cls.pt" model_score_threshold="0"><Choice value="circle"/></Taxonomy></View>')
    ((region,),) = predict(client, config, [{"image": local_url("cls_90000.png")}])
    assert region["from_name"] == "tax" and region["value"] == {"taxonomy": [["circle"]]}
