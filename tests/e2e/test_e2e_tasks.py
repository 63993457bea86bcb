"""Pose, OBB, classification and video tracking through a real Label Studio 1.23.2: a project from each
label_configs/ example, files imported, predictions retrieved from the Data Manager, and the regions
Label Studio stored checked against the backend's own adapters on the same files (to float32 noise:
the backend batches the tasks in another process; exactness against Ultralytics is tests/test_task_predict.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.prediction.video_regions import video_regions
from formats.geometry import ls_rect_corners, rotated_box_to_ls_rect
from backend.models.yolo_tasks import TaskYoloModel
from backend.models.yolo_track import TrackOptions, track_video
from formats.label_config import parse_label_config
from tests.conftest import MODELS_DIR, REPO_ROOT
from tests.e2e.conftest import SCORE_THRESHOLD, Backend, LabelStudio
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image, write_video

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEEDS = (91_000, 91_001, 91_002)
CONFIGS = REPO_ROOT / "label_configs"


def png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def retrieved(label_studio: LabelStudio, backend: Backend, title: str, config: str, files: dict[str, bytes],
              content_type: str) -> dict[str, dict]:
    """Create the project, import the files, connect the backend, retrieve predictions; the stored
    prediction of each file, by file name."""
    client = label_studio.client
    project_id = client.create_project(title, config)
    task_ids = client.import_files(project_id, files, content_type)
    assert client.connect_model(project_id, backend.url, f"{title} model",
                                basic_auth=backend.basic_auth).readable_state == "Connected"
    client.retrieve_predictions(project_id, task_ids)
    stored = {}
    for task_id in task_ids:
        url = next(iter(client.task(task_id)["data"].values()))
        name = next(name for name in files if url.endswith(name))
        (prediction,) = client.predictions(task_id)
        stored[name] = prediction
    return stored


def own_output(model_file: str, image_bgr: np.ndarray, conf: float = SCORE_THRESHOLD):  # noqa: ANN201
    model = TaskYoloModel(MODELS_DIR / model_file, model_file, "cpu", False, 0)
    return model.predict([np.ascontiguousarray(image_bgr[:, :, ::-1])], conf)[0]


def test_obb_rotated_rectangles_stored_by_label_studio(label_studio: LabelStudio, yolo_backend: Backend) -> None:
    images = {f"obb-{seed}.png": generate_obb_image(seed)[0] for seed in SEEDS}
    config = (CONFIGS / "demo-shapes-obb.xml").read_text()
    stored = retrieved(label_studio, yolo_backend, "e2e obb", config, {n: png(i) for n, i in images.items()}, "image/png")
    for name, image in images.items():
        found = own_output("demo-shapes-obb.pt", image)
        regions = stored[name]["result"]
        assert [r["value"]["rectanglelabels"][0] for r in regions] == list(found.class_names)
        height, width = image.shape[:2]
        for region, (cx, cy, w, h, angle) in zip(regions, found.xywhr):
            expected = ls_rect_corners(rotated_box_to_ls_rect((cx, cy), (w, h), angle, width, height), width, height)
            assert np.abs(ls_rect_corners(region["value"], width, height) - expected).max() < 0.5


def test_pose_keypoints_stored_by_label_studio(label_studio: LabelStudio, yolo_backend: Backend) -> None:
    images = {f"pose-{seed}.png": generate_pose_image(seed)[0] for seed in SEEDS}
    config = (CONFIGS / "demo-shapes-pose.xml").read_text()
    stored = retrieved(label_studio, yolo_backend, "e2e pose", config, {n: png(i) for n, i in images.items()}, "image/png")
    total = 0
    for name, image in images.items():
        found = own_output("demo-shapes-pose.pt", image)
        regions = stored[name]["result"]
        boxes = [r for r in regions if r["type"] == "rectanglelabels"]
        points = [r for r in regions if r["type"] == "keypointlabels"]
        height, width = image.shape[:2]
        # model_point_threshold="0.5"; a triangle's labels name its keypoints 0-2, a square's 0-3
        own = [(k, xy) for k in range(len(found))
               for index, (xy, conf) in enumerate(zip(found.keypoints[k], found.keypoint_scores[k]))
               if conf >= 0.5 and (found.class_names[k] == "square" or index < 3)]
        objects = sorted({k for k, _ in own})  # an object without a point above the threshold gets no box either
        assert [b["value"]["rectanglelabels"][0] for b in boxes] == [found.class_names[k] for k in objects]
        got = [(objects[next(i for i, b in enumerate(boxes) if b["id"] == p["parentID"])],
                np.array([p["value"]["x"] * width, p["value"]["y"] * height]) / 100) for p in points]
        assert len(got) == len(own)
        for (object_index, point), (k, xy) in zip(got, own):
            assert object_index == k
            np.testing.assert_allclose(point, xy, atol=1e-3)  # another process and batch: float32's last bits
        total += len(got)
    assert total > 0


@pytest.mark.parametrize("config_file, kind", [("demo-shapes-classify.xml", "choices"), ("demo-shapes-taxonomy.xml", "taxonomy")])
def test_classification_choices_stored_by_label_studio(label_studio: LabelStudio, yolo_backend: Backend,
                                                       config_file: str, kind: str) -> None:
    images = {f"{kind}-{seed}.png": generate_classify_image(seed)[0] for seed in SEEDS}
    config = (CONFIGS / config_file).read_text()
    stored = retrieved(label_studio, yolo_backend, f"e2e {kind}", config, {n: png(i) for n, i in images.items()}, "image/png")
    taxonomy = {"circle": ["Round", "Circle"], "square": ["Polygon", "Square"], "triangle": ["Polygon", "Triangle"]}
    for name, image in images.items():
        found = own_output("demo-shapes-cls.pt", image)
        top = int(np.argmax(found.probs))
        regions = stored[name]["result"]
        if found.probs[top] < SCORE_THRESHOLD:
            assert regions == []
            continue
        (region,) = regions
        top_name = found.class_names[top]
        assert region["type"] == kind
        assert region["value"][kind] == [top_name.capitalize() if kind == "choices" else taxonomy[top_name]]
        assert region["score"] == pytest.approx(float(found.probs[top]), abs=1e-4)


def test_video_tracks_stored_by_label_studio_line_up_with_the_frames(label_studio: LabelStudio, yolo_backend: Backend,
                                                                     tmp_path: Path) -> None:
    video = write_video(tmp_path / "shapes.mp4", seconds=2.0)
    config = (CONFIGS / "demo-shapes-video.xml").read_text()
    stored = retrieved(label_studio, yolo_backend, "e2e video", config, {"shapes.mp4": video.read_bytes()}, "video/mp4")
    regions = stored["shapes.mp4"]["result"]
    control = parse_label_config(config).control("box")
    info, frames = track_video(video, MODELS_DIR / "demo-shapes-det.pt", TrackOptions("bytetrack", 0.25, 0.7, "cpu"), 600)
    own = video_regions(control, frames, info, 25.0)
    assert len(regions) == len(own) >= 3
    for region, expected in zip(regions, own):
        assert region["type"] == "videorectangle" and region["value"]["labels"] == expected["value"]["labels"]
        assert region["value"]["framesCount"] == info.frame_count == 50  # Label Studio's frame count of a 2 s, 25 fps video
        sequence = region["value"]["sequence"]
        assert all(1 <= item["frame"] <= 50 for item in sequence)
        for item, wanted in zip(sequence, expected["value"]["sequence"]):
            assert item["frame"] == wanted["frame"] and item["time"] == pytest.approx(item["frame"] / 25)
            for key in ("x", "y", "width", "height"):
                assert item[key] == pytest.approx(wanted[key], abs=1e-3)
