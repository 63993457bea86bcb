"""The pure converters: exact round trips and parity with label-studio-sdk / pycocotools."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from formats.geometry import (box_to_ls_rect, ls_rect_corners, ls_rect_to_box, mask_iou, mask_to_box,
                              mask_to_polygons, percent_to_pixels, pixels_to_percent, polygon_area, polygons_to_mask)
from formats.rle import coco_rle_area, coco_rle_box, coco_rle_to_mask, ls_rle_to_mask, mask_to_coco_rle, mask_to_ls_rle


def random_masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(1, 120, size=2))
        if index % 3 == 0:
            yield rng.random((height, width)) < rng.random()
        else:
            mask = np.zeros((height, width), np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
                cv2.circle(mask, center, int(rng.integers(1, 40)), 1, -1)
            yield mask.astype(bool)


@pytest.mark.parametrize("mask", list(random_masks(40)), ids=lambda m: f"{m.shape[1]}x{m.shape[0]}")
def test_ls_rle_is_byte_identical_to_sdk_and_decodes_exactly(mask: np.ndarray) -> None:
    encoded = mask_to_ls_rle(mask)
    assert encoded == mask2rle(mask.astype(np.uint8) * 255)
    assert np.array_equal(ls_rle_to_mask(encoded, mask.shape[1], mask.shape[0]), mask)


@pytest.mark.parametrize(("height", "width"), [(300, 400), (86, 191), (128, 128), (1, 16385)],
                         ids=["remainder 21,248", "remainder 168", "no remainder", "remainder 4"])
def test_ls_rle_handles_runs_longer_than_16_bits(height: int, width: int) -> None:
    # 2**16-value chunks, then the remainder: written with a 16-bit length field even when short
    full = np.ones((height, width), bool)
    assert mask_to_ls_rle(full) == mask2rle(full.astype(np.uint8) * 255)
    assert decode_rle(mask_to_ls_rle(full)).size == height * width * 4
    shifted = np.zeros((height, width + 3), bool)
    shifted[:, 3:] = True
    assert mask_to_ls_rle(shifted) == mask2rle(shifted.astype(np.uint8) * 255)


def test_ls_rle_size_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected"):
        ls_rle_to_mask(mask_to_ls_rle(np.ones((4, 5), bool)), 6, 4)


@pytest.mark.parametrize("mask", list(random_masks(20, seed=1)), ids=lambda m: f"{m.shape[1]}x{m.shape[0]}")
def test_coco_rle_round_trip_area_and_box(mask: np.ndarray) -> None:
    rle = mask_to_coco_rle(mask)
    assert np.array_equal(coco_rle_to_mask(rle), mask)
    assert coco_rle_area(rle) == int(mask.sum())
    if mask.any():
        assert coco_rle_box(rle) == mask_to_box(mask)


def test_mask_to_box_covers_whole_pixels() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    assert mask_to_box(mask) == (3.0, 2.0, 7.0, 5.0)
    assert mask_to_box(np.zeros((3, 3), bool)) is None


def test_polygon_of_rectangle_mask_is_its_pixel_edges() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    (polygon,) = mask_to_polygons(mask)
    assert sorted(map(tuple, polygon.tolist())) == [(3, 2), (3, 5), (7, 2), (7, 5)]
    assert polygon_area(polygon) == mask.sum()
    assert np.array_equal(polygons_to_mask([polygon], 10, 10), mask)


@pytest.mark.parametrize("radius", [8, 13, 20, 50, 300])
def test_polygon_covers_disc_at_default_tolerance(radius: int) -> None:
    size = 2 * radius + 20
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1)
    polygons = mask_to_polygons(mask.astype(bool))
    assert len(polygons) == 1
    assert mask_iou(polygons_to_mask(polygons, size, size), mask.astype(bool)) >= 0.95
    assert len(polygons[0]) <= 60  # simplified, not one vertex per pixel step


def test_one_polygon_per_separate_part() -> None:
    mask = np.zeros((50, 80), bool)
    mask[5:20, 5:20] = True
    mask[30:45, 50:75] = True
    mask[10:12, 40:42] = True
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 3
    assert mask_iou(polygons_to_mask(polygons, 80, 50), mask) == 1.0


def test_percent_round_trip_and_rect() -> None:
    points = np.array([[0.0, 0.0], [810.0, 1080.0], [405.0, 270.0]])
    percent = pixels_to_percent(points, 810, 1080)
    assert percent.tolist() == [[0, 0], [100, 100], [50, 25]]
    assert np.allclose(percent_to_pixels(percent, 810, 1080), points)
    rect = box_to_ls_rect((81, 108, 405, 540), 810, 1080)
    assert rect == pytest.approx({"x": 10, "y": 10, "width": 40, "height": 40})
    assert ls_rect_to_box(rect, 810, 1080) == pytest.approx((81, 108, 405, 540))


def test_box_to_ls_rect_clips_to_image() -> None:
    assert box_to_ls_rect((-5, -5, 120, 50), 100, 100) == pytest.approx({"x": 0, "y": 0, "width": 100, "height": 50})


def test_rotated_rect_corners_rotate_clockwise_about_top_left() -> None:
    corners = ls_rect_corners({"x": 10, "y": 10, "width": 20, "height": 10, "rotation": 90}, 100, 100)
    # a 20x10 px box at (10, 10) turned 90 degrees clockwise hangs down-left of its anchor
    assert np.allclose(corners, [[10, 10], [10, 30], [0, 30], [0, 10]])
    assert ls_rect_to_box({"x": 10, "y": 10, "width": 20, "height": 10, "rotation": 90}, 100, 100) == pytest.approx((0, 10, 10, 30))
