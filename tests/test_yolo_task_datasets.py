"""Classification, pose and OBB datasets from Label Studio tasks (tools.ls_to_yolo --task classify|pose|obb):
exact both ways against the backend's own predictions and the model's own output, keypoint grouping, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from ultralytics import YOLO

from formats.geometry import ls_rect_to_yolo_obb, yolo_obb_to_ls_rect
from formats.label_config import parse_label_config
from tests.conftest import MODELS_DIR, local_url
from tests.task_training_data import CONFIGS, annotated_tasks, pose_results
from tests.test_task_predict import SEEDS, client, task_root  # noqa: F401 - the demo pictures and backend as fixtures
from formats import yolo_dataset
from tools import ls_to_yolo
from formats.yolo_pose import group_keypoints, pose_schema



def predicted_tasks(client: TestClient, task: str, image_root: Path) -> tuple[list[dict], list[Path]]:
    """The backend's predictions for the demo config of `task` (pictures of tests/test_task_predict.py), as
    annotated Label Studio tasks."""
    paths = [image_root / f"{task}_{seed}.png" for seed in SEEDS]
    body = {"tasks": [{"id": i + 1, "data": {"image": local_url(p.name)}} for i, p in enumerate(paths)],
            "label_config": CONFIGS[task]}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    tasks = [{"id": i + 1, "data": {"image": str(path)}, "annotations": [{"id": i + 1, "result": answer["result"]}]}
             for i, (path, answer) in enumerate(zip(paths, response.json()["results"]))]
    return tasks, paths


def write(tasks: list[dict], out: Path, task: str) -> yolo_dataset.Summary:
    return yolo_dataset.write_yolo_dataset(tasks, out, task=task, label_config=CONFIGS[task])


def rows(labels: Path, stem: str) -> list[list[float]]:
    """The label rows of an image, whichever split it went to."""
    (path,) = labels.glob(f"*/{stem}.txt")
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- OBB


@pytest.mark.parametrize("value", [
    {"x": 10.0, "y": 20.0, "width": 30.0, "height": 15.0, "rotation": 0.0},
    {"x": 40.0, "y": 5.0, "width": 25.0, "height": 40.0, "rotation": 33.5},
    {"x": 70.0, "y": 60.0, "width": 12.0, "height": 8.0, "rotation": 271.25},
])
@pytest.mark.parametrize("size", [(640, 480), (300, 900)])
def test_obb_rows_and_label_studio_rectangles_convert_exactly_both_ways(value: dict, size: tuple[int, int]) -> None:
    corners = ls_rect_to_yolo_obb(value, *size)
    back = yolo_obb_to_ls_rect(corners, *size)
    for key in ("x", "y", "width", "height", "rotation"):
        assert back[key] == pytest.approx(value[key], abs=1e-9)
    reversed_turn = corners.reshape(4, 2)[[0, 3, 2, 1]].ravel()  # a tool listing the corners counter-clockwise
    np.testing.assert_allclose(ls_rect_to_yolo_obb(yolo_obb_to_ls_rect(reversed_turn, *size), *size), corners, atol=1e-9)


def test_obb_dataset_of_backend_predictions_equals_the_models_corners(client: TestClient, task_root: Path,
                                                                      tmp_path: Path) -> None:
    tasks, paths = predicted_tasks(client, "obb", task_root)
    summary = write(tasks, tmp_path / "obb", "obb")
    assert summary.tasks_converted == len(paths) and summary.categories == ["rectangle", "ellipse"]
    model = YOLO(str(MODELS_DIR / "demo-shapes-obb.pt"))
    compared = 0
    for path, result in zip(paths, model.predict([str(p) for p in paths], conf=0.25, verbose=False)):
        got = rows(tmp_path / "obb" / "labels", path.stem)
        height, width = result.orig_shape
        expected = result.obb.xyxyxyxy.cpu().numpy() / [width, height]
        assert len(got) == len(expected)
        for row, corners, cls in zip(got, expected, result.obb.cls.tolist()):
            assert row[0] == int(cls)
            inside = corners.clip(0, 1) * [width, height]  # rows are clipped to the image, as Ultralytics requires
            got_corners = np.reshape(row[1:], (4, 2)) * [width, height]
            assert max(np.linalg.norm(inside - corner, axis=1).min() for corner in got_corners) < 0.5
            compared += 1
    assert compared >= 3


# ---------------------------------------------------------------- pose


def test_pose_dataset_of_backend_predictions_equals_the_models_keypoints(client: TestClient, task_root: Path,
                                                                         tmp_path: Path) -> None:
    tasks, paths = predicted_tasks(client, "pose", task_root)
    summary = write(tasks, tmp_path / "pose", "pose")
    data = yaml.safe_load((tmp_path / "pose" / "data.yaml").read_text())
    assert data["kpt_shape"] == [4, 3] and "flip_idx" not in data  # mirrored triangles and squares disagree
    assert summary.categories == ["triangle", "square"] and not summary.regions_skipped
    model = YOLO(str(MODELS_DIR / "demo-shapes-pose.pt"))
    compared = 0
    for path, result in zip(paths, model.predict([str(p) for p in paths], conf=0.25, verbose=False)):
        got = rows(tmp_path / "pose" / "labels", path.stem)
        height, width = result.orig_shape
        expected = [(box, int(cls), xy, conf) for box, cls, xy, conf in zip(
            result.boxes.xyxy.cpu().numpy(), result.boxes.cls.tolist(), result.keypoints.xy.cpu().numpy(),
            result.keypoints.conf.cpu().numpy()) if (conf >= 0.5).any()]
        assert len(got) == len(expected)
        for row, (box, cls, xy, conf) in zip(got, expected):
            assert row[0] == cls
            x1, y1, x2, y2 = box / [width, height, width, height]
            np.testing.assert_allclose(row[1:5], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-6)
            points = np.reshape(row[5:], (-1, 3))
            shown = conf >= 0.5  # model_point_threshold="0.5"; the triangle's 4th point has no label
            shown[3] &= result.names[cls] == "square"
            np.testing.assert_allclose(points[shown, :2], xy[shown] / [width, height], atol=1e-6)
            assert (points[shown, 2] == 2).all() and (points[~shown] == 0).all()
            compared += int(shown.sum())
    assert compared >= 6


def test_unlinked_keypoints_go_to_the_box_they_lie_in(tmp_path: Path) -> None:
    files, linked = annotated_tasks("pose", range(100, 104), lambda name: str(tmp_path / name))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    unlinked = [{**task, "annotations": [{**task["annotations"][0], "result": pose_results(seed, linked=False)[1]}]}
                for task, seed in zip(linked, range(100, 104))]
    write(linked, tmp_path / "linked", "pose")
    write(unlinked, tmp_path / "unlinked", "pose")
    for seed in range(100, 104):
        assert rows(tmp_path / "linked" / "labels", f"pose-{seed}") == rows(tmp_path / "unlinked" / "labels", f"pose-{seed}")


def test_keypoint_grouping_by_links_without_a_box_and_what_is_left_out() -> None:
    schema = pose_schema(parse_label_config(CONFIGS["pose"]))
    point = lambda rid, label, x, y, parent=None: {  # noqa: E731
        "id": rid, "from_name": "corner", "type": "keypointlabels", **({"parentID": parent} if parent else {}),
        "value": {"x": x, "y": y, "keypointlabels": [label]}}
    results = [point("a", "apex", 50, 10), point("b", "base right", 60, 30, "a"), point("c", "base left", 40, 30, "b"),
               point("d", "top-left", 5, 5),  # unlinked, in no box
               point("e", "apex", 90, 90, "a")]  # a second apex in the same object
    grouping = group_keypoints(results, schema, 200, 100)
    (triangle,) = grouping.objects
    assert triangle.class_name == "triangle" and triangle.box == (80.0, 10.0, 120.0, 30.0)
    assert triangle.keypoints == {0: (100.0, 10.0), 1: (120.0, 30.0), 2: (80.0, 30.0)}
    assert grouping.left_out == {"keypoint neither linked to an object nor inside a box of its class": 1,
                                 "second keypoint with the same index in one object": 1}


def test_flip_idx_pairs_left_and_right_labels() -> None:
    config = parse_label_config(
        '<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
        '<Label value="person"/></RectangleLabels><KeyPointLabels name="kp" toName="image">'
        '<Label value="nose" model_index="0"/><Label value="left eye" model_index="1"/>'
        '<Label value="right eye" model_index="2"/></KeyPointLabels></View>')
    schema = pose_schema(config)
    assert schema.classes == ("person",) and schema.count == 3 and schema.flip_idx == (0, 2, 1)
    assert schema.data_yaml_fields() == {"kpt_shape": [3, 3], "flip_idx": [0, 2, 1]}


# ---------------------------------------------------------------- classification and the command line


def test_classify_dataset_has_one_folder_per_choice_and_skips_unclear_tasks(tmp_path: Path) -> None:
    files, tasks = annotated_tasks("classify", range(200, 210), lambda name: str(tmp_path / name))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["Circle", "Square"]
    tasks[1]["annotations"][0]["result"] = []
    summary = yolo_dataset.write_yolo_dataset(tasks, tmp_path / "cls", task="classify", label_config=CONFIGS["classify"],
                                            val_fraction=0.3, seed=1)
    assert summary.categories == ["Circle", "Square", "Triangle"] and summary.tasks_converted == 8
    assert summary.tasks_skipped == {"several choices (classification takes one)": 1, "no choice": 1}
    written = {path.name: path.parent.name for path in (tmp_path / "cls").glob("*/*/*.png")}
    expected = {task["data"]["image"].rsplit("/", 1)[1]: task["annotations"][0]["result"][0]["value"]["choices"][0]
                for task in tasks[2:]}
    assert written == expected
    assert {p.parent.name for p in (tmp_path / "cls").glob("*/*/")} >= {"train", "val"}
    assert sorted(p.name for p in (tmp_path / "cls" / "val").iterdir()) == ["Circle", "Square", "Triangle"]


def test_command_line_learns_the_tasks_and_pose_needs_the_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files, tasks = annotated_tasks("obb", range(300, 304), lambda name: str(tmp_path / name))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    (tmp_path / "obb.xml").write_text(CONFIGS["obb"])
    assert ls_to_yolo.main(["--json_file_path", str(export), "--out_dir", str(tmp_path / "out"), "--task", "obb",
                            "--label_config", str(tmp_path / "obb.xml"), "--from_name", "rotated"]) == 0
    assert len(list((tmp_path / "out" / "labels").rglob("*.txt"))) == 4
    assert ls_to_yolo.main(["--json_file_path", str(export), "--out_dir", str(tmp_path / "pose"), "--task", "pose"]) != 0
    assert "--task pose needs the labeling config" in capsys.readouterr().err
    assert not (tmp_path / "pose").exists()
