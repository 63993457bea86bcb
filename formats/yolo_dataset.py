"""Label Studio tasks -> Ultralytics YOLO dataset (detection, segmentation, classification, pose, OBB): the
core of tools/ls_to_yolo.py (its command line, which says what the labels are), tools/train.py and the
backend's Start Training (backend/training/dataset.py).

`write_yolo_dataset(tasks, out_dir, ...)` writes a dataset from task dicts (an export, or tasks read
through the Label Studio API); `export_yolo(YoloOptions(...))` from an export file. Classify, pose and
OBB labels are written by formats/yolo_task_dataset.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from formats.coco import points_box
from formats.conversion import ConversionError, ConvertOptions, default_sources, fixed_classes
from formats.export_images import ExportImages, ImageLocator, ImageSources
from formats.geometry import mask_to_box, mask_to_polygons
from formats.label_config import LabelConfigError
from formats.ls_export import (CategoryIndex, ConvertedTask, ExportError, Selection, Summary, convert_tasks,
                               iter_export_tasks, label_config_classes)
from formats.export_regions import BrushRegion, PolygonRegion, Region
from formats.region_choice import RegionChooser
from formats.staging import staged_output
from formats.yolo_task_dataset import TASK_KINDS, TaskPlan, task_plan, write_task_dataset

TASKS = ("detect", "segment") + TASK_KINDS


@dataclass(frozen=True)
class YoloOptions:
    convert: ConvertOptions  # export, output folder, classes, selection, images (out_config is not used)
    task: str = "segment"
    val_fraction: float = 0.2
    seed: int = 0
    polygon_tolerance: float = 0.5  # pixels, for outlining brush masks
    from_names: tuple[str, ...] = ()  # controls whose regions are used; empty: all, one kind per object


def detection_line(region: Region, category_id: int, width: int, height: int) -> str | None:
    """`class cx cy w h`, normalized, for the box around the region clipped to the image."""
    if isinstance(region, BrushRegion):
        box = mask_to_box(region.mask)
    else:
        box = points_box(region.points if isinstance(region, PolygonRegion) else region.corners)
    x1, y1, x2, y2 = np.clip(np.array(box, dtype=np.float64), 0, [width, height, width, height])
    if x2 <= x1 or y2 <= y1:
        return None
    values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
    return " ".join([str(category_id)] + [f"{v:.6f}" for v in values])


def segment_lines(region: Region, category_id: int, width: int, height: int, tolerance: float) -> list[str]:
    """`class x1 y1 x2 y2 ...`, normalized and clipped to the image; one line per polygon."""
    if isinstance(region, BrushRegion):
        polygons = mask_to_polygons(region.mask, tolerance=tolerance)
    else:
        polygons = [region.points if isinstance(region, PolygonRegion) else region.corners]
    lines = []
    for polygon in polygons:
        coords = (np.asarray(polygon, dtype=np.float64) / np.array([width, height])).clip(0, 1).ravel()
        lines.append(" ".join([str(category_id)] + [f"{c:.6f}" for c in coords]))
    return lines


def label_lines(regions: list[tuple[Region, int]], width: int, height: int, task: str, tolerance: float) -> list[str]:
    lines: list[str] = []
    for region, category_id in regions:
        if task == "detect":
            line = detection_line(region, category_id, width, height)
            lines.extend([line] if line else [])
        else:
            lines.extend(segment_lines(region, category_id, width, height, tolerance))
    return lines


def split_names(names: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """file name -> train | val: a seeded shuffle of the sorted names, the first ones validate.
    Both splits get at least one image when there are two or more (Ultralytics needs a val set)."""
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    n_val = round(len(shuffled) * val_fraction)
    if len(shuffled) >= 2:
        n_val = min(max(n_val, 1), len(shuffled) - 1)
    return {name: "val" if index < n_val else "train" for index, name in enumerate(shuffled)}


def data_yaml(root: Path, names: list[str], extra: dict | None = None, task: str = "detect") -> str:
    splits = {"train": "train", "val": "val"} if task == "classify" else {"train": "images/train", "val": "images/val"}
    return yaml.safe_dump({"path": str(root.resolve()), **splits, **(extra or {}), "names": dict(enumerate(names))},
                          sort_keys=False, allow_unicode=True)


def write_yolo(converted_tasks: Iterable[ConvertedTask], options: YoloOptions, pending_images: Path,
               publish: Path, summary: Summary) -> list[str]:
    """Label files for the converted tasks, then every image and label moved into its split;
    returns the names of the images written."""
    pending_labels = pending_images.parent / "labels"
    chooser = RegionChooser(options.task, options.from_names)
    written: list[str] = []
    for converted in converted_tasks:
        if converted.image.how == "shared":  # the same image in two tasks: labelled by the first one
            summary.skip_task(converted.task_id, "image already used by another task")
            continue
        label_path = pending_labels / PurePosixPath(converted.image.file_name).with_suffix(".txt")
        label_path.parent.mkdir(parents=True, exist_ok=True)
        regions = chooser.choose(converted.regions, summary)
        lines = label_lines(regions, converted.width, converted.height, options.task, options.polygon_tolerance)
        label_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        written.append(converted.image.file_name)
        summary.tasks_converted += 1
    if problem := chooser.check_from_names():
        raise ConversionError(problem)
    publish_splits(written, pending_images, publish, options)
    return written


def publish_splits(written: Sequence[str], pending_images: Path, publish: Path, options: YoloOptions,
                   classes: dict[str, str | None] | None = None) -> None:
    """Move each image (and its label file) into its split: images/<split>/, labels/<split>/; for
    classification (`classes`: image -> class) into <split>/<class>/, with every class folder in both splits."""
    for split in ("train", "val") if classes is not None else ():
        for name in set(classes.values()):
            (publish / split / str(name)).mkdir(parents=True, exist_ok=True)
    for name, split in split_names(list(written), options.val_fraction, options.seed).items():
        if classes is not None:
            moves = [(pending_images / name, publish / split / str(classes[name]) / PurePosixPath(name).name)]
        else:
            label_name = str(PurePosixPath(name).with_suffix(".txt"))
            moves = [(pending_images / name, publish / "images" / split / name),
                     (pending_images.parent / "labels" / label_name, publish / "labels" / split / label_name)]
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)


def _check_options(options: YoloOptions) -> None:
    if options.task not in TASKS:
        raise ConversionError(f"--task must be one of {', '.join(TASKS)}")
    if not 0 <= options.val_fraction < 1:
        raise ConversionError("--val_fraction must be at least 0 and less than 1")


def _write_dataset(tasks: Iterable[dict], options: YoloOptions, names: list[str], image_key: str | None,
                   plan: TaskPlan | None = None) -> Summary:
    base = options.convert
    sources = base.sources or default_sources()
    summary = Summary()
    try:
        with staged_output(base.out_dir) as staging:
            pending = staging.work / "pending" / "images"
            images = ExportImages(ImageLocator(sources, staging.work / "downloads"), pending)
            categories = CategoryIndex(plan.category_names() if plan else names)
            if plan is None:
                converted = convert_tasks(tasks, base.selection, categories, images, image_key, summary)
                write_yolo(converted, options, pending, staging.publish, summary)
                summary.categories = categories.names
            else:
                _write_task_kind(tasks, options, plan, images, pending, categories, image_key, staging.publish, summary)
            (staging.publish / "data.yaml").write_text(
                data_yaml(base.out_dir, summary.categories, plan.yaml_fields() if plan else None, options.task),
                encoding="utf-8")
            summary.outputs.append(base.out_dir / "data.yaml")
    except ExportError as exc:
        raise ConversionError(str(exc)) from None
    except OSError as exc:
        raise ConversionError(f"cannot write the dataset to '{base.out_dir}': {exc}") from None
    return summary


def export_yolo(options: YoloOptions) -> Summary:
    """Run the export; raises ConversionError for user errors, leaving no partial output."""
    _check_options(options)
    if not options.convert.json_file_path.is_file():
        raise ConversionError(f"the export '{options.convert.json_file_path}' does not exist")
    tasks = iter_export_tasks(options.convert.json_file_path, options.convert.progress)
    if options.task in TASK_KINDS:
        config_path = options.convert.label_config
        try:
            config = config_path.read_text(encoding="utf-8") if config_path is not None else None
        except OSError as exc:
            raise ConversionError(f"cannot read the labeling config '{config_path}': {exc.strerror or exc}") from None
        plan = task_plan(options.task, config, options.from_names, options.convert.classes)
        return _write_dataset(tasks, options, [], options.convert.image_key or _config_image_key(config), plan)
    names, config_key = fixed_classes(options.convert)
    return _write_dataset(tasks, options, names, options.convert.image_key or config_key)


def _write_task_kind(tasks: Iterable[dict], options: YoloOptions, plan: TaskPlan, images: ExportImages, pending: Path,
                     categories: CategoryIndex, image_key: str | None, publish: Path, summary: Summary) -> None:
    """A classify, pose or OBB dataset: formats.yolo_task_dataset labels the images, then they go into their splits."""
    converted = convert_tasks(plan.tasks(tasks, options.convert.selection), options.convert.selection, categories,
                              images, image_key, summary)
    written = write_task_dataset(converted, plan, pending, summary, {name: i for i, name in enumerate(plan.classes)})
    if plan.task == "classify":
        summary.categories = sorted(set(plan.classes) | {label for label in written.values() if label})
        publish_splits(list(written), pending, publish, options, dict(written))
    else:
        summary.categories = categories.names
        publish_splits(list(written), pending, publish, options)


def _config_image_key(label_config: str | None) -> str | None:
    """The data key of the config's first image control (the tasks' image URL)."""
    if label_config is None:
        return None
    from formats.label_config import parse_label_config

    controls = parse_label_config(label_config).controls
    return controls[0].data_key if controls else None


def write_yolo_dataset(tasks: Iterable[dict], out_dir: Path, *, task: str = "segment", classes: Sequence[str] = (),
                       label_config: str | None = None, from_names: Sequence[str] = (), use_predictions: bool = False,
                       all_annotations: bool = False, image_key: str | None = None, sources: ImageSources | None = None,
                       val_fraction: float = 0.2, seed: int = 0, polygon_tolerance: float = 0.5) -> Summary:
    """Write a YOLO dataset (images/, labels/, data.yaml) into `out_dir` from Label Studio task dicts
    (as exported, or as the API returns them with their annotations), streamed one at a time.

    `classes` fixes the class ids (else the labels of `label_config`, the labeling config XML, else
    the order labels are first seen); `sources` says where images are found or downloaded
    (`ImageSources(ls_data_dir, image_root=...)`, with `downloader=` for images not on disk; default: this
    machine's Label Studio folders, no downloads). Returns the Summary (its `report()` says what was used and left out); raises
    ConversionError for bad options, a bad labeling config or an unwritable `out_dir`, leaving
    nothing behind."""
    if task in TASK_KINDS:
        plan = task_plan(task, label_config, from_names, classes)
        options = YoloOptions(ConvertOptions(Path(), Path(out_dir), selection=Selection(use_predictions, all_annotations),
                                             image_key=image_key, sources=sources),
                              task=task, val_fraction=val_fraction, seed=seed, from_names=tuple(from_names))
        _check_options(options)
        return _write_dataset(tasks, options, [], image_key or _config_image_key(label_config), plan)
    names, config_key = list(classes), None
    if label_config is not None:
        try:
            config_names, config_key = label_config_classes(label_config)
        except LabelConfigError as exc:
            raise ConversionError(f"labeling config: {exc}") from None
        names = names or config_names
    options = YoloOptions(ConvertOptions(Path(), Path(out_dir), classes=tuple(names),
                                         selection=Selection(use_predictions, all_annotations),
                                         image_key=image_key, sources=sources),
                          task=task, val_fraction=val_fraction, seed=seed, polygon_tolerance=polygon_tolerance,
                          from_names=tuple(from_names))
    _check_options(options)
    return _write_dataset(tasks, options, names, image_key or config_key)
