"""SAM 2 video prompts from Label Studio's interactive context: VideoRectangle regions with their keyframes.

With Auto-Annotation on, Label Studio 1.23.2 sends a VideoRectangle once a label is applied to it
(`regionFinishedDrawing`), with every region of the same label on the same video, each serialized as
`{"id", "from_name", "to_name", "type": "videorectangle", "value": {"sequence": [...], "labels": [...],
"framesCount", "duration"}}`; a keyframe is `{"frame" (1-based at <Video frameRate>), "enabled", "x",
"y", "width", "height" (percent), "rotation", "time"}`. Each region is one object; its prompt is its last
enabled keyframe (the box the annotator just drew or moved), else its last one. A box narrower or lower
than MIN_BOX_PIXELS is a click at its center (Label Studio's video has no KeyPoint tool).
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

import numpy as np

from formats.geometry import ls_rect_to_box
from formats.label_config import Control, LabelConfig

logger = logging.getLogger(__name__)

VIDEO_TYPE = "videorectangle"
MIN_BOX_PIXELS = 2.0
KEYFRAME_NUMBERS = ("x", "y", "width", "height")


def has_video_prompts(context: dict) -> bool:
    return any(isinstance(region, dict) and region.get("type") == VIDEO_TYPE for region in context.get("result") or [])


@dataclass(frozen=True)
class VideoPrompt:
    """One object: its region as Label Studio sent it, and the keyframe that prompts SAM 2."""

    region_id: str
    control: Control
    labels: tuple[str, ...] | None
    keyframes: tuple[dict, ...]  # valid keyframes, by frame
    prompt: dict  # the prompting keyframe
    frames_count: int | None  # Label Studio's, when sent
    duration: float | None

    @property
    def frame(self) -> int:
        """Label Studio's 1-based frame number of the prompt."""
        return int(self.prompt["frame"])

    def in_pixels(self, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(box, None) or (None, click) in pixels of the video; (None, None) when it lies outside the frame."""
        x1, y1, x2, y2 = ls_rect_to_box(self.prompt, width, height)
        if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
            return None, None
        x1, x2 = np.clip([x1, x2], 0.0, width)
        y1, y2 = np.clip([y1, y2], 0.0, height)
        if x2 - x1 < MIN_BOX_PIXELS or y2 - y1 < MIN_BOX_PIXELS:
            return None, np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        return np.array([x1, y1, x2, y2]), None


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    try:
        number = float(raw)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _keyframes(sequence: object) -> list[dict]:
    """The usable keyframes (numeric frame >= 1 and rectangle), by frame; the others are logged and left out."""
    found = []
    for item in sequence if isinstance(sequence, list) else []:
        values = {key: _number(item.get(key)) for key in ("frame", *KEYFRAME_NUMBERS)} if isinstance(item, dict) else {}
        if not values or None in values.values() or values["frame"] < 1:
            logger.warning("ignoring a video keyframe without a frame number >= 1 and numeric x, y, width, height: "
                           "%.200s", item)
            continue
        found.append({**item, **values, "frame": int(values["frame"]), "rotation": _number(item.get("rotation")) or 0.0})
    return sorted(found, key=lambda keyframe: keyframe["frame"])


def read_video_prompts(regions: list, config: LabelConfig) -> list[VideoPrompt]:
    """The VideoRectangle regions of the first prompted video; everything else is logged and ignored."""
    prompts: list[VideoPrompt] = []
    for region in regions:
        if not isinstance(region, dict) or region.get("type") != VIDEO_TYPE:
            logger.warning("ignoring a %r prompt in a video request", region.get("type") if isinstance(region, dict) else region)
            continue
        control = config.control(str(region.get("from_name")))
        value = region.get("value")
        if control is None or control.tag != "VideoRectangle" or not isinstance(value, dict):
            logger.warning("ignoring a videorectangle prompt: no value, or from_name %r is not a <VideoRectangle> of "
                           "the labeling config", region.get("from_name"))
            continue
        if prompts and control.to_name != prompts[0].control.to_name:
            logger.warning("ignoring a videorectangle on video %r: this request prompts video %r", control.to_name,
                           prompts[0].control.to_name)
            continue
        keyframes = _keyframes(value.get("sequence"))
        if not keyframes:
            logger.warning("ignoring videorectangle %r: it has no usable keyframe", region.get("id"))
            continue
        enabled = [keyframe for keyframe in keyframes if keyframe.get("enabled", True) is not False]
        labels = value.get("labels")
        labels = tuple(labels) if isinstance(labels, list) and all(isinstance(label, str) for label in labels) else None
        frames_count = _number(value.get("framesCount"))
        region_id = region.get("id")
        prompts.append(VideoPrompt(region_id if isinstance(region_id, str) and region_id else uuid.uuid4().hex[:10],
                                   control, labels, tuple(keyframes), (enabled or keyframes)[-1],
                                   int(frames_count) if frames_count and frames_count > 0 else None,
                                   _number(value.get("duration"))))
    return prompts
