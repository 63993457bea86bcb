"""SAM 3 concept prompts in Label Studio's interactive context: every instance of a drawn example or a typed phrase.

With MODEL_NAME=sam3, two prompts find all instances instead of one object:
- a smart RectangleLabels with `model_find_all="true"`: its boxes are visual examples (Label Studio's
  `is_positive: false` makes one a negative example); the instances get the first positive box's label.
- a TextArea on the image (as HumanSignal's Grounding DINO example sends it, `value.text`): the typed
  phrase; each answering control labels the instances with the label the phrase names (a Label value
  or one of its `predicted_values`), else with its first label.
Instances scoring above the control's `model_score_threshold` (else MODEL_SCORE_THRESHOLD) are answered,
each as the enabled output controls (OUT_MASK, OUT_POLY, OUT_BBOX) show a mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from backend.interactive.prompts import BOX_TYPE, _first_label, _number
from formats.geometry import ls_rect_to_box
from formats.label_config import LabelConfig
from formats.regions import mask_regions

logger = logging.getLogger(__name__)

TEXT_TYPE = "textarea"


@dataclass(frozen=True)
class ConceptPrompt:
    """A phrase and/or example boxes on one image, in Label Studio percent."""

    to_name: str
    data_key: str
    phrase: str | None
    label: str | None  # the examples' label
    examples: tuple[tuple[dict, bool], ...]  # (RectangleLabels value, positive)

    def boxes(self, width: int, height: int) -> tuple[np.ndarray, list[bool]]:
        """The examples as xyxy pixel boxes clipped to the image; boxes of less than a pixel are dropped."""
        boxes, positive = [], []
        for value, is_positive in self.examples:
            box = np.clip(np.array(ls_rect_to_box(value, width, height)), 0.0, [width, height, width, height])
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                boxes.append(box)
                positive.append(is_positive)
        return np.array(boxes, dtype=np.float64).reshape(-1, 4), positive


def _text(value: dict) -> str | None:
    text = value.get("text")
    text = text[0] if isinstance(text, list) and text else text
    return text.strip() if isinstance(text, str) and text.strip() else None


def read_concept_prompt(regions: list, config: LabelConfig) -> ConceptPrompt | None:
    """A typed phrase and the boxes of find-all rectangles in the context, or None when it has neither."""
    phrase = to_name = label = None
    examples: list[tuple[dict, bool]] = []
    for region in regions:
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            continue
        value = region["value"]
        if region.get("type") == TEXT_TYPE and _text(value) and region.get("to_name"):
            phrase, to_name = _text(value), str(region["to_name"])
        control = config.control(str(region.get("from_name")))
        if region.get("type") != BOX_TYPE or control is None or not control.options.find_all:
            continue
        numbers = [_number(value, key) for key in ("x", "y", "width", "height")]
        if None in numbers:
            logger.warning("ignoring a find-all rectangle without numeric x, y, width and height: %.200s", value)
            continue
        positive = region.get("is_positive", value.get("is_positive", True)) is not False
        examples.append((dict(zip(("x", "y", "width", "height"), numbers), rotation=0.0), positive))
        to_name = control.to_name
        if positive and label is None:
            label = _first_label(value, BOX_TYPE)
    if to_name is None or (phrase is None and not any(positive for _, positive in examples)):
        return None
    data_key = next((c.data_key for c in config.controls if c.to_name == to_name), None)
    return ConceptPrompt(to_name, data_key, phrase, label, tuple(examples)) if data_key else None


def concept_regions(config: LabelConfig, tags: tuple[str, ...], prompt: ConceptPrompt, found: object,
                    polygon_tolerance: float) -> list[dict]:
    """SAM 3's instances (backend.models.sam3.Instances) as every enabled output control of the image shows them."""
    regions: list[dict] = []
    for tag in tags:
        for control in config.controls_for_image(prompt.to_name, tag):
            if control.skip or not control.labels:
                continue
            named = prompt.label if prompt.label is not None else prompt.phrase
            label = control.label_for(named) if named else None
            if label is None and prompt.label is not None:
                logger.warning("<%s name=%r> has no label %r; its regions are left out", tag, control.name, named)
                continue
            for crop, score in zip(found.crops, found.scores.tolist()):
                regions.extend(mask_regions(control, label or control.labels[0], crop, score, polygon_tolerance))
    return regions


def threshold_for(config: LabelConfig, prompt: ConceptPrompt, default: float) -> float:
    """The lowest `model_score_threshold` of the image's controls, else MODEL_SCORE_THRESHOLD."""
    found = [c.score_threshold for c in config.controls if c.to_name == prompt.to_name and c.score_threshold is not None]
    return min(found) if found else default
