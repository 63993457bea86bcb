"""Masks computed inside each box equal Ultralytics' retina masks (`ops.process_mask_native`) pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ultralytics.utils import ops

from backend.models.yolo_masks import retina_mask_crops

# (prototype h, w, image h, w): letterboxed 1080p and portrait photos, the prototype at the image's size,
# odd paddings that make Ultralytics upsample the prototypes 2x or 4x first, a non-square scaling
SHAPES = [(96, 160, 1080, 1920), (160, 120, 1080, 810), (160, 160, 160, 160), (90, 160, 1080, 1920),
          (160, 160, 333, 331), (40, 64, 150, 237), (48, 64, 97, 129)]


@pytest.mark.parametrize("shape", SHAPES)
def test_crops_equal_ultralytics_retina_masks(shape: tuple[int, int, int, int]) -> None:
    mh, mw, height, width = shape
    generator = torch.Generator().manual_seed(sum(shape))
    protos = torch.randn(32, mh, mw, generator=generator)
    coefficients = torch.randn(24, 32, generator=generator) * 0.3
    corners = torch.rand(24, 2, 2, generator=generator) * torch.tensor([width * 1.1, height * 1.1]) - 5
    boxes = torch.cat((corners.min(1).values, corners.max(1).values), 1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole image
    boxes[1] = torch.tensor([3.5, 2.0, 3.7, 40.0])  # no whole pixel column: empty
    boxes = ops.clip_boxes(boxes, (height, width))
    expected = ops.process_mask_native(protos, coefficients, boxes.clone(), (height, width)).numpy() > 0
    crops = retina_mask_crops(protos, coefficients, boxes, (height, width))
    assert len(crops) == len(expected)
    for crop, mask in zip(crops, expected):
        if crop is None:
            assert not mask.any()
        else:
            np.testing.assert_array_equal(crop.full(), mask)
    assert crops[1] is None and crops[0] is not None
