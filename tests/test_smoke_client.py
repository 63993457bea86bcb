"""deploy/smoke_client.py's checks (what deploy/smoke.sh asks of the container's answers) pass on regions drawn
from the pictures' own shapes and fail on wrong labels, misplaced regions and a wrong click mask."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest

from formats.geometry import mask_to_box, mask_to_polygons, pixels_to_percent
from formats.rle import mask_to_ls_rle
from tests.conftest import REPO_ROOT
from tools.shapes_dataset import CLASS_NAMES, ShapeInstance, generate_image

_spec = importlib.util.spec_from_file_location("smoke_client", REPO_ROOT / "deploy" / "smoke_client.py")
smoke_client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke_client)


def regions_of(instance: ShapeInstance, label: str | None = None, shift: int = 0) -> list[dict]:
    """What a perfect backend answers for one shape: its box, its outline and its mask."""
    mask = np.roll(instance.mask, shift, axis=1)
    height, width = mask.shape
    name = label or CLASS_NAMES[instance.class_id]
    x1, y1, x2, y2 = mask_to_box(mask)
    common = {"original_width": width, "original_height": height}
    (outline,) = mask_to_polygons(mask)[:1]
    return [
        {**common, "from_name": "rect", "type": "rectanglelabels",
         "value": {"x": x1 * 100 / width, "y": y1 * 100 / height, "width": (x2 - x1) * 100 / width,
                   "height": (y2 - y1) * 100 / height, "rotation": 0, "rectanglelabels": [name]}},
        {**common, "from_name": "polygon", "type": "polygonlabels",
         "value": {"points": pixels_to_percent(outline, width, height).tolist(), "polygonlabels": [name]}},
        {**common, "from_name": "brush", "type": "brushlabels",
         "value": {"format": "rle", "rle": mask_to_ls_rle(mask), "brushlabels": [name]}},
    ]


def answers(make: Callable[[ShapeInstance], list[dict]]) -> dict[int, list[dict]]:
    return {seed: [r for inst in generate_image(seed).instances for r in make(inst)] for seed in smoke_client.SEEDS}


def test_regions_of_the_drawn_shapes_pass() -> None:
    smoke_client.check_predictions(answers(regions_of))
    _, instance = smoke_client.largest_shape()
    smoke_client.check_click([r for r in regions_of(instance) if r["type"] == "brushlabels"], instance)


@pytest.mark.parametrize("make", [
    lambda inst: regions_of(inst, label=CLASS_NAMES[(inst.class_id + 1) % 3]),  # a wrong class
    lambda inst: regions_of(inst, shift=40),  # in the wrong place
    lambda inst: [],  # nothing found
], ids=["wrong-label", "misplaced", "empty"])
def test_wrong_predictions_fail(make: Callable[[ShapeInstance], list[dict]]) -> None:
    with pytest.raises(smoke_client.CheckFailed):
        smoke_client.check_predictions(answers(make))


def test_a_click_mask_off_the_shape_fails() -> None:
    _, instance = smoke_client.largest_shape()
    brush = [r for r in regions_of(instance, shift=40) if r["type"] == "brushlabels"]
    with pytest.raises(smoke_client.CheckFailed, match="mask IoU"):
        smoke_client.check_click(brush, instance)
