"""Pose, OBB, classification and video controls: config attributes, geometry and region builders (pure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from backend.prediction.classification import choices_regions
from backend.prediction.obb import rotated_box_regions
from backend.prediction.pose import pose_regions
from backend.prediction.video_regions import frame_rate_of, label_studio_frame, video_regions
from formats.geometry import ls_rect_corners, rotated_box_to_ls_rect
from formats.label_config import LabelConfigError, parse_label_config
from backend.models.yolo_tasks import ClassProbabilities, Poses, RotatedBoxes
from backend.models.yolo_track import TrackedFrame, VideoInfo
from tools.shapes_tasks import main as shapes_tasks_main
from tools.track_video import main as track_video_main

POSE_CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image" model_skip="true"><Label value="person"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" model_point_threshold="0.5" model_point_size="2">
    <Label value="nose" predicted_values="person" model_index="0"/>
    <Label value="left eye" model_index="1"/>
  </KeyPointLabels>
  <KeyPointLabels name="clicks" toName="image" smart="true"><Label value="person" smart="true"/></KeyPointLabels>
</View>"""


def corners_from_xywhr(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Ultralytics' xywhr2xyxyxyxy, written out."""
    cos, sin = math.cos(angle), math.sin(angle)
    along, across = np.array([w / 2 * cos, w / 2 * sin]), np.array([-h / 2 * sin, h / 2 * cos])
    center = np.array([cx, cy])
    return np.array([center + along + across, center + along - across, center - along - across, center - along + across])


def same_corners(a: np.ndarray, b: np.ndarray) -> float:
    """Largest corner distance after matching each corner of a to its nearest in b."""
    return max(np.linalg.norm(b - corner, axis=1).min() for corner in a)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 200), (97, 1301)])
def test_rotated_box_percent_round_trip_keeps_corners(size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(width)
    for _ in range(200):
        box = (rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, width), rng.uniform(1, height),
               rng.uniform(-math.pi, math.pi))
        value = rotated_box_to_ls_rect(box[:2], box[2:4], box[4], width, height)
        value = {key: round(v, 6) for key, v in value.items()}  # percent as JSON carries it, rounded
        assert 0 <= value["rotation"] < 360
        assert same_corners(corners_from_xywhr(*box), ls_rect_corners(value, width, height)) < 0.5


def test_obb_regions_filter_by_label_and_score() -> None:
    control = parse_label_config('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i" model_obb="true">'
                                 '<Label value="Plane" predicted_values="plane"/></RectangleLabels></View>').controls[0]
    found = RotatedBoxes(np.array([[50, 40, 30, 10, 0.3], [10, 10, 5, 5, 0.0], [60, 60, 20, 8, 1.0]]),
                         np.array([0.9, 0.95, 0.2]), ("plane", "ship", "plane"))
    regions = rotated_box_regions(control, found, 0.5, 100, 80)
    assert [r["value"]["rectanglelabels"] for r in regions] == [["Plane"]]
    assert regions[0]["value"]["rotation"] == pytest.approx(math.degrees(0.3))
    assert regions[0]["type"] == "rectanglelabels" and regions[0]["score"] == 0.9


def test_config_reads_humansignal_attributes() -> None:
    config = parse_label_config(POSE_CONFIG)
    kp = config.control("kp")
    assert kp.options.point_threshold == 0.5 and kp.options.point_size == 2 and kp.options.add_bboxes
    assert kp.options.keypoint_label("person", 0) == "nose" and kp.options.keypoint_label("cat", 0) is None
    assert kp.options.keypoint_label("cat", 1) == "left eye"  # no predicted_values: any class
    assert [c.name for c in kp.options.box_controls] == ["box"]
    # smart keypoints stay SAM prompts
    assert [c.name for c in config.prediction_controls] == ["kp"]
    assert config.has_prompts and config.unanswered == ()


def test_video_config_takes_labels_from_the_labels_tag() -> None:
    config = parse_label_config(open("label_configs/demo-shapes-video.xml").read())
    box = config.control("box")
    assert box.tag == "VideoRectangle" and box.data_key == "video" and box.labels == ("circle", "square", "triangle")
    assert box.options.tracker == "bytetrack" and box.options.track_conf == 0.25 and box.options.frame_rate == "25"
    assert config.unanswered == ()


@pytest.mark.parametrize("attribute, message", [
    ('model_point_threshold="high"', "model_point_threshold='high' on <kp> is not a number"),
    ('model_point_size="-1"', "model_point_size='-1' on <kp> must be between 0 and 100"),
    ('model_tracker="deepsort"', "model_tracker='deepsort' on <kp> must be botsort, bytetrack or a tracker .yaml"),
])
def test_bad_attribute_values_are_config_errors(attribute: str, message: str) -> None:
    xml = f'<View><Image name="i" value="$i"/><KeyPointLabels name="kp" toName="i" {attribute}><Label value="a" model_index="0"/></KeyPointLabels></View>'
    with pytest.raises(LabelConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_label_config(xml)


def test_bad_model_index_is_a_config_error() -> None:
    with pytest.raises(LabelConfigError, match="model_index='x'"):
        parse_label_config('<View><Image name="i" value="$i"/><KeyPointLabels name="kp" toName="i">'
                           '<Label value="a" model_index="x"/></KeyPointLabels></View>')


def choices_control(choice: str):  # noqa: ANN201
    return parse_label_config(f'<View><Image name="i" value="$i"/><Choices name="c" toName="i" choice="{choice}">'
                              '<Choice value="Cat" predicted_values="cat"/><Choice value="Dog"/></Choices></View>').controls[0]


def test_single_choice_is_the_likeliest_labelled_class() -> None:
    found = ClassProbabilities(("bird", "cat", "dog"), np.array([0.5, 0.3, 0.2]))
    (region,) = choices_regions(choices_control("single"), found, 0.1)
    assert region["value"] == {"choices": ["Cat"]} and region["score"] == 0.3 and region["type"] == "choices"
    assert choices_regions(choices_control("single"), found, 0.35) == []


def test_multiple_choices_are_every_labelled_class_above_the_threshold() -> None:
    found = ClassProbabilities(("bird", "cat", "dog"), np.array([0.1, 0.45, 0.45]))
    (region,) = choices_regions(choices_control("multiple"), found, 0.4)
    assert sorted(region["value"]["choices"]) == ["Cat", "Dog"] and region["score"] == 0.45


def test_pose_regions_link_points_to_their_box() -> None:
    config = parse_label_config(POSE_CONFIG)
    found = Poses(boxes=np.array([[10.0, 20.0, 50.0, 80.0]]), scores=np.array([0.8]), class_names=("person",),
                  keypoints=np.array([[[30.0, 25.0], [28.0, 24.0]]]), keypoint_scores=np.array([[0.9, 0.4]]))
    regions = pose_regions(config.control("kp"), found, 0.5, 100, 200)
    box, nose = regions  # the eye's 0.4 is under model_point_threshold
    assert box["from_name"] == "box" and box["value"]["rectanglelabels"] == ["person"]
    assert nose["parentID"] == box["id"] and nose["type"] == "keypointlabels"
    assert nose["value"] == {"x": 30.0, "y": 12.5, "width": 2.0, "keypointlabels": ["nose"]}
    assert nose["score"] == 0.9
    assert pose_regions(config.control("kp"), found, 0.9, 100, 200) == []  # the object's score is under the threshold


def test_pose_without_box_links_points_to_the_first_point() -> None:
    config = parse_label_config(POSE_CONFIG.replace('model_point_size="2"', 'model_add_bboxes="false"'))
    found = Poses(np.array([[0.0, 0, 9, 9]]), np.array([0.8]), ("person",), np.array([[[1.0, 2.0], [3.0, 4.0]]]),
                  np.array([[0.9, 0.9]]))
    first, second = pose_regions(config.control("kp"), found, 0.5, 10, 10)
    assert "parentID" not in first and second["parentID"] == first["id"]


def test_label_studio_frames_and_frame_rate() -> None:
    assert [label_studio_frame(i, 25.0, 25.0) for i in range(3)] == [1, 2, 3]
    assert label_studio_frame(50, 25.0, 24.0) == 49  # 2 s into the video is Label Studio's frame 49 at 24 fps
    control = parse_label_config(open("label_configs/demo-shapes-video.xml").read().replace('"25"', '"$fps"')).control("box")
    assert frame_rate_of(control, {"fps": "30"}) == 30 and frame_rate_of(control, {}) == 24
    assert frame_rate_of(control, {"fps": 0.04}) == 25  # Label Studio reads a frame time below 1 as 1/x


def test_lower_case_framerate_sets_the_keyframes() -> None:
    """Label Studio's editor reads <Video framerate="30"> as frameRate: a video of 15 frames per second gets keyframes 1, 3, 5."""
    xml = open("label_configs/demo-shapes-video.xml").read().replace('frameRate="25"', 'framerate="30"')
    control = parse_label_config(xml).control("box")
    frame_rate = frame_rate_of(control, {})
    box = np.array([[32.0, 24.0, 64.0, 48.0]])
    frames = [TrackedFrame(i, np.array([7]), box, np.array([0.5]), ("circle",)) for i in range(3)]
    (region,) = video_regions(control, frames, VideoInfo(15.0, 3, 320, 240, True), frame_rate)
    assert frame_rate == 30 and [k["frame"] for k in region["value"]["sequence"]] == [1, 3, 5]


def test_video_regions_one_per_track_with_gaps_and_majority_label() -> None:
    control = parse_label_config(open("label_configs/demo-shapes-video.xml").read()).control("box")
    box = np.array([[32.0, 24.0, 64.0, 48.0]])
    frames = [TrackedFrame(i, np.array([7]), box, np.array([0.5]), (name,))
              for i, name in [(0, "circle"), (1, "square"), (2, "circle"), (5, "circle")]]
    frames.append(TrackedFrame(6, np.array([9]), box, np.array([0.9]), ("hexagon",)))  # no label: no region
    (region,) = video_regions(control, frames, VideoInfo(25.0, 8, 320, 240, True), 25.0)
    value = region["value"]
    assert value["labels"] == ["circle"] and value["framesCount"] == 8 and value["duration"] == 8 / 25
    assert [(k["frame"], k["enabled"]) for k in value["sequence"]] == [(1, True), (2, True), (3, False), (6, False)]
    assert value["sequence"][0] | {} == {"frame": 1, "enabled": True, "rotation": 0, "x": 10.0, "y": 10.0,
                                         "width": 10.0, "height": 10.0, "time": 1 / 25}
    assert region["type"] == "videorectangle" and region["to_name"] == "video" and region["score"] == 0.5


def test_demo_pictures_cli_writes_held_out_pngs(tmp_path: Path) -> None:
    assert shapes_tasks_main(["obb", "--out", str(tmp_path), "--count", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obb_60000.png", "obb_60001.png"]


def test_offline_video_cli_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "tasks.json"
    config = "label_configs/demo-shapes-video.xml"
    assert track_video_main([str(tmp_path / "broken.mp4"), "--label_config", config, "--out", str(out)]) == 2
    assert "'broken.mp4' is not a video OpenCV can read" in capsys.readouterr().err and not out.exists()
    image_config = tmp_path / "image.xml"
    image_config.write_text(POSE_CONFIG)
    assert track_video_main([str(tmp_path / "broken.mp4"), "--label_config", str(image_config), "--out", str(out)]) == 2
    assert "no VideoRectangle" in capsys.readouterr().err
