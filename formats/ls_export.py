"""Reading a Label Studio JSON export: streaming its tasks, choosing annotations, and turning
result regions into pixel geometry (formats/export_regions.py) that the COCO and YOLO writers share.

The export is a JSON array of tasks, each with `data` (the image URL), `annotations` and
`predictions`, whose `result` lists hold one entry per region in percent of the image
(`original_width` x `original_height` pixels), or a Label Studio brush RLE at that size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import ijson
from tqdm import tqdm

from formats.export_images import PlacedImage, image_size
from formats.export_regions import (SKIP_MISSING_SIZE, NotARegion, Region, RegionSkip, first_result_size, parse_region,
                                    region_type)

SKIP_CANCELLED = "cancelled annotation"
SKIP_NOT_ANNOTATED = "no annotations"
SKIP_NO_PREDICTIONS = "no predictions"
SKIP_PREDICTIONS_BY_ID = "predictions listed by id only"
SKIP_NO_IMAGE_URL = "no image URL in task data"
SKIP_UNKNOWN_LABEL = "unknown label"
# Label Studio 1.23's GET /api/projects/<id>/export expands drafts only, so predictions come as ids
# (label_studio/data_export/api.py ExportAPI); an export snapshot expands them on request (mixins.py).
PREDICTIONS_EXPORT_HINT = (
    "the export lists predictions by id only, as Label Studio's JSON export (GET /api/projects/<id>/export) always "
    "does: export them in full with a snapshot, POST /api/projects/<id>/exports/ with the body "
    '{"serialization_options": {"predictions": {"only_id": false}}}, then GET '
    "/api/projects/<id>/exports/<export id>/download?exportType=JSON")


class ExportError(Exception):
    """The export file cannot be read; the message says why (shown to the user as is)."""


# ---------------------------------------------------------------- streaming the export


def iter_export_tasks(path: Path, progress: bool = False) -> Iterator[dict]:
    """Tasks of a Label Studio JSON export, one at a time (the file is never loaded whole).

    Accepts a JSON array of tasks or a single task object. Raises ExportError for a missing or
    malformed file, at the point where the malformation is found.
    """
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ExportError(f"cannot read the export '{path}': {exc.strerror or exc}") from None
    with handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="tasks",
                      disable=not progress or None, leave=False) as bar:
        first = _first_significant_byte(handle)
        if first not in (b"[", b"{"):
            raise ExportError(f"'{path}' is not a Label Studio JSON export: it must hold a JSON array of tasks")
        prefix = "item" if first == b"[" else ""
        try:
            for index, task in enumerate(ijson.items(handle, prefix, use_float=True)):
                if not isinstance(task, dict):
                    raise ExportError(f"'{path}': item {index} of the export is a {type(task).__name__}, not a task object")
                bar.update(handle.tell() - bar.n)
                yield task
        except ijson.JSONError as exc:
            detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ExportError(f"'{path}' is not valid JSON (near byte {handle.tell()}): {detail}") from None


def _first_significant_byte(handle) -> bytes:  # noqa: ANN001 - a binary file
    head = handle.read(64)
    handle.seek(0)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return stripped[:1]


# ---------------------------------------------------------------- choosing annotations


@dataclass(frozen=True)
class Selection:
    use_predictions: bool = False  # convert predictions instead of annotations
    all_annotations: bool = False  # every non-cancelled annotation (or prediction), not only the latest


def _recency(entry: dict) -> tuple[str, int]:
    entry_id = entry.get("id")
    return str(entry.get("created_at") or ""), entry_id if isinstance(entry_id, int) else 0


def _is_cancelled(annotation: dict) -> bool:
    return bool(annotation.get("was_cancelled") or annotation.get("skipped"))


def chosen_results(task: dict, selection: Selection) -> tuple[list[list], str | None, int]:
    """The result lists to convert for `task`, the reason when there are none, and how many
    cancelled annotations were passed over."""
    key = "predictions" if selection.use_predictions else "annotations"
    listed = task.get(key) or []
    entries = [entry for entry in listed if isinstance(entry, dict)]
    if not entries and not selection.use_predictions:
        entries = [entry for entry in task.get("completions") or [] if isinstance(entry, dict)]
    usable = [entry for entry in entries if not _is_cancelled(entry)]
    cancelled = len(entries) - len(usable)
    if not entries and selection.use_predictions:
        by_id = isinstance(listed, list) and all(isinstance(entry, int) for entry in listed)
        return [], SKIP_PREDICTIONS_BY_ID if listed and by_id else SKIP_NO_PREDICTIONS, 0
    if not entries:
        return [], SKIP_NOT_ANNOTATED, 0
    if not usable:
        return [], SKIP_CANCELLED, cancelled
    if not selection.all_annotations:
        usable = [max(usable, key=_recency)]
    results = [entry.get("result") if isinstance(entry.get("result"), list) else [] for entry in usable]
    return results, None, cancelled


def task_image_url(task: dict, image_key: str | None) -> str | None:
    """The task's image URL: `data[image_key]`, else `data["image"]`, else its only string value."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if image_key:
        value = data.get(image_key)
        return value if isinstance(value, str) and value else None
    if isinstance(data.get("image"), str) and data["image"]:
        return data["image"]
    strings = [value for value in data.values() if isinstance(value, str) and value]
    return strings[0] if len(strings) == 1 else None


# ---------------------------------------------------------------- categories


class CategoryIndex:
    """Stable category ids (0-based, as OpenMMLab's script and Label Studio's COCO export number them):
    a fixed list (from --classes or the labeling config) refuses other labels; otherwise labels get
    ids in the order they are first seen."""

    def __init__(self, fixed_names: Sequence[str] = ()) -> None:
        self._fixed = bool(fixed_names)
        self._ids: dict[str, int] = {}
        for name in fixed_names:
            self._ids.setdefault(name, len(self._ids))

    def id_for(self, label: str) -> int | None:
        if label not in self._ids and not self._fixed:
            self._ids[label] = len(self._ids)
        return self._ids.get(label)

    @property
    def names(self) -> list[str]:
        return list(self._ids)


def parse_class_list(values: Sequence[str]) -> list[str]:
    """`--classes cat dog`, `--classes cat,dog` or the printed list `['cat', 'dog']` -> names."""
    names = []
    for value in values:
        for part in value.strip().strip("[]()").split(","):
            name = part.strip().strip("'\"").strip()
            if name and name not in names:
                names.append(name)
    return names


def label_config_classes(xml: str) -> tuple[list[str], str | None]:
    """Labels of the config's RectangleLabels, PolygonLabels and BrushLabels in config order, and
    the task data key of their image; raises LabelConfigError for an unusable config."""
    from formats.label_config import parse_label_config

    config = parse_label_config(xml)
    names: list[str] = []
    image_keys: list[str] = []
    for control in config.controls:
        if control.tag in ("RectangleLabels", "PolygonLabels", "BrushLabels"):
            names.extend(label for label in control.labels if label not in names)
            image_keys.append(control.data_key)
    return names, image_keys[0] if image_keys else None


# ---------------------------------------------------------------- the report


@dataclass
class Summary:
    """What a conversion did and what it left out, with reasons."""

    tasks: int = 0
    tasks_converted: int = 0  # counted by the writer: one COCO image entry or YOLO image each
    annotations_used: int = 0
    regions: Counter = field(default_factory=Counter)  # converted, by region type
    tasks_skipped: Counter = field(default_factory=Counter)  # reason -> count
    regions_skipped: Counter = field(default_factory=Counter)  # reason -> count
    ignored_results: Counter = field(default_factory=Counter)  # result type -> count (not regions)
    regions_unused: Counter = field(default_factory=Counter)  # reason -> count: left out on purpose, not a problem
    regions_by_control: Counter = field(default_factory=Counter)  # "control (kind)" -> regions used
    cancelled_annotations: int = 0
    images: Counter = field(default_factory=Counter)  # copied | downloaded | shared | in place | missing
    image_problems: Counter = field(default_factory=Counter)  # reason -> count
    problems: list[str] = field(default_factory=list)  # first examples, for the report
    categories: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    MAX_PROBLEMS = 20

    def note(self, message: str) -> None:
        if len(self.problems) < self.MAX_PROBLEMS:
            self.problems.append(message)

    def skip_region(self, task_id: object, result: dict, reason: str) -> None:
        self.regions_skipped[reason] += 1
        self.note(f"task {task_id}: region {result.get('id', '?')} skipped: {reason}")

    def skip_task(self, task_id: object, reason: str, detail: str | None = None) -> None:
        self.tasks_skipped[reason] += 1
        self.note(f"task {task_id} skipped: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def skipped_anything(self) -> bool:
        return bool(self.tasks_skipped or self.regions_skipped or self.image_problems or self.cancelled_annotations)

    def report(self) -> str:
        lines = [f"tasks read: {self.tasks}, converted: {self.tasks_converted}, annotations used: {self.annotations_used}"]
        converted = ", ".join(f"{kind} {count}" for kind, count in sorted(self.regions.items())) or "none"
        lines.append(f"regions converted: {sum(self.regions.values())} ({converted})")
        lines.append("images: " + (", ".join(f"{how} {count}" for how, count in sorted(self.images.items())) or "none"))
        if self.regions_by_control:
            lines.append("regions used by control: " + ", ".join(f"{control} {count}" for control, count in self.regions_by_control.items()))
        if self.cancelled_annotations:
            lines.append(f"cancelled annotations passed over: {self.cancelled_annotations}")
        for title, counter in (("tasks skipped", self.tasks_skipped), ("regions skipped", self.regions_skipped),
                               ("image problems", self.image_problems), ("regions not used", self.regions_unused),
                               ("results ignored (not image regions)", self.ignored_results)):
            if counter:
                details = ", ".join(f"{reason}: {count}" for reason, count in counter.most_common())
                lines.append(f"{title}: {sum(counter.values())} ({details})")
        if self.tasks_skipped[SKIP_PREDICTIONS_BY_ID]:
            lines.append(PREDICTIONS_EXPORT_HINT)
        if self.problems:
            lines.append("first problems:")
            lines.extend(f"  {problem}" for problem in self.problems)
        lines.extend(f"wrote {path}" for path in self.outputs)
        return "\n".join(lines)


# ---------------------------------------------------------------- the shared conversion loop


@dataclass(frozen=True)
class ConvertedTask:
    task_id: object
    image: PlacedImage
    width: int
    height: int
    regions: list[tuple[Region, int]]  # with their category ids


class ImagePlacement(Protocol):
    def place(self, url: str, task_id: object) -> PlacedImage: ...


def convert_tasks(tasks: Iterable[dict], selection: Selection, categories: CategoryIndex, images: ImagePlacement,
                  image_key: str | None, summary: Summary) -> Iterator[ConvertedTask]:
    """Each usable task with its image placed and its regions in pixels, counting everything that
    is left out in `summary`. The COCO and YOLO writers both consume this."""
    for task in tasks:
        summary.tasks += 1
        task_id = task.get("id", f"#{summary.tasks}")
        results, reason, cancelled = chosen_results(task, selection)
        summary.cancelled_annotations += cancelled
        if reason:
            summary.skip_task(task_id, reason)
            continue
        url = task_image_url(task, image_key)
        if url is None:
            summary.skip_task(task_id, SKIP_NO_IMAGE_URL)
            continue
        image = images.place(url, task_id)
        summary.images[image.how] += 1
        if image.path is None and image.size is None:  # a dataset never names a file it does not hold
            summary.skip_task(task_id, image.reason or "image missing", image.problem)
            continue
        size = first_result_size(results)
        file_size = image.size or _file_size(image, image.path, summary, task_id)
        if size and file_size and size != file_size:
            summary.image_problems["image size differs from the annotation's original size"] += 1
            summary.note(f"task {task_id}: image {image.file_name} is {file_size[0]}x{file_size[1]}, "
                         f"annotated at {size[0]}x{size[1]}")
        size = size or file_size
        if size is None:
            summary.skip_task(task_id, SKIP_MISSING_SIZE)
            continue
        regions = []
        for result_list in results:
            summary.annotations_used += 1
            for result in result_list:
                region = parse_region(result, size) if isinstance(result, dict) else NotARegion(type(result).__name__)
                if isinstance(region, NotARegion):
                    summary.ignored_results[region.result_type] += 1
                elif isinstance(region, RegionSkip):
                    summary.skip_region(task_id, result, region.reason)
                elif (category_id := categories.id_for(region.label)) is None:
                    summary.skip_region(task_id, result, f"{SKIP_UNKNOWN_LABEL} '{region.label}'")
                else:
                    summary.regions[region_type(region)] += 1
                    regions.append((region, category_id))
        yield ConvertedTask(task_id, image, size[0], size[1], regions)


def _file_size(image: PlacedImage, path: Path, summary: Summary, task_id: object) -> tuple[int, int] | None:
    try:
        return image_size(path)
    except OSError as exc:
        summary.image_problems["unreadable image"] += 1
        summary.note(f"task {task_id}: image {image.file_name} is unreadable: {exc}")
        return None
