"""The task score: how good a task's prediction is, in [0, 1] (1: nothing to correct, 0: everything).

Label Studio serves the lowest-scored tasks first under uncertainty sampling, and the Data Manager sorts
by it, so the score has to put the tasks that need the most correction first. It is an estimate of the
task's F1 at IoU 0.5, 2 TP / (2 TP + FP + FN), divided by sqrt(1 + FP + FN) so that of two tasks
with the same F1 the one with more errors to fix comes first; the expected counts only use what the
models already said about the image:

- each kept region is right with probability `kept_precision(score)` and wrong otherwise;
- a kept region that overlaps another class's detection on the same object (kept or just below the
  threshold) shares its probability with it: the class is in doubt;
- each detection just below the threshold (down to CANDIDATE_FLOOR x the threshold) is an object the
  prediction missed, or a second box on an object that needs checking, with probability score / threshold;
- where two controls read the same image with boxes (a rectangle and a mask control, or two models),
  each object one of them has and the other does not is half an error for each;
- controls without boxes (classification, keypoints, video tracks) count their regions' scores as the
  probability that the region is right.

Nothing found at all (no region, no candidate) scores NOTHING_FOUND: the annotator draws everything
or confirms an empty image. The constants were fitted on synthetic pictures with the demo models and
checked on other seeds (bench/bench_active_learning.py, docs/active-learning.md); kept_precision(s) = s²
fitted better than s or s³, and counting candidates on kept objects too better than leaving them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Fraction of the control's threshold below which detections are not candidates (NMS runs there).
CANDIDATE_FLOOR = 0.3
SAME_OBJECT_IOU = 0.5  # two boxes at least this close are one object (the F1's own matching rule)
NOTHING_FOUND = 0.05
PRECISION_POWER = 2.0  # kept_precision(s) = s ** PRECISION_POWER
DISAGREEMENT_WEIGHT = 0.5


@dataclass(frozen=True)
class ControlFindings:
    """What one control's model said about one image: kept regions and, for box models, the candidates."""

    scores: Sequence[float]  # each kept object's score (one per object, not per polygon part)
    threshold: float
    image: str = ""  # the task data key of the image: controls on the same image are compared
    boxes: np.ndarray | None = None  # (N, 4) xyxy of the kept objects; None: a control without boxes
    class_names: tuple[str, ...] = ()
    candidate_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    candidate_scores: Sequence[float] = ()
    candidate_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expected:
    """Expected true positives, false positives and misses of a prediction."""

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0

    def __add__(self, other: Expected) -> Expected:
        return Expected(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def candidate_floor(threshold: float) -> float:
    return threshold * CANDIDATE_FLOOR


def kept_precision(score: float) -> float:
    return float(np.clip(score, 0.0, 1.0)) ** PRECISION_POWER


def missed_object(score: float, threshold: float) -> float:
    return float(np.clip(score / threshold, 0.0, 1.0)) if threshold > 0 else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), xyxy."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def control_expected(found: ControlFindings) -> Expected:
    scores = np.asarray(found.scores, float)
    if found.boxes is None:
        return Expected(tp=float(scores.sum()), fp=float((1 - scores).sum()))
    boxes = np.asarray(found.boxes, float).reshape(-1, 4)
    cand_scores = np.asarray(found.candidate_scores, float)
    right = np.array([kept_precision(s) for s in scores])
    # Other classes on the same object: the region's class is right in proportion to its score.
    rivals = np.zeros(len(scores))
    overlap = box_iou(boxes, boxes) >= SAME_OBJECT_IOU
    cand_overlap = box_iou(boxes, found.candidate_boxes) >= SAME_OBJECT_IOU
    for k in range(len(scores)):
        rivals[k] += sum(scores[j] for j in np.flatnonzero(overlap[k])
                         if j != k and found.class_names[j] != found.class_names[k])
        rivals[k] += sum(cand_scores[j] for j in np.flatnonzero(cand_overlap[k])
                         if found.candidate_classes[j] != found.class_names[k])
    right *= scores / np.maximum(scores + rivals, 1e-9)
    missed = sum(missed_object(s, found.threshold) for s in cand_scores)
    return Expected(tp=float(right.sum()), fp=float((1 - right).sum()), fn=float(missed))


def disagreement(a: ControlFindings, b: ControlFindings) -> float:
    """Objects one control found on the image and the other did not (any class), as expected errors."""
    if a.boxes is None or b.boxes is None:
        return 0.0
    boxes_a, boxes_b = np.asarray(a.boxes, float).reshape(-1, 4), np.asarray(b.boxes, float).reshape(-1, 4)
    same = box_iou(boxes_a, boxes_b) >= SAME_OBJECT_IOU
    alone_a = int((~same.any(axis=1)).sum()) if len(boxes_b) else len(boxes_a)
    alone_b = int((~same.any(axis=0)).sum()) if len(boxes_a) else len(boxes_b)
    return DISAGREEMENT_WEIGHT * (alone_a + alone_b)


def task_quality(findings: Iterable[ControlFindings]) -> float:
    """The task score in [0, 1] from every control's findings on the task (see the module docstring)."""
    findings = list(findings)
    total = sum((control_expected(found) for found in findings), Expected())
    for i, a in enumerate(findings):
        for b in findings[i + 1:]:
            if a.image == b.image:
                total = total + Expected(fp=disagreement(a, b) / 2, fn=disagreement(a, b) / 2)
    if total.tp + total.fp + total.fn <= 0:
        return NOTHING_FOUND
    f1 = 2 * total.tp / (2 * total.tp + total.fp + total.fn)
    return round(float(f1 / np.sqrt(1 + total.fp + total.fn)), 6)

