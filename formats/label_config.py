"""Which control tags of a labeling config want what from the models.

Parsing uses label-studio-sdk's `LabelInterface`; this module only reads the attributes that
Label Studio users know from the HumanSignal YOLO backend: `model_path`, `model_score_threshold`,
`model_skip` on a control, `predicted_values` on a Label, and `smart` for interactive prompts.
Tag and attribute names are read in any case, as Label Studio's editor reads them (`<rectanglelabels
toname="image">`, `<Video framerate="30">`); the SDK wants them spelled as Label Studio's docs do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from xml.etree import ElementTree

from formats.control_options import OptionError, TaskOptions, link_box_controls, link_taxonomies, parse_options

PREDICTION_TAGS = ("RectangleLabels", "PolygonLabels", "BrushLabels", "KeyPointLabels", "Choices", "Taxonomy",
                   "VideoRectangle")
PROMPT_TAGS = ("KeyPointLabels", "RectangleLabels")
MASK_TAGS = ("PolygonLabels", "BrushLabels")
# The tags this module reads and the camelCase attributes it or the SDK reads, as Label Studio's docs spell them.
CANONICAL_TAGS = {name.lower(): name for name in (*PREDICTION_TAGS, "View", "Image", "Video", "Labels", "Label", "Choice")}
CANONICAL_ATTRIBUTES = {name.lower(): name for name in ("toName", "frameRate", "leafsOnly", "valueType", "valueList",
                                                        "perRegion", "whenTagName", "whenLabelValue", "whenChoiceValue")}


class LabelConfigError(ValueError):
    """The labeling config cannot be used; the message says why."""


@dataclass(frozen=True)
class Control:
    name: str
    tag: str  # RectangleLabels, PolygonLabels, BrushLabels, KeyPointLabels
    to_name: str  # the Image tag's name
    data_key: str  # task["data"] key holding the image URL ("image" for value="$image")
    labels: tuple[str, ...]
    class_to_label: tuple[tuple[str, str], ...]  # (model class name, lower case) -> label value
    model_path: str | None
    score_threshold: float | None
    skip: bool
    smart: bool
    trainable: bool = True  # model_trainable="false": training never replaces this control's model
    options: TaskOptions = TaskOptions()  # pose, OBB, classification and video attributes (formats/control_options.py)

    @property
    def type(self) -> str:
        """The region `type` Label Studio expects: rectanglelabels, polygonlabels, ..."""
        return self.tag.lower()

    def label_for(self, class_name: str) -> str | None:
        return dict(self.class_to_label).get(class_name.lower())

    @property
    def wants_masks(self) -> bool:
        return self.tag in MASK_TAGS


@dataclass(frozen=True)
class LabelConfig:
    controls: tuple[Control, ...]
    # Control tags on an Image that this backend leaves alone, as `<Tag name="...">` (unknown tags say so).
    unanswered: tuple[str, ...] = ()

    @property
    def has_prompts(self) -> bool:
        """Whether the config has smart tags, i.e. wants interactive (SAM) answers."""
        return any(c.smart and c.tag in PROMPT_TAGS for c in self.controls)

    @property
    def prediction_controls(self) -> tuple[Control, ...]:
        """Controls that batch predictions fill, in config order."""
        return tuple(c for c in self.controls if c.tag in PREDICTION_TAGS and not c.skip
                     and not (c.smart and c.tag == "KeyPointLabels"))  # smart keypoints are SAM prompts, never pose

    def control(self, name: str) -> Control | None:
        return next((c for c in self.controls if c.name == name), None)

    def controls_for_image(self, to_name: str, tag: str) -> tuple[Control, ...]:
        return tuple(c for c in self.controls if c.to_name == to_name and c.tag == tag)


@functools.lru_cache(maxsize=64)
def parse_label_config(xml: str) -> LabelConfig:
    """Parse a labeling config; raises LabelConfigError for anything that is not a usable config."""
    from label_studio_sdk.label_interface import LabelInterface

    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    xml = canonical_case(xml)
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises lxml, KeyError, TypeError... for broken XML
        raise LabelConfigError(f"the labeling config is not valid XML for Label Studio: {exc}") from None
    images = {obj.name: obj for obj in interface.objects if obj.tag in ("Image", "Video")}
    controls = []
    unanswered = []
    for tag in interface.controls:
        to_names = [name for name in (tag.to_name or []) if name in images]
        if not to_names:
            continue
        if tag.tag == "Labels" and images[to_names[0]].tag == "Video":
            continue  # the labels of a VideoRectangle on this video
        if tag.tag not in PREDICTION_TAGS + PROMPT_TAGS or (images[to_names[0]].tag == "Video") != (tag.tag == "VideoRectangle"):
            known = type(tag).__name__ != "ControlTag"  # the SDK's generic class: a tag Label Studio does not know
            unanswered.append(f"<{tag.tag} name=\"{tag.name}\">" + ("" if known else " (not a Label Studio tag)"))
            continue
        image_value = images[to_names[0]].value or ""
        label_source = _video_labels(interface, tag) if tag.tag == "VideoRectangle" else tag
        controls.append(Control(
            name=tag.name,
            tag=tag.tag,
            to_name=to_names[0],
            data_key=image_value.lstrip("$"),
            labels=tuple(label_source.labels or ()),
            class_to_label=_class_to_label(label_source),
            model_path=tag.attr.get("model_path") or None,
            score_threshold=_threshold(tag.name, tag.attr.get("model_score_threshold")),
            skip=str(tag.attr.get("model_skip", "false")).lower() in {"true", "1", "yes"},
            smart=str(tag.attr.get("smart", "false")).lower() in {"true", "1", "yes"},
            trainable=str(tag.attr.get("model_trainable", "true")).lower() not in {"false", "0", "no"},
            options=_options(tag, images[to_names[0]]),
        ))
    try:
        controls = link_taxonomies(link_box_controls(controls), xml)
    except OptionError as exc:
        raise LabelConfigError(str(exc)) from None
    return LabelConfig(tuple(controls), tuple(unanswered))


def canonical_case(xml: str) -> str:
    """The config with the tag and attribute names this module reads spelled as Label Studio's docs spell them;
    unchanged when they already are, or when it is not XML (the SDK says what is wrong with it)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return xml
    changed = False
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = CANONICAL_TAGS.get(element.tag.lower(), element.tag)
        attributes = {CANONICAL_ATTRIBUTES.get(name.lower(), name): value for name, value in element.attrib.items()}
        if tag != element.tag or list(attributes) != list(element.attrib):
            element.tag, element.attrib = tag, attributes
            changed = True
    return ElementTree.tostring(root, encoding="unicode") if changed else xml


def _video_labels(interface, video_rectangle):  # noqa: ANN001, ANN202 - the SDK's tags
    """The <Labels> tag on the video, whose labels a VideoRectangle's regions carry (Label Studio's video
    template); without one, the VideoRectangle itself (no labels)."""
    video_name = video_rectangle.to_name[0]
    return next((tag for tag in interface.controls if tag.tag == "Labels" and video_name in (tag.to_name or [])),
                video_rectangle)


def _options(tag, target) -> TaskOptions:  # noqa: ANN001 - the SDK's control and object tags
    try:
        return parse_options(tag, (target.attr or {}).get("frameRate") if target.tag == "Video" else None)
    except OptionError as exc:
        raise LabelConfigError(str(exc)) from None


def _class_to_label(tag) -> tuple[tuple[str, str], ...]:
    mapping: dict[str, str] = {}
    for label, label_tag in (tag.labels_attrs or {}).items():
        mapping.setdefault(label.lower(), label)
        predicted = (label_tag.attr or {}).get("predicted_values") or ""
        for class_name in predicted.split(","):
            if class_name.strip():
                mapping[class_name.strip().lower()] = label
    return tuple(mapping.items())


def _threshold(control_name: str, raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise LabelConfigError(f"model_score_threshold='{raw}' on <{control_name}> is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise LabelConfigError(f"model_score_threshold='{raw}' on <{control_name}> must be between 0 and 1")
    return value
