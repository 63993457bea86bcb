"""Label Studio keypoints -> YOLO pose label rows (`cls cx cy w h x1 y1 v1 ...`, normalized).

The keypoint order is the labeling config's: each `<Label model_index="i">` of the KeyPointLabels
is keypoint i (of the classes in its `predicted_values`, else of every class), exactly as the
backend predicts them, so a model trained on these rows is served by the same config.

An object is a box (a RectangleLabels region on the same image; its label is the class) with its
keypoints. Keypoints are grouped the way Label Studio links regions: a keypoint whose `parentID`
leads (possibly through other keypoints) to a box belongs to that box; keypoints linked to each
other without a box form one object whose box is their bounding box. An unlinked keypoint belongs
to the smallest box of a class it can be a keypoint of that contains it (within half a pixel). Keypoints that fit no
object are left out with the reason. Every annotated keypoint is visible (v=2); missing ones are `0 0 0`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from formats.geometry import ls_rect_to_box
from formats.label_config import Control, LabelConfig

VISIBLE = 2
EDGE = 0.5  # pixels: a keypoint on a box's edge (a box drawn around its keypoints) lies in it
_SIDES = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


class PoseSchemaError(ValueError):
    """The labeling config does not say how to number keypoints; the message says why."""


@dataclass(frozen=True)
class PoseSchema:
    """How a config's keypoints become YOLO pose rows."""

    keypoint_control: str
    box_controls: tuple[str, ...]
    classes: tuple[str, ...]  # object classes: the box labels, then classes only `predicted_values` name
    count: int  # keypoints per object (kpt_shape[0])
    index_of: dict[tuple[str, str], int] = field(default_factory=dict)  # (label, class lower or "") -> index
    flip_idx: tuple[int, ...] | None = None  # None when left/right names do not give one mapping for every class

    def keypoint_index(self, label: str, class_name: str) -> int | None:
        for wanted in (class_name.lower(), ""):
            if (label, wanted) in self.index_of:
                return self.index_of[(label, wanted)]
        return None

    def classes_of(self, label: str) -> list[str]:
        """The classes a keypoint label can belong to."""
        if (label, "") in self.index_of:
            return list(self.classes)
        return [name for name in self.classes if (label, name.lower()) in self.index_of]

    def data_yaml_fields(self) -> dict:
        extra: dict = {"kpt_shape": [self.count, 3]}
        if self.flip_idx is not None:
            extra["flip_idx"] = list(self.flip_idx)
        return extra


def pose_schema(config: LabelConfig, from_names: Sequence[str] = ()) -> PoseSchema:
    """The schema of the config's pose control (the KeyPointLabels named in `from_names`, else the only one)."""
    candidates = [c for c in config.prediction_controls if c.tag == "KeyPointLabels"]
    if from_names:
        candidates = [c for c in candidates if c.name in from_names]
    if len(candidates) != 1:
        found = ", ".join(c.name for c in candidates) or "none"
        raise PoseSchemaError(f"pose needs exactly one KeyPointLabels (not smart) to train (found: {found}); "
                              "choose one with --from_name")
    control = candidates[0]
    if not control.options.keypoints:
        raise PoseSchemaError(f"<KeyPointLabels name=\"{control.name}\"> has no Label with model_index: "
                              "number its keypoints (model_index=\"0\", \"1\", ...)")
    boxes = [c for c in control.options.box_controls if not from_names or c.name in from_names or
             all(name == control.name for name in from_names)]
    classes = list(dict.fromkeys(label for box in boxes for label in box.labels))
    known = {name.lower() for name in classes}
    for keypoint in control.options.keypoints:
        if keypoint.class_name and keypoint.class_name not in known:
            classes.append(keypoint.class_name)
            known.add(keypoint.class_name)
    classes = classes or [control.name]
    index_of = {(k.label, k.class_name): k.index for k in control.options.keypoints}
    count = max(k.index for k in control.options.keypoints) + 1
    return PoseSchema(control.name, tuple(box.name for box in boxes), tuple(classes), count, index_of,
                      _flip_idx(control, classes, count))


def _flip_idx(control: Control, classes: Sequence[str], count: int) -> tuple[int, ...] | None:
    """Keypoint i <-> the keypoint whose label swaps left and right ("left eye" <-> "right eye"), when
    that gives one mapping for every class; None otherwise (Ultralytics then trains without flips)."""
    mapping = list(range(count))
    decided = [False] * count
    for class_name in [name.lower() for name in classes]:
        labels = {k.index: k.label for k in control.options.keypoints if k.class_name in (class_name, "")}
        by_label = {label: index for index, label in labels.items()}
        for index, label in labels.items():
            mirrored = re.sub(r"left|right|Left|Right|LEFT|RIGHT", lambda m: _SIDES[m.group(0)], label)
            partner = by_label.get(mirrored, index)
            if decided[index] and mapping[index] != partner:
                return None
            mapping[index], decided[index] = partner, True
    return tuple(mapping)


@dataclass(frozen=True)
class PoseObject:
    class_name: str
    box: tuple[float, float, float, float]  # pixels x1 y1 x2 y2
    keypoints: dict[int, tuple[float, float]]  # index -> pixel (x, y)


@dataclass
class PoseGrouping:
    """The objects of one annotation and the keypoints left out (reason -> count)."""

    objects: list[PoseObject] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, reason: str) -> None:
        self.left_out[reason] = self.left_out.get(reason, 0) + 1


def _label(value: dict, key: str) -> str | None:
    labels = value.get(key) or value.get("labels")
    return labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None


def group_keypoints(results: Sequence[dict], schema: PoseSchema, width: int, height: int) -> PoseGrouping:
    """Objects of one annotation's `result` list (boxes of the schema's box controls and keypoints of its
    keypoint control; other results are not looked at)."""
    grouping = PoseGrouping()
    boxes: dict[str, tuple[str, tuple[float, float, float, float]]] = {}
    points: dict[str, tuple[str, tuple[float, float], str | None]] = {}
    for index, result in enumerate(results):
        value, region_id = result.get("value") or {}, str(result.get("id") or f"#{index}")
        try:
            if result.get("from_name") in schema.box_controls and (label := _label(value, "rectanglelabels")):
                if label in schema.classes:
                    boxes[region_id] = (label, ls_rect_to_box(value, width, height))
                else:
                    grouping.leave_out(f"box label '{label}' is not a class")
            elif result.get("from_name") == schema.keypoint_control and (label := _label(value, "keypointlabels")):
                point = (float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0)
                parent = result.get("parentID")
                points[region_id] = (label, point, str(parent) if parent else None)
        except (KeyError, TypeError, ValueError):
            grouping.leave_out("malformed value")
    members: dict[str, list[str]] = {}
    for point_id, (label, point, _) in points.items():
        root = _root(point_id, points)
        if root not in boxes and root == point_id and not any(_root(other, points) == point_id
                                                              for other in points if other != point_id):
            root = _containing_box(label, point, boxes, schema)  # unlinked: the box it lies in
            if root is None:
                grouping.leave_out("keypoint neither linked to an object nor inside a box of its class")
                continue
        members.setdefault(root, []).append(point_id)
    for box_id in boxes:
        members.setdefault(box_id, [])
    for root, point_ids in members.items():
        _add_object(grouping, root, point_ids, boxes, points, schema)
    return grouping


def _root(point_id: str, points: dict) -> str:
    """Where a keypoint's parentID chain ends: a box id, or the first keypoint of the chain."""
    seen = {point_id}
    current = point_id
    while (parent := points[current][2]) is not None and parent not in seen:
        if parent not in points:
            return parent
        seen.add(parent)
        current = parent
    return current


def _containing_box(label: str, point: tuple[float, float], boxes: dict, schema: PoseSchema) -> str | None:
    allowed = set(schema.classes_of(label))
    x, y = point
    inside = [(box_id, (box[2] - box[0]) * (box[3] - box[1])) for box_id, (class_name, box) in boxes.items()
              if class_name in allowed and box[0] - EDGE <= x <= box[2] + EDGE and box[1] - EDGE <= y <= box[3] + EDGE]
    return min(inside, key=lambda item: item[1])[0] if inside else None


def _add_object(grouping: PoseGrouping, root: str, point_ids: list[str], boxes: dict, points: dict,
                schema: PoseSchema) -> None:
    if root in boxes:
        class_name, box = boxes[root]
    else:
        shared = set(schema.classes)
        for point_id in point_ids:
            shared &= set(schema.classes_of(points[point_id][0]))
        if len(shared) != 1:
            for _ in point_ids:
                grouping.leave_out("linked keypoints without a box whose labels do not name one class")
            return
        class_name, box = shared.pop(), None
    keypoints: dict[int, tuple[float, float]] = {}
    for point_id in point_ids:
        label, point, _ = points[point_id]
        index = schema.keypoint_index(label, class_name)
        if index is None:
            grouping.leave_out(f"keypoint '{label}' is not a keypoint of class '{class_name}'")
        elif index in keypoints:
            grouping.leave_out("second keypoint with the same index in one object")
        else:
            keypoints[index] = point
    if box is None and not keypoints:
        return
    if box is None:  # linked keypoints without a box: the box around them
        xy = np.array(list(keypoints.values()))
        box = (*xy.min(axis=0).tolist(), *xy.max(axis=0).tolist())
        if box[2] <= box[0] or box[3] <= box[1]:
            for _ in keypoints:
                grouping.leave_out("keypoints without a box that do not span an area")
            return
    grouping.objects.append(PoseObject(class_name, box, keypoints))


def pose_line(pose: PoseObject, class_id: int, count: int, width: int, height: int) -> str | None:
    """`cls cx cy w h x1 y1 v1 ...` normalized and clipped to the image; None for a box outside it."""
    x1, y1, x2, y2 = np.clip(np.array(pose.box, dtype=np.float64), 0, [width, height, width, height])
    if x2 <= x1 or y2 <= y1:
        return None
    values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
    for index in range(count):
        if index in pose.keypoints:
            x, y = pose.keypoints[index]
            values += [min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0), VISIBLE]
        else:
            values += [0.0, 0.0, 0]
    return " ".join([str(class_id)] + [f"{v:.6f}" if isinstance(v, float) else str(v) for v in values])
