"""Choices with a YOLO classification model: choice="single" takes the top class, choice="multiple"
every class whose probability reaches the threshold."""

from __future__ import annotations

import numpy as np

from formats.label_config import Control
from backend.models.yolo_tasks import ClassProbabilities
from formats.regions import result_region


def chosen_labels(control: Control, found: ClassProbabilities, threshold: float) -> tuple[list[str], float]:
    """The labels a classification control chooses and their score. Classes without a label are left out
    before choosing, so a config with a few of the model's classes gets the likeliest of those. The score
    is the probability (the mean of the chosen ones' with choice="multiple"); nothing below the threshold."""
    labelled = [(float(p), control.label_for(name)) for name, p in zip(found.class_names, found.probs)
                if control.label_for(name) is not None]
    if control.options.multiple:
        chosen = [(p, label) for p, label in sorted(labelled, key=lambda item: -item[0]) if p >= threshold]
    else:
        chosen = [max(labelled, key=lambda item: item[0])] if labelled else []
        chosen = [item for item in chosen if item[0] >= threshold]
    labels = list(dict.fromkeys(label for _, label in chosen))  # two classes may map to one label
    return labels, float(np.mean([p for p, _ in chosen])) if chosen else 0.0


def whole_image_region(control: Control, value: dict, score: float) -> dict:
    """A result about the whole image: no size or rotation, as Label Studio stores classifications."""
    region = result_region(control, 0, 0, value, score)
    for key in ("original_width", "original_height", "image_rotation"):
        del region[key]
    return region


def choices_regions(control: Control, found: ClassProbabilities, threshold: float) -> list[dict]:
    """At most one `choices` region with the chosen labels (see `chosen_labels`)."""
    labels, score = chosen_labels(control, found, threshold)
    return [whole_image_region(control, {"choices": labels}, score)] if labels else []
