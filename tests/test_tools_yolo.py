"""Label Studio export -> YOLO dataset: labels, split, data.yaml, and a one-epoch Ultralytics train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from backend.geometry import mask_iou, mask_to_box, polygons_to_mask
from tests.tools_exports import shapes_tasks, write_export
from tools.convert_to_rle_mask_coco import ConvertOptions
from tools.ls_images import ImageSources
from tools.ls_to_yolo import YoloOptions, export_yolo, main, split_names
from tools.shapes_dataset import CLASS_NAMES


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
