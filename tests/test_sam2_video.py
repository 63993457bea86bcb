"""SAM 2 click-to-track on video: the backend's tracks equal Meta's SAM2VideoPredictor frame by frame.

A random-weight SAM 2.1 Hiera tiny is built by Meta's build_sam2 and saved as Meta publishes it (the
image tests' fixture); the reference is Meta's own `build_sam2_video_predictor` + `init_state` on a
folder holding the same decoded frames (PNG data under the .jpg names Meta's loader lists, so nothing
is lost to JPEG), prompted and propagated the same way. The requests are shaped as Label Studio 1.23.2 sends a VideoRectangle with
Auto-Annotation on (see backend/interactive/video_prompts.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.serving.app import create_app
from backend.prediction.video_regions import label_studio_frame
from formats.geometry import box_to_ls_rect, mask_to_box
from formats.label_config import parse_label_config
from backend.serving.services import Services, build_services
from backend.models.sam2_video import ObjectPrompt, Sam2VideoTracker
from backend.models.yolo_track import probe_video
from backend.interactive.video import VideoInteractive, decoded_index
from tests.conftest import MODELS_DIR, demo_settings, local_url
from tests.test_sam_sam2 import sam2_checkpoint  # noqa: F401 - the random-weight SAM 2.1 tiny fixture
from tools.shapes_tasks import write_video

sam2 = pytest.importorskip("sam2")
from sam2.build_sam import build_sam2_video_predictor  # noqa: E402

FPS = 25.0
TRACK_FRAMES = 2
PROMPT_FRAME = 3  # Label Studio's numbering: the video's decoded frame 2
CONFIG = """<View>
  <Video name="video" value="$video" frameRate="25"/>
  <VideoRectangle name="box" toName="video"/>
  <Labels name="videoLabels" toName="video" allowEmpty="true">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </Labels>
</View>"""
BOX_PERCENT = {"x": 10.0, "y": 15.0, "width": 30.0, "height": 35.0}  # a 96x84 px box on the 320x240 video
CLICK_PERCENT = {"x": 70.0, "y": 60.0, "width": 0.0, "height": 0.0}  # a click: Label Studio's zero-size box


@pytest.fixture(scope="module")
def video(image_root: Path) -> Path:
    return write_video(image_root / "sam2-shapes.mp4", seconds=0.4)  # 10 frames, 320x240


@pytest.fixture(scope="module")
def services(image_root: Path, sam2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Services:
    settings = demo_settings(image_root, tmp_path_factory.mktemp("cache"), model_name="sam2",
                             sam_checkpoint_file=str(sam2_checkpoint), sam2_track_frames=TRACK_FRAMES)
    return build_services(settings)


@pytest.fixture(scope="module")
def client(services: Services) -> TestClient:
    return TestClient(create_app(services.settings, services))


def decoded_frames(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1][:, :, ::-1])
    capture.release()
    return frames


def video_region(region_id: str, value: dict, frame: int = PROMPT_FRAME, label: str = "circle") -> dict:
    """A VideoRectangle as Label Studio serializes it when its label is applied with Auto-Annotation on."""
    keyframe = {"frame": frame, "enabled": True, "rotation": 0, **value, "time": frame / FPS}
    return {"id": region_id, "from_name": "box", "to_name": "video", "type": "videorectangle", "origin": "manual",
            "value": {"framesCount": 10, "duration": 0.4, "sequence": [keyframe], "labels": [label]}}


def request(regions: list[dict], video_name: str = "sam2-shapes.mp4") -> dict:
    return {"tasks": [{"id": 7, "data": {"video": local_url(video_name)}}], "label_config": CONFIG,
            "params": {"context": {"result": regions}}}


@pytest.fixture(scope="module")
def meta_tracks(sam2_checkpoint: Path, video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[np.ndarray]]:
    """Meta's video predictor on the window's frames: the box (object 0) and the click (object 1)."""
    frames, start = decoded_frames(video), decoded_index(PROMPT_FRAME, FPS, FPS)
    folder = tmp_path_factory.mktemp("frames")
    for position, frame in enumerate(frames[start:start + TRACK_FRAMES + 1]):
        cv2.imwrite(str(folder / f"{position:05d}.png"), frame[:, :, ::-1])
        (folder / f"{position:05d}.png").rename(folder / f"{position:05d}.jpg")
    predictor = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=str(sam2_checkpoint), device="cpu")
    state = predictor.init_state(str(folder))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=0, box=np.array([32.0, 36.0, 128.0, 120.0]))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=np.array([[224.0, 144.0]]), labels=np.array([1]))
    tracks: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for _, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=TRACK_FRAMES):
        for obj_id, mask in zip(obj_ids, (logits[:, 0] > 0.0).numpy()):
            tracks[obj_id].append(mask)
    return tracks


def expected_sequence(masks: list[np.ndarray], drawn: dict, start: int) -> list[dict]:
    """The drawn keyframe, then one keyframe per following frame: the mask's box in percent."""
    boxes = [mask_to_box(mask) for mask in masks]
    assert all(box is not None for box in boxes)
    sequence = [{"frame": PROMPT_FRAME, "enabled": True, "rotation": 0, **drawn, "time": PROMPT_FRAME / FPS}]
    for offset, box in enumerate(boxes[1:], start=1):
        frame = label_studio_frame(start + offset, FPS, FPS)
        sequence.append({"frame": frame, "enabled": offset < TRACK_FRAMES, "rotation": 0,
                         **box_to_ls_rect(box, 320, 240), "time": frame / FPS})
    return sequence


def test_tracks_equal_meta_video_predictor_frame_by_frame(client: TestClient, meta_tracks: dict) -> None:
    start, expected = decoded_index(PROMPT_FRAME, FPS, FPS), meta_tracks
    for masks in expected.values():
        assert len(masks) == TRACK_FRAMES + 1 and all(0 < mask.mean() < 1 for mask in masks), "a trivial track proves nothing"
    (result,) = client.post("/predict", json=request([video_region("boxA", BOX_PERCENT),
                                                       video_region("click", CLICK_PERCENT, label="square")])).json()["results"]
    regions = {region["id"]: region for region in result["result"]}
    assert sorted(regions) == ["boxA", "click"]
    for region_id, obj_id, drawn, label in (("boxA", 0, BOX_PERCENT, "circle"), ("click", 1, CLICK_PERCENT, "square")):
        region = regions[region_id]
        assert (region["type"], region["from_name"], region["to_name"]) == ("videorectangle", "box", "video")
        assert region["value"]["labels"] == [label]
        assert (region["value"]["framesCount"], region["value"]["duration"]) == (10, 0.4) and 0 < region["score"] < 1
        sequence = region["value"]["sequence"]
        want = expected_sequence(expected[obj_id], drawn, start)
        assert [k["frame"] for k in sequence] == [k["frame"] for k in want] == [3, 4, 5]
        for ours, theirs in zip(sequence, want):
            assert ours["enabled"] == theirs["enabled"]
            np.testing.assert_allclose([ours[k] for k in ("x", "y", "width", "height")],
                                       [theirs[k] for k in ("x", "y", "width", "height")], atol=1e-9)


def tracker_of(services: Services, client: TestClient) -> Sam2VideoTracker:
    """The app's tracker, built by a first video request where none was yet."""
    client.post("/predict", json=request([video_region("first", BOX_PERCENT)]))
    return next(services.models.get(key, lambda: None) for key in services.models.loaded() if key[0] == "sam2-video")


def test_tracker_masks_equal_meta_and_a_second_prompt_does_not_encode_again(services: Services, client: TestClient,
                                                                             video: Path, meta_tracks: dict) -> None:
    tracker = tracker_of(services, client)
    start, expected = decoded_index(PROMPT_FRAME, FPS, FPS), meta_tracks
    prompts = [ObjectPrompt(0, box=np.array([32.0, 36.0, 128.0, 120.0])), ObjectPrompt(1, point=np.array([224.0, 144.0]))]
    encoded = tracker.features.encoded
    frames = list(tracker.propagate(video, probe_video(video), start, TRACK_FRAMES + 1, prompts))
    assert tracker.features.encoded == encoded, "the first request encoded these frames already"
    assert [index for index, *_ in frames] == list(range(start, start + TRACK_FRAMES + 1))
    for position, (_, keys, masks, presence) in enumerate(frames):
        assert keys == [0, 1] and ((presence > 0) & (presence < 1)).all()
        for key, mask in zip(keys, masks):
            assert np.array_equal(mask, expected[key][position])


def test_tracking_stops_at_the_time_limit_with_a_warning(services: Services, client: TestClient, video: Path,
                                                        warnings_of: pytest.LogCaptureFixture) -> None:
    hurried = VideoInteractive(tracker_of(services, client), replace(services.settings, video_time_limit=1e-6),
                               services.fetcher)
    body = request([video_region("a", BOX_PERCENT)])
    (answer,) = hurried.predict(body["tasks"], parse_label_config(CONFIG), body["params"]["context"], None, "v")
    (region,) = answer["result"]
    assert [(k["frame"], k["enabled"]) for k in region["value"]["sequence"]] == [(PROMPT_FRAME, False)]
    assert "stopped at VIDEO_TIME_LIMIT=1e-06 s on frame 3 of 3-5" in warnings_of.text


@pytest.fixture
def warnings_of(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING):
        yield caplog


def test_unusable_prompts_and_videos_answer_empty_with_a_warning(client: TestClient, video: Path,
                                                                 warnings_of: pytest.LogCaptureFixture) -> None:
    cases = [
        (request([video_region("a", BOX_PERCENT)], "no-such.mp4"), "no-such.mp4"),
        (request([video_region("a", BOX_PERCENT, frame=11)]), "after the video's last frame"),
        (request([video_region("a", {"x": 120.0, "y": 10.0, "width": 5.0, "height": 5.0})]), "outside the 320x240 video"),
        (request([{**video_region("a", BOX_PERCENT), "value": {"sequence": [{"frame": "3", "x": 1}]}}]), "no usable keyframe"),
        (request([{**video_region("a", BOX_PERCENT), "from_name": "nope"}]), "is not a <VideoRectangle>"),
    ]
    for body, message in cases:
        warnings_of.clear()
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        regions = result["result"]
        assert all(len(region["value"]["sequence"]) == 1 for region in regions), body
        assert message in warnings_of.text, (message, warnings_of.text)


def test_a_sam_that_is_not_sam2_says_so(image_root: Path, video: Path, tmp_path: Path,
                                        warnings_of: pytest.LogCaptureFixture) -> None:
    settings = demo_settings(image_root, tmp_path, model_name="sam", sam_config="demo",
                             sam_checkpoint_file=str(MODELS_DIR / "demo-tiny-sam.pt"))
    client = TestClient(create_app(settings, build_services(settings)))
    (result,) = client.post("/predict", json=request([video_region("a", BOX_PERCENT)])).json()["results"]
    assert result["result"] == [] and "set MODEL_NAME=sam2" in warnings_of.text


@pytest.mark.parametrize(("fps", "frame_rate"), [(25.0, 25.0), (30.0, 24.0), (24.0, 30.0)])
def test_prompt_frames_map_back_to_label_studio_numbers(fps: float, frame_rate: float) -> None:
    for index in range(200):
        frame = label_studio_frame(index, fps, frame_rate)
        assert label_studio_frame(decoded_index(frame, fps, frame_rate), fps, frame_rate) == frame
