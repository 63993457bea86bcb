"""SAM prompts from Label Studio's interactive context (smart KeyPointLabels and RectangleLabels).

Label Studio sends the annotator's smart regions in `params.context.result`, in percent of the
image as displayed. Reading them happens in two steps because percent becomes pixels only once the
image is decoded: `read_prompt` picks and validates the regions, `PromptRegions.in_pixels` converts
them with the decoded image's size (the `original_width` Label Studio sends can be stale).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from formats.geometry import ls_rect_to_box
from formats.label_config import LabelConfig

logger = logging.getLogger(__name__)

POINT_TYPE = "keypointlabels"
BOX_TYPE = "rectanglelabels"


@dataclass(frozen=True)
class SamPrompt:
    """One SAM call's prompt in pixels of the decoded image."""

    label: str
    points: np.ndarray  # (N, 2) x, y
    point_labels: np.ndarray  # (N,) 1 = object, 0 = background
    box: np.ndarray | None  # (4,) x1, y1, x2, y2

    @property
    def is_single_click(self) -> bool:
        """One click is ambiguous (part, object, group), so SAM is asked for its three candidate masks."""
        return len(self.points) == 1 and self.box is None


@dataclass(frozen=True)
class PromptRegions:
    """The usable smart regions of one context, all on the same image, in Label Studio percent."""

    to_name: str
    data_key: str
    label: str
    points: tuple[tuple[float, float, bool], ...]  # x %, y %, positive
    rectangle: dict | None  # a RectangleLabels value

    def in_pixels(self, width: int, height: int) -> SamPrompt | None:
        """Clicks outside the image are moved to its edge; a box entirely outside it is dropped."""
        points = np.array([[x * width / 100.0, y * height / 100.0] for x, y, _ in self.points], dtype=np.float64)
        points = points.reshape(-1, 2)
        clamped = np.clip(points, 0.0, [width, height])
        for before, after in zip(points[(clamped != points).any(axis=1)], clamped[(clamped != points).any(axis=1)]):
            logger.warning("click at (%.1f, %.1f) px is outside the %dx%d image; using (%.1f, %.1f)",
                           *before, width, height, *after)
        box = None
        if self.rectangle is not None:
            x1, y1, x2, y2 = ls_rect_to_box(self.rectangle, width, height)
            box = np.clip(np.array([x1, y1, x2, y2]), 0.0, [width, height, width, height])
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                logger.warning("the smart rectangle is outside the %dx%d image; ignoring it", width, height)
                box = None
        if not len(clamped) and box is None:
            return None
        labels = np.array([1 if positive else 0 for _, _, positive in self.points], dtype=np.int64)
        return SamPrompt(self.label, clamped, labels, box)


def _number(value: dict, key: str) -> float | None:
    raw = value.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    try:
        number = float(raw)
    except OverflowError:  # a JSON integer beyond float range
        return None
    return number if math.isfinite(number) else None


def _first_label(value: dict, region_type: str) -> str | None:
    labels = value.get(region_type) or value.get("labels")
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def read_prompt(regions: list, config: LabelConfig) -> PromptRegions | None:
    """Any number of smart keypoints and at most one smart rectangle (the last one), on the first
    prompted image; everything else is logged and ignored. None when nothing usable is left."""
    to_name = data_key = None
    points: list[tuple[float, float, bool]] = []
    click_labels: list[tuple[bool, str]] = []  # (negative, label): positive clicks sort first
    rectangles: list[tuple[dict, str]] = []
    for region in regions:
        region_type = region.get("type") if isinstance(region, dict) else None
        if region_type not in (POINT_TYPE, BOX_TYPE):
            logger.warning("ignoring an interactive prompt of type %r: SAM takes keypointlabels and rectanglelabels",
                           region_type)
            continue
        value = region.get("value")
        control = config.control(str(region.get("from_name")))
        if not isinstance(value, dict) or control is None:
            logger.warning("ignoring a %s prompt: no value, or from_name %r is not in the labeling config",
                           region_type, region.get("from_name"))
            continue
        if to_name is not None and control.to_name != to_name:
            logger.warning("ignoring a %s prompt on image %r: this request prompts image %r",
                           region_type, control.to_name, to_name)
            continue
        label = _first_label(value, region_type)
        x, y = _number(value, "x"), _number(value, "y")
        if label is None or x is None or y is None:
            logger.warning("ignoring a %s prompt without a label or numeric x and y: %.200s", region_type, value)
            continue
        if region_type == BOX_TYPE:
            width, height = _number(value, "width"), _number(value, "height")
            if width is None or height is None:
                logger.warning("ignoring a rectangle prompt without numeric width and height: %.200s", value)
                continue
            rectangles.append(({"x": x, "y": y, "width": width, "height": height,
                                "rotation": _number(value, "rotation") or 0.0}, label))
        else:
            positive = region.get("is_positive", value.get("is_positive", True)) is not False
            points.append((x, y, positive))
            click_labels.append((not positive, label))
        to_name, data_key = control.to_name, control.data_key
    if to_name is None or data_key is None:
        return None
    # The answer is labeled like the object's prompt: its box, else its first positive click.
    if len(rectangles) > 1:
        logger.warning("%d smart rectangles in one request; SAM takes one box, using the last", len(rectangles))
    rectangle, label = rectangles[-1] if rectangles else (None, sorted(click_labels, key=lambda item: item[0])[0][1])
    return PromptRegions(to_name, data_key, label, tuple(points), rectangle)
