"""Label Studio export -> YOLO dataset: labels, split, data.yaml, and a one-epoch Ultralytics train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from formats.geometry import mask_iou, mask_to_box, mask_to_polygons, polygons_to_mask
from tests.tools_exports import (annotation, brush_result, polygon_result, rectangle_result, shapes_tasks, task, upload_image,
                                 write_export)
from formats.conversion import ConversionError, ConvertOptions
from formats.export_images import ImageSources
from formats.yolo_dataset import YoloOptions, export_yolo, split_names, write_yolo_dataset
from tools.ls_to_yolo import main
from tools.shapes_dataset import CLASS_NAMES, generate_image


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("yolo")
    tasks = shapes_tasks(root / "ls", range(40, 48), kinds=("brush", "rectangle"))
    samples = {f"{seed:08x}-shapes_{seed}": sample for seed, (_, sample) in zip(range(40, 48), tasks)}
    return write_export(root / "export.json", [t for t, _ in tasks]), root / "ls", samples


def read_labels(path: Path) -> list[tuple[int, np.ndarray]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(row[0]), np.array(row[1:], dtype=np.float64)) for row in rows]


def test_segmentation_export_outlines_masks_and_boxes(export: tuple[Path, Path, dict], tmp_path: Path) -> None:
    export_path, ls_dir, samples = export
    options = YoloOptions(ConvertOptions(export_path, tmp_path / "ds", classes=CLASS_NAMES, sources=ImageSources(ls_dir)),
                          task="segment", val_fraction=0.25, seed=1)
    summary = export_yolo(options)

    data = yaml.safe_load((tmp_path / "ds" / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASS_NAMES))
    assert (Path(data["path"]) / data["train"]).is_dir()
    train = sorted(p.stem for p in (tmp_path / "ds" / "images" / "train").iterdir())
    val = sorted(p.stem for p in (tmp_path / "ds" / "images" / "val").iterdir())
    assert len(val) == 2 and len(train) == 6 and set(train) | set(val) == set(samples)
    for split, stems in (("train", train), ("val", val)):
        for stem in stems:
            sample = samples[stem]
            lines = read_labels(tmp_path / "ds" / "labels" / split / f"{stem}.txt")
            assert [class_id for class_id, _ in lines] == [i.class_id for i in sample.instances]
            for index, ((class_id, coords), instance) in enumerate(zip(lines, sample.instances)):
                height, width = instance.mask.shape
                polygon = coords.reshape(-1, 2) * [width, height]
                drawn = polygons_to_mask([polygon], width, height)
                if index % 2 == 0:  # a brush mask, outlined
                    assert mask_iou(drawn, instance.mask) > 0.85
                else:  # a rectangle: its four corners
                    x1, y1, x2, y2 = mask_to_box(instance.mask)
                    assert np.allclose(polygon, [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], atol=1e-3)
    assert summary.tasks_converted == 8 and not summary.skipped_anything


def test_detection_export_and_seeded_split(export: tuple[Path, Path, dict], tmp_path: Path) -> None:
    export_path, ls_dir, samples = export
    args = ["--json_file_path", str(export_path), "--ls_data_dir", str(ls_dir), "--task", "detect", "--seed", "7",
            "--classes", *CLASS_NAMES]
    assert main([*args, "--out_dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--out_dir", str(tmp_path / "b")]) == 0

    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*.txt"))  # noqa: E731
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    for label_file in (tmp_path / "a" / "labels").rglob("*.txt"):
        sample = samples[label_file.stem]
        height, width = sample.image.shape[:2]
        lines = read_labels(label_file)
        assert len(lines) == len(sample.instances)
        for (class_id, (cx, cy, w, h)), instance in zip(lines, sample.instances):
            x1, y1, x2, y2 = mask_to_box(instance.mask)
            assert class_id == instance.class_id
            assert np.allclose([cx * width, cy * height, w * width, h * height],
                               [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-3)
    names = [f"img{i}.png" for i in range(10)]
    assert split_names(names, 0.3, 0) == split_names(list(reversed(names)), 0.3, 0)
    assert split_names(names, 0.3, 0) != split_names(names, 0.3, 1)
    assert list(split_names(names[:2], 0.0, 0).values()).count("val") == 1


@pytest.mark.slow
def test_ultralytics_trains_one_epoch_on_the_export(export: tuple[Path, Path, dict], tmp_path: Path) -> None:
    from ultralytics import YOLO

    export_path, ls_dir, _ = export
    assert main(["--json_file_path", str(export_path), "--out_dir", str(tmp_path / "ds"), "--ls_data_dir", str(ls_dir)]) == 0
    model = YOLO("yolov8n-seg.yaml")
    model.train(data=str(tmp_path / "ds" / "data.yaml"), imgsz=64, epochs=1, batch=4, workers=0, device="cpu",
                plots=False, amp=False, project=str(tmp_path / "runs"), name="one", exist_ok=True, verbose=False)

    dataset = model.trainer.train_loader.dataset
    our_lines = sum(len(read_labels(p)) for p in (tmp_path / "ds" / "labels" / "train").glob("*.txt"))
    assert sum(len(label["cls"]) for label in dataset.labels) == our_lines > 0
    assert all(len(label["segments"]) == len(label["cls"]) for label in dataset.labels)
    assert (tmp_path / "runs" / "one" / "weights" / "last.pt").is_file()


THREE_CONTROLS_CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="rect" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></PolygonLabels>
  <BrushLabels name="brush" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></BrushLabels>
</View>"""


def three_control_tasks(ls_dir: Path, seeds: range) -> tuple[list[dict], dict]:
    """Each instance drawn three times, as the backend predicts a Rectangle + Polygon + Brush config:
    its box ('rect'), its outline ('poly', one region per part) and its mask ('brush')."""
    tasks, samples = [], {}
    for seed in seeds:
        sample = generate_image(seed)
        height, width = sample.image.shape[:2]
        url = upload_image(ls_dir, f"{seed:08x}-three_{seed}.png", sample.image)
        results = []
        for index, instance in enumerate(sample.instances):
            label = CLASS_NAMES[instance.class_id]
            results.append(dict(rectangle_result(mask_to_box(instance.mask), label, width, height, region_id=f"r{index}"),
                                from_name="rect"))
            results += [dict(polygon_result(polygon, label, width, height, f"p{index}_{part}"), from_name="poly")
                        for part, polygon in enumerate(mask_to_polygons(instance.mask))]
            results.append(dict(brush_result(instance.mask, label, f"b{index}"), from_name="brush"))
        tasks.append(task(seed, url, [annotation(results, annotation_id=seed)]))
        samples[f"{seed:08x}-three_{seed}"] = sample
    return tasks, samples


def all_labels(root: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    return {p.stem: read_labels(p) for p in (root / "labels").rglob("*.txt")}


def test_an_object_drawn_by_three_controls_is_labelled_once_from_the_most_precise_kind(tmp_path: Path) -> None:
    tasks, samples = three_control_tasks(tmp_path / "ls", range(60, 64))
    export_path = write_export(tmp_path / "export.json", tasks)
    n_instances = sum(len(sample.instances) for sample in samples.values())
    n_parts = sum(len(mask_to_polygons(i.mask)) for sample in samples.values() for i in sample.instances)

    segment = export_yolo(YoloOptions(ConvertOptions(export_path, tmp_path / "seg", classes=CLASS_NAMES, sources=ImageSources(tmp_path / "ls")),
                                      task="segment"))
    detect = export_yolo(YoloOptions(ConvertOptions(export_path, tmp_path / "det", classes=CLASS_NAMES, sources=ImageSources(tmp_path / "ls")),
                                     task="detect"))

    for stem, lines in all_labels(tmp_path / "seg").items():
        sample = samples[stem]
        height, width = sample.image.shape[:2]
        expected = [(i.class_id, polygon) for i in sample.instances for polygon in mask_to_polygons(i.mask)]
        assert [class_id for class_id, _ in lines] == [class_id for class_id, _ in expected]
        for (_, coords), (_, polygon) in zip(lines, expected):  # the polygons as drawn, not the brush outlines
            assert np.allclose(coords.reshape(-1, 2) * [width, height], polygon, atol=1e-3)
    assert segment.regions_by_control == {"poly (polygon)": n_parts}
    assert segment.regions_unused == {"rectangle duplicating a region of another control": n_instances,
                                      "brush duplicating a region of another control": n_instances}
    assert not segment.skipped_anything
    report = segment.report()
    assert f"regions used by control: poly (polygon) {n_parts}" in report and f"regions not used: {2 * n_instances}" in report

    for stem, lines in all_labels(tmp_path / "det").items():
        sample = samples[stem]
        assert [class_id for class_id, _ in lines] == [i.class_id for i in sample.instances]
    assert detect.regions_by_control == {"rect (rectangle)": n_instances}
    assert sum(detect.regions_unused.values()) == n_instances + n_parts


def test_from_name_picks_the_control_and_write_yolo_dataset_takes_task_dicts(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    tasks, samples = three_control_tasks(tmp_path / "ls", range(70, 73))
    export_path = write_export(tmp_path / "export.json", tasks)
    args = ["--json_file_path", str(export_path), "--ls_data_dir", str(tmp_path / "ls"), "--task", "segment"]

    assert main([*args, "--out_dir", str(tmp_path / "brush"), "--from_name", "brush"]) == 0
    assert "regions used by control: brush (brush)" in capsys.readouterr().out
    for stem, lines in all_labels(tmp_path / "brush").items():
        sample = samples[stem]
        height, width = sample.image.shape[:2]
        outlines = [polygons_to_mask([coords.reshape(-1, 2) * [width, height]], width, height) for _, coords in lines]
        assert len(lines) == sum(len(mask_to_polygons(i.mask)) for i in sample.instances)
        assert all(any(mask_iou(outline, i.mask) > 0.5 for i in sample.instances) for outline in outlines)

    assert main([*args, "--out_dir", str(tmp_path / "none"), "--from_name", "nope"]) == 1
    assert "no region comes from that control (controls in the export: brush, poly, rect)" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

    summary = write_yolo_dataset(iter(tasks), tmp_path / "api", task="detect", label_config=THREE_CONTROLS_CONFIG,
                                 from_names=["rect", "poly"], sources=ImageSources(tmp_path / "ls"), seed=3)
    assert summary.categories == list(CLASS_NAMES) and summary.tasks_converted == 3
    assert yaml.safe_load((tmp_path / "api" / "data.yaml").read_text())["names"] == dict(enumerate(CLASS_NAMES))
    for stem, lines in all_labels(tmp_path / "api").items():
        assert [class_id for class_id, _ in lines] == [i.class_id for i in samples[stem].instances]
    with pytest.raises(ConversionError, match="--task must be one of"):
        write_yolo_dataset(tasks, tmp_path / "bad", task="track")


def test_objects_drawn_with_different_kinds_are_all_kept(tmp_path: Path) -> None:
    sample = generate_image(91)  # four objects, three of them circles
    height, width = sample.image.shape[:2]
    url = upload_image(tmp_path / "ls", "0000005b-mixed.png", sample.image)
    results = []
    for index, instance in enumerate(sample.instances):  # each object once, by a different control
        label = CLASS_NAMES[instance.class_id]
        if index % 2:
            results.append(dict(rectangle_result(mask_to_box(instance.mask), label, width, height, region_id=f"r{index}"),
                                from_name="rect"))
        else:
            results.append(dict(brush_result(instance.mask, label, f"b{index}"), from_name="brush"))
    export_path = write_export(tmp_path / "e.json", [task(91, url, [annotation(results)])])

    summary = export_yolo(YoloOptions(ConvertOptions(export_path, tmp_path / "ds", classes=CLASS_NAMES, sources=ImageSources(tmp_path / "ls")),
                                      task="detect", val_fraction=0.0))

    lines, = all_labels(tmp_path / "ds").values()
    assert [class_id for class_id, _ in lines] == [i.class_id for i in sample.instances]
    assert not summary.regions_unused
