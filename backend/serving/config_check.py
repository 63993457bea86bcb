"""What a labeling config will get from its models, said once in the log instead of silently empty answers.

Labels match model classes by name (or `predicted_values`); a config whose labels match none of its
model's classes gets HTTP 200 with empty results, which looks like a broken backend. This module names
each control, its model, the model's classes and the config's labels, and which of them match.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from formats.label_config import Control, LabelConfig

logger = logging.getLogger(__name__)

MAX_NAMES = 20


@dataclass(frozen=True)
class LabelMatch:
    matched: tuple[str, ...]  # config labels some model class becomes
    unmatched: tuple[str, ...]  # config labels no model class becomes

    @property
    def complete(self) -> bool:
        return bool(self.matched) and not self.unmatched


def match_labels(control: Control, class_names: Sequence[str]) -> LabelMatch:
    produced = {control.label_for(name) for name in class_names} - {None}
    if control.tag == "KeyPointLabels":  # its labels name keypoints (model_index) of a class, or of any class
        classes = {name.lower() for name in class_names} | {""}
        produced = {keypoint.label for keypoint in control.options.keypoints if keypoint.class_name in classes}
    return LabelMatch(tuple(label for label in control.labels if label in produced),
                      tuple(label for label in control.labels if label not in produced))


def _names(values: Sequence[str]) -> str:
    shown = ", ".join(values[:MAX_NAMES])
    return shown + (f" ... ({len(values) - MAX_NAMES} more)" if len(values) > MAX_NAMES else "") if values else "none"


def describe_match(control: Control, model_name: str, class_names: Sequence[str]) -> tuple[int, str]:
    """(log level, message) for one control and its model."""
    found = match_labels(control, class_names)
    head = f"<{control.tag} name=\"{control.name}\"> uses {model_name} (classes: {_names(list(class_names))})"
    if not found.matched:
        return logging.WARNING, (f"{head}: none of the config's labels ({_names(list(control.labels))}) is one of the "
                                 "model's classes, so this control gets no predictions. Use the model's class names "
                                 "as labels, or map them with predicted_values=\"class,...\" on a <Label>, or "
                                 "use a model trained on these labels (model_path)")
    if found.unmatched:
        return logging.WARNING, (f"{head}: labels matching model classes: {_names(list(found.matched))}; labels no "
                                 f"class becomes (never predicted): {_names(list(found.unmatched))}")
    return logging.INFO, f"{head}: every label matches a model class ({_names(list(found.matched))})"


class ConfigReporter:
    """Logs each (control, model file) pairing and each unanswered tag once per process, not per request."""

    def __init__(self) -> None:
        self._seen: set[tuple] = set()
        self._lock = threading.Lock()

    def _first_time(self, key: tuple) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def report_tags(self, config: LabelConfig) -> None:
        if config.unanswered and self._first_time(("tags", config.unanswered)):
            logger.warning("the labeling config has control tags this backend does not predict: %s "
                           "(it answers RectangleLabels, PolygonLabels, BrushLabels, KeyPointLabels (pose), Choices, "
                           "Taxonomy and VideoRectangle, and smart KeyPointLabels/RectangleLabels with SAM)", ", ".join(config.unanswered))

    def report_control(self, control: Control, model_key: tuple, model_name: str, class_names: Sequence[str]) -> None:
        if self._first_time(("control", control, model_key)):
            level, message = describe_match(control, model_name, class_names)
            logger.log(level, "%s", message)
