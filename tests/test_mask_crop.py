"""Masks kept as crops: brush RLE, polygons and boxes equal those of the full image-sized mask."""

from __future__ import annotations

import numpy as np
import pytest

from formats.geometry import mask_to_box, mask_to_polygons
from formats.rle import mask_to_ls_rle
from formats.mask_crop import MaskCrop, MaskCrops

# (height, width, x0, y0, crop height, crop width): corners, full width, one column short of it, single pixels
WINDOWS = [(20, 30, 5, 4, 6, 7), (20, 30, 0, 0, 6, 7), (20, 30, 23, 14, 6, 7), (20, 30, 0, 3, 5, 30),
           (20, 30, 1, 3, 5, 29), (20, 30, 0, 3, 5, 29), (20, 30, 0, 0, 20, 30), (20, 30, 29, 19, 1, 1),
           (1, 1, 0, 0, 1, 1), (7, 1, 0, 2, 3, 1), (1, 9, 2, 0, 1, 4), (300, 400, 10, 20, 280, 370)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("fill", ["random", "full", "empty", "edges"])
def test_crop_encodes_the_same_rle_as_the_full_mask(window: tuple[int, ...], fill: str) -> None:
    height, width, x0, y0, h, w = window
    rng = np.random.default_rng(sum(window))
    mask = {"random": rng.random((h, w)) < 0.5, "full": np.ones((h, w), bool), "empty": np.zeros((h, w), bool),
            "edges": np.pad(np.zeros((max(h - 2, 0), max(w - 2, 0)), bool), 1, constant_values=True)[:h, :w]}[fill]
    crop = MaskCrop(x0, y0, mask, width, height)
    assert crop.ls_rle() == mask_to_ls_rle(crop.full())
    assert crop.box() == mask_to_box(crop.full())
    for ours, theirs in zip(crop.polygons(), mask_to_polygons(crop.full()), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_long_runs_over_two_to_the_sixteen_match() -> None:
    mask = np.zeros((200, 150), bool)
    mask[120:125, 3:140] = True
    crop = MaskCrop(3, 120, mask[120:125, 3:140], 150, 200)
    assert crop.ls_rle() == mask_to_ls_rle(mask)


def test_tight_crop_of_a_full_mask_round_trips() -> None:
    masks = np.zeros((3, 40, 50), bool)
    masks[0, 5:9, 7:30] = True
    masks[1, 39, 49] = True
    stack = MaskCrops.of(masks)
    assert [crop.mask.shape for crop in stack.crops] == [(4, 23), (1, 1), (0, 0)]
    assert (stack.crops[0].x0, stack.crops[0].y0) == (7, 5)
    assert len(stack) == 3
    np.testing.assert_array_equal(np.array(list(stack)), masks)
    np.testing.assert_array_equal(stack[1], masks[1])
    assert stack.crops[2].ls_rle() == mask_to_ls_rle(masks[2]) and not stack.crops[2].any()
