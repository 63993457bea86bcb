"""The attributes of HumanSignal's YOLO backend that the pose, OBB, classification and video controls read.

    <RectangleLabels model_obb="true">                       rotated boxes from a YOLO OBB model
    <KeyPointLabels model_point_threshold="0.5" model_point_size="1" model_add_bboxes="true">
        <Label value="apex" model_index="0" predicted_values="triangle"/>   keypoint 0 of a triangle
    <Choices choice="single|multiple">                       top class, or every class above the threshold
    <VideoRectangle model_tracker="botsort|bytetrack|my.yaml" model_conf="0.25" model_iou="0.7">
    <Taxonomy choice="single|multiple" leafsOnly="true">     nested <Choice> nodes, each a class by value or predicted_values
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace

TRACKERS = ("botsort", "bytetrack")
DEFAULT_FRAME_RATE = "24"  # Label Studio's <Video frameRate> default


class OptionError(ValueError):
    """An attribute value that cannot be used; the message names the control and the attribute."""


@dataclass(frozen=True)
class KeypointLabel:
    index: int  # the model's keypoint index (model_index)
    class_name: str  # model class (lower case) whose keypoint this is; "" for any class
    label: str


@dataclass(frozen=True)
class TaskOptions:
    obb: bool = False
    multiple: bool = False  # Choices choice="multiple"
    keypoints: tuple[KeypointLabel, ...] = ()
    point_threshold: float = 0.0
    point_size: float = 1.0
    add_bboxes: bool = True
    tracker: str = "botsort"
    track_conf: float | None = None  # model_conf; None: the control's score threshold
    track_iou: float = 0.7
    frame_rate: str = DEFAULT_FRAME_RATE  # the Video tag's frameRate: a number or "$key" of the task data
    box_controls: tuple = ()  # KeyPointLabels: the RectangleLabels (Control) on its image, for model_add_bboxes
    taxonomy: tuple[tuple[str, ...], ...] = ()  # Taxonomy: the path of each node a class can become, in config order
    find_all: bool = False  # smart RectangleLabels model_find_all="true": the drawn box is a SAM 3 example
    predicted_values: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (label, its predicted_values as written)

    def keypoint_label(self, class_name: str, index: int) -> str | None:
        """The label of keypoint `index` of an object of class `class_name`: a Label naming this class wins."""
        lowered = class_name.lower()
        for wanted in (lowered, ""):
            for keypoint in self.keypoints:
                if keypoint.index == index and keypoint.class_name == wanted:
                    return keypoint.label
        return None


def _flag(raw: object, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    return str(raw).strip().lower() in {"true", "1", "yes"}


def _number(control: str, name: str, raw: object, default: float, low: float, high: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(str(raw))
    except ValueError:
        raise OptionError(f"{name}='{raw}' on <{control}> is not a number") from None
    if not low <= value <= high:
        raise OptionError(f"{name}='{raw}' on <{control}> must be between {low:g} and {high:g}")
    return value


def parse_options(tag, frame_rate: str | None = None) -> TaskOptions:  # noqa: ANN001 - the SDK's control tag
    """TaskOptions of a control tag of label-studio-sdk; `frame_rate` from the <Video> it points to."""
    attr, name = tag.attr or {}, tag.name
    keypoints = []
    for label, label_tag in (tag.labels_attrs or {}).items():
        raw_index = (label_tag.attr or {}).get("model_index")
        if raw_index is None or raw_index == "":
            continue
        if not str(raw_index).strip().isdigit():
            raise OptionError(f"model_index='{raw_index}' on <Label value=\"{label}\"> of <{name}> is not a keypoint index (0, 1, ...)")
        classes = [c.strip().lower() for c in ((label_tag.attr or {}).get("predicted_values") or "").split(",") if c.strip()]
        keypoints += [KeypointLabel(int(raw_index), class_name, label) for class_name in classes or [""]]
    tracker = str(attr.get("model_tracker") or "botsort").strip()
    if tracker.endswith(".yaml"):
        tracker = tracker.removesuffix(".yaml") if tracker.removesuffix(".yaml") in TRACKERS else tracker
    elif tracker not in TRACKERS:
        raise OptionError(f"model_tracker='{tracker}' on <{name}> must be botsort, bytetrack or a tracker .yaml file in MODEL_ROOT")
    conf = attr.get("model_conf")
    return TaskOptions(
        obb=_flag(attr.get("model_obb"), False),
        multiple=str(attr.get("choice") or "single").strip().lower() == "multiple",
        keypoints=tuple(keypoints),
        point_threshold=_number(name, "model_point_threshold", attr.get("model_point_threshold"), 0.0, 0.0, 1.0),
        point_size=_number(name, "model_point_size", attr.get("model_point_size"), 1.0, 0.0, 100.0),
        add_bboxes=_flag(attr.get("model_add_bboxes"), True),
        tracker=tracker,
        track_conf=None if conf in (None, "") else _number(name, "model_conf", conf, 0.25, 0.0, 1.0),
        track_iou=_number(name, "model_iou", attr.get("model_iou"), 0.7, 0.0, 1.0),
        frame_rate=str(frame_rate or DEFAULT_FRAME_RATE),
        find_all=_flag(attr.get("model_find_all"), False),
        predicted_values=tuple((label, tuple(value.strip() for value in
                                             ((label_tag.attr or {}).get("predicted_values") or "").split(",")
                                             if value.strip()))
                               for label, label_tag in (tag.labels_attrs or {}).items()),
    )


def link_box_controls(controls: list) -> list:
    """The controls with each KeyPointLabels' `box_controls` set to the RectangleLabels on its image."""
    def boxes_for(control):  # noqa: ANN001, ANN202 - label_config.Control (imported there, not here)
        return tuple(c for c in controls if c.tag == "RectangleLabels" and c.to_name == control.to_name and not c.options.obb)

    return [replace(c, options=replace(c.options, box_controls=boxes_for(c))) if c.tag == "KeyPointLabels" else c
            for c in controls]



def taxonomy_nodes(xml: str, control_name: str) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(path root first, lower-case classes it stands for) of each node of <Taxonomy name=control_name> that
    a class can become: every leaf, and inner nodes with `predicted_values` (with leafsOnly="true", leaves
    only). A node stands for its own value and the classes in its `predicted_values`."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise OptionError(f"the labeling config is not valid XML: {exc}") from None
    taxonomy = next((tag for tag in root.iter("Taxonomy") if tag.get("name") == control_name), None)
    if taxonomy is None:
        return ()
    leafs_only = _flag(taxonomy.get("leafsOnly"), False)
    nodes = []

    def walk(parent: ElementTree.Element, path: tuple[str, ...]) -> None:
        for node in parent.findall("Choice"):
            value = node.get("value") or ""
            predicted = [name.strip().lower() for name in (node.get("predicted_values") or "").split(",") if name.strip()]
            if node.find("Choice") is None or (predicted and not leafs_only):
                nodes.append(((*path, value), tuple(dict.fromkeys([value.lower(), *predicted]))))
            walk(node, (*path, value))

    walk(taxonomy, ())
    return tuple(nodes)


def link_taxonomies(controls: list, xml: str) -> list:
    """The controls with each Taxonomy's tree read from the config: its `labels` are the paths of the nodes
    a class can become, joined with "/", and a class becomes the first of them (in config order) naming it."""
    def linked(control):  # noqa: ANN001, ANN202 - label_config.Control (imported there, not here)
        nodes = taxonomy_nodes(xml, control.name)
        class_to_label: dict[str, str] = {}
        for path, classes in nodes:
            for class_name in classes:
                class_to_label.setdefault(class_name, "/".join(path))
        return replace(control, labels=tuple("/".join(path) for path, _ in nodes), class_to_label=tuple(class_to_label.items()),
                       options=replace(control.options, taxonomy=tuple(path for path, _ in nodes)))

    return [linked(c) if c.tag == "Taxonomy" else c for c in controls]
