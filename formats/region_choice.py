"""Which regions of a task become dataset labels when a labeling config draws the same objects
with several control tags (RectangleLabels + PolygonLabels + BrushLabels, as the backend predicts
them): one region kind per object, the most precise one for the dataset's task.

Regions are grouped by control and kind. Groups are taken in the task's order of preference
(segment: polygon, brush, rectangle; detect: rectangle, polygon, brush); a region of a later group
is a duplicate, and left out, when a region already taken from another group has the same label
and the same place: boxes overlapping with IoU >= 0.5, the region lying inside the taken one, or the
taken regions lying inside it covering it (an object that another control split into parts).
Regions of one control are never duplicates of each other: a control draws each object once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from formats.geometry import BoxXYXY, mask_to_box
from formats.coco import points_box
from formats.ls_export import Summary
from formats.export_regions import BrushRegion, PolygonRegion, Region

KIND_PREFERENCE = {"segment": ("polygon", "brush", "rectangle"), "detect": ("rectangle", "polygon", "brush")}
SAME_OBJECT_IOU = 0.5
INSIDE_FRACTION = 0.9


def region_kind(region: Region) -> str:
    if isinstance(region, BrushRegion):
        return "brush"
    return "polygon" if isinstance(region, PolygonRegion) else "rectangle"


def region_box(region: Region) -> BoxXYXY:
    if isinstance(region, BrushRegion):
        return mask_to_box(region.mask)
    return points_box(region.points if isinstance(region, PolygonRegion) else region.corners)


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    return _area(np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _inside(inner: np.ndarray, outer: np.ndarray) -> float:
    """Share of `inner`'s box area that lies within `outer`."""
    area = _area(inner)
    return _intersection(inner, outer) / area if area > 0 else 0.0


def same_object(box: np.ndarray, taken: Sequence[np.ndarray]) -> bool:
    """Whether `box` outlines an object that the boxes in `taken` (same label, other controls) already hold."""
    if any(_iou(box, other) >= SAME_OBJECT_IOU or _inside(box, other) >= INSIDE_FRACTION for other in taken):
        return True
    parts = [other for other in taken if _inside(other, box) >= INSIDE_FRACTION]
    if len(parts) < 2:
        return False
    stacked = np.stack(parts)
    union = np.array([*stacked[:, :2].min(axis=0), *stacked[:, 2:].max(axis=0)])
    return _iou(box, union) >= SAME_OBJECT_IOU


@dataclass
class RegionChooser:
    """Picks the regions of each task for a YOLO `task` (detect | segment). With `from_names`, only
    regions of those controls are used; duplicates across the chosen controls are still left out."""

    task: str
    from_names: tuple[str, ...] = ()
    controls_seen: set[str] = field(default_factory=set)

    def choose(self, regions: list[tuple[Region, int]], summary: Summary) -> list[tuple[Region, int]]:
        groups: dict[tuple[str, str], list[int]] = {}
        for index, (region, _) in enumerate(regions):
            self.controls_seen.add(region.from_name)
            if self.from_names and region.from_name not in self.from_names:
                summary.regions_unused[f"control '{region.from_name}' not chosen (--from_name)"] += 1
                continue
            groups.setdefault((region.from_name, region_kind(region)), []).append(index)
        preference = KIND_PREFERENCE[self.task]
        ordered = sorted(groups.items(), key=lambda item: preference.index(item[0][1]))  # stable: first seen first
        boxes = {index: np.asarray(region_box(regions[index][0]), dtype=np.float64)
                 for indices in groups.values() for index in indices} if len(groups) > 1 else {}
        taken: list[tuple[int, str]] = []  # (region index, control)
        for (control, kind), indices in ordered:
            for index in indices:
                category_id = regions[index][1]
                others = [boxes[i] for i, owner in taken if owner != control and regions[i][1] == category_id]
                if others and same_object(boxes[index], others):
                    summary.regions_unused[f"{kind} duplicating a region of another control"] += 1
                    continue
                taken.append((index, control))
                summary.regions_by_control[f"{control or '?'} ({kind})"] += 1
        return [regions[index] for index in sorted(index for index, _ in taken)]

    def check_from_names(self) -> str | None:
        """Why `from_names` matched nothing, when it named controls and no region came from them."""
        if not self.from_names or not self.controls_seen or self.controls_seen & set(self.from_names):
            return None
        return (f"--from_name {' '.join(self.from_names)}: no region comes from that control "
                f"(controls in the export: {', '.join(sorted(self.controls_seen))})")
