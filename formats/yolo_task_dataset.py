"""Label Studio tasks -> Ultralytics classification, pose and OBB datasets (the other half of formats.yolo_dataset).

- classify: the task's Choices (one choice per image; tasks with none or several are left out),
  written as Ultralytics' folders `train/<class>/<image>`, `val/<class>/<image>`; class names sorted,
  as Ultralytics numbers them.
- pose: boxes and their keypoints grouped as formats/yolo_pose.py says, `labels/*.txt` rows
  `cls cx cy w h x1 y1 v1 ...`, `kpt_shape` (and `flip_idx` when left/right labels give one) in data.yaml.
- obb: rectangles, rotated or not, as `cls x1 y1 x2 y2 x3 y3 x4 y4` normalized corners
  (formats.geometry.ls_rect_to_yolo_obb: Label Studio's x, y, width, height, rotation exactly).

Images are placed, sized and counted by the shared conversion loop (formats.ls_export.convert_tasks);
choices and keypoints, which that loop does not turn into regions, are taken from the chosen
annotation's raw results on the way in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from formats.label_config import LabelConfig, LabelConfigError, parse_label_config
from formats.conversion import ConversionError
from formats.ls_export import ConvertedTask, Selection, Summary, chosen_results
from formats.export_regions import RectangleRegion
from formats.yolo_pose import PoseSchema, PoseSchemaError, group_keypoints, pose_line, pose_schema

TASK_KINDS = ("classify", "pose", "obb")
RAW_RESULT_TASKS = ("classify", "pose")  # read from the raw results, not from convert_tasks' regions


@dataclass
class TaskPlan:
    """What a classification, pose or OBB dataset is made of, from the labeling config and --from_name."""

    task: str
    classes: tuple[str, ...]  # fixed classes; empty: as first seen (classify, obb without a config)
    from_names: tuple[str, ...] = ()
    schema: PoseSchema | None = None
    _raw: dict = field(default_factory=dict, init=False, repr=False)  # the current task key -> its chosen results

    def category_names(self) -> list[str]:
        return list(self.classes)

    def yaml_fields(self) -> dict:
        return self.schema.data_yaml_fields() if self.schema else {}

    def tasks(self, tasks: Iterable[dict], selection: Selection) -> Iterator[dict]:
        """The tasks for convert_tasks: for classify and pose their chosen results are kept aside here and
        the task goes on without results (it still places the image and counts the annotation)."""
        for number, task in enumerate(tasks, start=1):
            if self.task not in RAW_RESULT_TASKS:
                yield task
                continue
            self._raw = {_task_key(task, number): chosen_results(task, selection)[0]}
            yield {**task, **{key: [{**entry, "result": []} if isinstance(entry, dict) else entry for entry in task[key]]
                              for key in ("annotations", "predictions", "completions") if isinstance(task.get(key), list)}}

    def label_lines(self, converted: ConvertedTask, category_ids: dict[str, int], summary: Summary) -> list[str]:
        """pose and obb: the label rows of one image."""
        if self.task == "obb":
            return self._obb_lines(converted, summary)
        lines = []
        for results in self._raw.get(converted.task_id, []):
            grouping = group_keypoints([r for r in results if isinstance(r, dict)], self.schema,
                                       converted.width, converted.height)
            for reason, count in grouping.left_out.items():
                summary.regions_skipped[reason] += count
                summary.note(f"task {converted.task_id}: {count} region(s) left out: {reason}")
            for pose in grouping.objects:
                line = pose_line(pose, category_ids[pose.class_name], self.schema.count, converted.width, converted.height)
                if line is None:
                    summary.regions_skipped["box outside the image"] += 1
                    continue
                summary.regions["pose object"] += 1
                summary.regions["keypoint"] += len(pose.keypoints)
                lines.append(line)
        return lines

    def _obb_lines(self, converted: ConvertedTask, summary: Summary) -> list[str]:
        lines = []
        for region, category_id in converted.regions:
            if self.from_names and region.from_name not in self.from_names:
                summary.regions_unused[f"control '{region.from_name}' not chosen (--from_name)"] += 1
            elif not isinstance(region, RectangleRegion):
                summary.regions_unused["not a rectangle (OBB datasets take rectangles)"] += 1
            else:
                lines.append(obb_line(region, category_id, converted.width, converted.height))
                summary.regions_by_control[f"{region.from_name or '?'} (rectangle)"] += 1
        return lines

    def choice(self, converted: ConvertedTask, summary: Summary) -> str | None:
        """classify: the task's one choice, or None (counted as a skipped task with the reason)."""
        labels: list[str] = []
        for results in self._raw.get(converted.task_id, []):
            for result in results:
                if not isinstance(result, dict) or str(result.get("type", "")).lower() != "choices":
                    continue
                if self.from_names and result.get("from_name") not in self.from_names:
                    summary.regions_unused[f"control '{result.get('from_name')}' not chosen (--from_name)"] += 1
                    continue
                chosen = (result.get("value") or {}).get("choices")
                labels += [label for label in chosen or [] if isinstance(label, str) and label not in labels]
        if len(labels) != 1:
            summary.skip_task(converted.task_id, "no choice" if not labels else "several choices (classification takes one)",
                              ", ".join(labels) or None)
            return None
        if self.classes and labels[0] not in self.classes:
            summary.skip_task(converted.task_id, f"unknown label '{labels[0]}'")
            return None
        summary.regions["choice"] += 1
        return labels[0]


def _task_key(task: dict, number: int) -> object:
    """The id convert_tasks gives the task (its id, else its position)."""
    return task.get("id", f"#{number}")


def obb_line(region: RectangleRegion, category_id: int, width: int, height: int) -> str:
    """`cls x1 y1 ... x4 y4`: the rectangle's corners as formats.geometry.ls_rect_to_yolo_obb gives them,
    clipped to the image (Ultralytics refuses coordinates outside it)."""
    corners = (region.corners / [width, height]).ravel()  # formats.ls_export made them with ls_rect_corners
    return " ".join([str(category_id)] + [f"{c:.6f}" for c in corners.clip(0, 1)])


def task_plan(task: str, label_config: str | None, from_names: Sequence[str], classes: Sequence[str]) -> TaskPlan:
    """The plan for a classify/pose/obb dataset; raises ConversionError when the config cannot give one."""
    config = None
    if label_config is not None:
        try:
            config = parse_label_config(label_config)
        except LabelConfigError as exc:
            raise ConversionError(f"labeling config: {exc}") from None
    if task == "pose":
        if config is None:
            raise ConversionError("--task pose needs the labeling config (--label_config): its KeyPointLabels' "
                                  "model_index numbers the keypoints")
        try:
            schema = pose_schema(config, from_names)
        except PoseSchemaError as exc:
            raise ConversionError(str(exc)) from None
        return TaskPlan(task, schema.classes, tuple(from_names), schema)
    wanted = _config_classes(config, task, from_names) if config is not None else []
    names = list(classes) or wanted
    return TaskPlan(task, tuple(sorted(names) if task == "classify" else names), tuple(from_names))


def _config_classes(config: LabelConfig, task: str, from_names: Sequence[str]) -> list[str]:
    def wanted(control) -> bool:  # noqa: ANN001 - label_config.Control
        if from_names and control.name not in from_names:
            return False
        if task == "classify":
            return control.tag == "Choices"
        return control.tag == "RectangleLabels" and (control.options.obb or bool(from_names))

    controls = [c for c in config.controls if wanted(c)]
    if not controls:
        kind = "Choices" if task == "classify" else 'RectangleLabels with model_obb="true"'
        raise ConversionError(f"--task {task}: the labeling config has no {kind}" +
                              (f" named {', '.join(from_names)}" if from_names else ""))
    return list(dict.fromkeys(label for control in controls for label in control.labels))


def label_file(name: str) -> str:
    return str(PurePosixPath(name).with_suffix(".txt"))


def write_task_dataset(converted_tasks: Iterable[ConvertedTask], plan: TaskPlan, pending_images: Path,
                       summary: Summary, category_ids: dict[str, int]) -> dict[str, str | None]:
    """Label files (pose, obb) next to `pending_images`; returns image name -> its class (classify) or None."""
    pending_labels = pending_images.parent / "labels"
    written: dict[str, str | None] = {}
    for converted in converted_tasks:
        if converted.image.how == "shared":  # the same image in two tasks: labelled by the first one
            summary.skip_task(converted.task_id, "image already used by another task")
            continue
        if plan.task == "classify":
            label = plan.choice(converted, summary)
            if label is None:
                (pending_images / converted.image.file_name).unlink(missing_ok=True)
                continue
            written[converted.image.file_name] = label
        else:
            path = pending_labels / label_file(converted.image.file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in plan.label_lines(converted, category_ids, summary)),
                            encoding="utf-8")
            written[converted.image.file_name] = None
        summary.tasks_converted += 1
    return written
