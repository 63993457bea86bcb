"""annotate_dir with pose, OBB and classification models: COCO keypoints, rotated boxes and image classes
equal the model's own output (Ultralytics run directly on the same images), and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.serving.app import build_services
from formats.geometry import ls_rect_corners
from formats.label_config import parse_label_config
from tests.conftest import DEMO_DET, MODELS_DIR
from tests.test_task_predict import CONF, CONFIGS, SEEDS, ultralytics_results
from tools.annotate_dir import annotate, main
from tools.annotate_options import AnnotateOptions, annotate_settings, local_files_url
from tools.annotate_videos import video_label_config
from tools.shapes_dataset import generate_image
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image, write_video

POINT_THRESHOLD = 0.5  # model_point_threshold of the config made for a pose model, and of demo-shapes-pose.xml


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task-folders")
    for kind, generate in (("pose", generate_pose_image), ("obb", generate_obb_image), ("cls", generate_classify_image)):
        (root / kind).mkdir()
        for seed in SEEDS:
            cv2.imwrite(str(root / kind / f"{kind}_{seed}.png"), generate(seed)[0])
    return {kind: root / kind for kind in ("pose", "obb", "cls")}


def run(folder: Path, out: Path, model: str, label_config: Path | None = None) -> Path:
    """annotate_dir on the folder at the tests' threshold, all images in one batch (one forward pass, as
    `ultralytics_results` runs them); the output folder."""
    annotate(AnnotateOptions(folder, out_dir=out, model=str(MODELS_DIR / model), label_config=label_config,
                             overrides=(("model_score_threshold", str(CONF)), ("cache_dir", str(out / "cache"))),
                             ls_tasks=out / "tasks.json"), environ={})
    return out


def paths_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def present_objects(result) -> list[int]:  # noqa: ANN001 - ultralytics Results
    """The objects the backend answers: those with a keypoint above the point threshold."""
    return [k for k, conf in enumerate(result.keypoints.conf.cpu().numpy()) if (conf >= POINT_THRESHOLD).any()]


@pytest.mark.parametrize("label_config", [None, CONFIGS / "demo-shapes-pose.xml"])
def test_coco_keypoints_equal_the_pose_model_and_cocoeval_scores_them_1(folders: dict[str, Path], tmp_path: Path,
                                                                       label_config: Path | None) -> None:
    out = run(folders["pose"], tmp_path / "out", "demo-shapes-pose.pt", label_config)
    coco = COCO(str(out / "annotations" / "person_keypoints_default.json"))
    names = [c["keypoints"] for c in coco.dataset["categories"]]
    if label_config is None:  # the model's own keypoint names
        assert names == [["0", "1", "2", "3"], ["0", "1", "2", "3"]]
    else:  # the config's labels (model_index), the model's names where the config names none
        assert names == [["apex", "base right", "base left", "3"], ["top-left", "top-right", "bottom-right", "bottom-left"]]
    images = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    detections = []
    for path, result in zip(paths_of(folders["pose"]), ultralytics_results("demo-shapes-pose.pt", paths_of(folders["pose"]))):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[images[path.name]]))
        objects = present_objects(result)
        assert len(annotations) == len(objects)
        xy, conf = result.keypoints.xy.cpu().numpy(), result.keypoints.conf.cpu().numpy()
        for annotation, k in zip(annotations, objects):
            visible = conf[k] >= POINT_THRESHOLD
            keypoints = np.array(annotation["keypoints"]).reshape(-1, 3)
            np.testing.assert_allclose(keypoints[visible, :2], xy[k][visible], atol=1e-6)
            assert (keypoints[:, 2] == np.where(visible, 2, 0)).all() and (keypoints[~visible, :2] == 0).all()
            assert annotation["num_keypoints"] == visible.sum()
            x1, y1, x2, y2 = result.boxes.xyxy[k].tolist()
            np.testing.assert_allclose(annotation["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-6)
            assert annotation["category_id"] == int(result.boxes.cls[k])
            detections.append({"image_id": images[path.name], "category_id": int(result.boxes.cls[k]),
                               "keypoints": np.column_stack([xy[k], np.where(visible, 2, 0)]).ravel().tolist(),
                               "score": float(result.boxes.conf[k])})
    assert len(detections) >= 6
    evaluation = COCOeval(coco, coco.loadRes(detections), iouType="keypoints")
    evaluation.params.kpt_oks_sigmas = np.full(4, 0.05)  # COCOeval's default sigmas are for COCO's 17 person keypoints
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_rotated_boxes_in_tasks_and_coco_equal_the_obb_model(folders: dict[str, Path], tmp_path: Path) -> None:
    out = run(folders["obb"], tmp_path / "out", "demo-shapes-obb.pt")
    tasks = json.loads((out / "tasks.json").read_text())
    coco = COCO(str(out / "annotations" / "instances_default.json"))
    images = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    compared = 0
    for path, task, result in zip(paths_of(folders["obb"]), tasks, ultralytics_results("demo-shapes-obb.pt", paths_of(folders["obb"]))):
        assert task["data"]["image"].endswith(path.name)
        regions = task["predictions"][0]["result"]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[images[path.name]]))
        corners = result.obb.xyxyxyxy.cpu().numpy()
        assert len(regions) == len(annotations) == len(corners)
        height, width = result.orig_shape
        for region, annotation, expected, cls in zip(regions, annotations, corners, result.obb.cls.tolist()):
            assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == [result.names[int(cls)]]
            for got in (ls_rect_corners(region["value"], width, height), np.array(annotation["segmentation"][0]).reshape(4, 2)):
                assert max(np.linalg.norm(got - corner, axis=1).min() for corner in expected) < 0.5
            x, y, w, h = annotation["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], [*expected.min(axis=0), *expected.max(axis=0)], atol=0.5)
            assert annotation["category_id"] == int(cls)
            compared += 1
    assert compared >= 3


@pytest.mark.parametrize("label_config", [None, CONFIGS / "demo-shapes-taxonomy.xml"])
def test_image_classes_equal_the_classification_model(folders: dict[str, Path], tmp_path: Path,
                                                      label_config: Path | None) -> None:
    out = run(folders["cls"], tmp_path / "out", "demo-shapes-cls.pt", label_config)
    assert not (out / "annotations" / "instances_default.json").exists()  # no boxes, polygons or masks
    rows = list(csv.DictReader((out / "annotations" / "classification_default.csv").open()))
    coco = COCO(str(out / "annotations" / "classification_default.json"))
    categories = [c["name"] for c in coco.dataset["categories"]]
    tree = {"circle": "Round/Circle", "square": "Polygon/Square", "triangle": "Polygon/Triangle"}
    paths = paths_of(folders["cls"])
    assert [row["file_name"] for row in rows] == [path.name for path in paths]
    for path, row, result in zip(paths, rows, ultralytics_results("demo-shapes-cls.pt", paths)):
        probs = result.probs.data.cpu().numpy().astype(np.float64)
        top = result.names[int(np.argmax(probs))]
        assert row["label"] == (top if label_config is None else tree[top])
        assert float(row["score"]) == round(float(probs.max()), 6)
        (annotation,) = coco.imgToAnns[int(next(i["id"] for i in coco.dataset["images"] if i["file_name"] == path.name))]
        assert categories[annotation["category_id"]] == row["label"] and annotation["score"] == float(row["score"])
    task = json.loads((out / "tasks.json").read_text())[0]
    assert task["predictions"][0]["result"][0]["type"] == ("choices" if label_config is None else "taxonomy")


def test_config_control_with_a_model_of_another_task_names_both(folders: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "config.xml"
    config.write_text((CONFIGS / "demo-shapes-classify.xml").read_text().replace("demo-shapes-cls.pt", "demo-shapes-obb.pt"))
    assert main([str(folders["cls"]), "--out_dir", str(tmp_path / "out"), "--label_config", str(config),
                 "--with", f"model_root={MODELS_DIR}"]) == 1
    error = capsys.readouterr().err
    assert "<Choices name=\"shape\"> needs a YOLO classification model" in error and "is a YOLO OBB (rotated box) model" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--model", "models/demo-shapes-pose.pt", "--shape", "boxes"],
     "--shape is for detection and segmentation models; 'demo-shapes-pose.pt' is a YOLO pose model"),
    (["--label_config", "no-such-config.xml"], "cannot read --label_config 'no-such-config.xml'"),
    (["--label_config", "label_configs/demo-shapes.xml", "--model", "models/demo-shapes-cls.pt"],
     "<RectangleLabels name=\"rect\">: YOLO_DET_MODEL: 'demo-shapes-cls.pt' is a YOLO 'classify' model; "
     "detection or segmentation models are supported"),
])
def test_bad_options_exit_non_zero_with_a_message(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  arguments: list[str], message: str) -> None:
    assert main([str(folders["cls"]), "--out_dir", str(tmp_path / "out"), *arguments]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_videos_in_the_folder_become_video_tasks_as_the_backend_tracks_them(tmp_path: Path) -> None:
    folder = tmp_path / "media"
    (folder / "clips").mkdir(parents=True)
    cv2.imwrite(str(folder / "still.png"), generate_image(6000).image)
    write_video(folder / "clips" / "shapes 1.mp4", seconds=2.0)
    (folder / "clips" / "broken.mp4").write_bytes(b"not a video")
    options = AnnotateOptions(folder, out_dir=tmp_path / "out", model=str(MODELS_DIR / DEMO_DET),
                              overrides=(("model_score_threshold", str(CONF)), ("cache_dir", str(tmp_path / "cache"))),
                              ls_video_tasks=tmp_path / "videos.json")
    summary = annotate(options, environ={})
    assert summary.tasks_skipped == {"unreadable video": 1} and "broken.mp4" in summary.report()
    (task,) = json.loads((tmp_path / "videos.json").read_text())
    assert task["data"] == {"video": local_files_url("clips/shapes 1.mp4"), "fps": 25.0}  # the file's own frame rate
    regions = task["predictions"][0]["result"]
    assert len(regions) >= 3 and {r["value"]["labels"][0] for r in regions} <= {"circle", "square", "triangle"}

    # The backend's /predict answers the same task, with the same config, with the same tracks.
    services = build_services(annotate_settings(options, environ={}))
    (expected,) = services.predictor.predict([{"id": 1, "data": task["data"]}], parse_label_config(video_label_config(
        ["circle", "square", "triangle"])), None, "v")
    assert [{**r, "id": None} for r in regions] == [{**r, "id": None} for r in expected["result"]]
    assert all(item["time"] == pytest.approx(item["frame"] / 25) for r in regions for item in r["value"]["sequence"])


def test_video_tasks_need_a_model_that_tracks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_video(tmp_path / "shapes.mp4", seconds=1.0)
    assert main([str(tmp_path), "--model", str(MODELS_DIR / "demo-shapes-cls.pt"), "--out_dir", str(tmp_path / "out"),
                 "--ls_video_tasks", str(tmp_path / "videos.json")]) == 1
    assert "videos are tracked with a detection or segmentation model" in capsys.readouterr().err
