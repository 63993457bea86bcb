"""The attributes of HumanSignal's YOLO backend that the pose, OBB, classification and video controls read.

    <RectangleLabels model_obb="true">                       rotated boxes from a YOLO OBB model
    <KeyPointLabels model_point_threshold="0.5" model_point_size="1" model_add_bboxes="true">
        <Label value="apex" model_index="0" predicted_values="triangle"/>   keypoint 0 of a triangle
    <Choices choice="single|multiple">                       top class, or every class above the threshold
    <VideoRectangle model_tracker="botsort|bytetrack|my.yaml" model_conf="0.25" model_iou="0.7">
"""

from __future__ import annotations

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
    )


def link_box_controls(controls: list) -> list:
    """The controls with each KeyPointLabels' `box_controls` set to the RectangleLabels on its image."""
    def boxes_for(control):  # noqa: ANN001, ANN202 - label_config.Control (imported there, not here)
        return tuple(c for c in controls if c.tag == "RectangleLabels" and c.to_name == control.to_name and not c.options.obb)

    return [replace(c, options=replace(c.options, box_controls=boxes_for(c))) if c.tag == "KeyPointLabels" else c
            for c in controls]
