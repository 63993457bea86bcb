"""YOLO segmentation masks at the image's resolution, computed only inside each detection's box.

Ultralytics' retina masks (`ops.process_mask_native`) mix the prototypes with each detection's
coefficients, upsample the mix bilinearly to the whole image, threshold it at 0 and zero it outside
the box: N full-image float planes, most of it thrown away. Here the same arithmetic runs only where
it is kept. torch's CPU bilinear kernel interpolates along the width first and then between rows,
so the 2-D upsampling equals two 1-D passes of the same kernel (width with the rows untouched, then
height with the columns untouched), bit for bit; each pass can then be limited: the first to the
prototype rows the box reads, the second to the box's columns. Boxes, thresholds and the crop rule
are Ultralytics' own, so every pixel equals its retina mask (tests/test_yolo_masks.py checks).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from formats.mask_crop import MaskCrop


def retina_mask_crops(protos: torch.Tensor, coefficients: torch.Tensor, boxes: torch.Tensor,
                      shape: tuple[int, int]) -> list[MaskCrop | None]:
    """Each detection's retina mask inside its box; None where the box holds no mask pixel.

    protos (C, mh, mw) and coefficients (N, C) as the model returns them; boxes (N, 4) xyxy in
    image pixels (Ultralytics' `scale_boxes` output); shape (height, width) of the image."""
    c, mh, mw = protos.shape
    height, width = shape
    if len(coefficients) == 0:
        return []
    logits = (coefficients @ protos.float().view(c, -1)).view(1, -1, mh, mw)  # the same product as Ultralytics
    factor = _prototype_upsampling(mh, mw, height, width)
    crops: list[MaskCrop | None] = []
    for index, box in enumerate(boxes.tolist()):
        window = _crop_window(box, height, width)
        if window is None:
            crops.append(None)
            continue
        plane = logits[:, index:index + 1]
        if factor > 1:
            plane = F.interpolate(plane, scale_factor=factor, mode="bilinear")
        mask = _upsampled_window(_content(plane, height, width), window, height, width)
        x0, y0, _, _ = window
        crops.append(MaskCrop(x0, y0, mask, width, height) if mask.any() else None)
    return crops


def _prototype_upsampling(mh: int, mw: int, height: int, width: int) -> int:
    """Ultralytics' pre-upsampling factor (1, 2 or 4) that lets the letterbox padding be cropped on whole pixels."""
    gain = min(4 * mh / height, 4 * mw / width)
    pad = (4 * mh - max(round(height * gain), 1)) | (4 * mw - max(round(width * gain), 1))
    return 4 // math.gcd(4, pad | pad // 2)


def _content(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The part of a (1, 1, h, w) prototype plane that covers the image, without letterbox padding (`ops.scale_masks`)."""
    ph, pw = plane.shape[2:]
    if (ph, pw) == (height, width):
        return plane
    gain = min(ph / height, pw / width)
    pad_w, pad_h = (pw - max(round(width * gain), 1)) / 2, (ph - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = top + max(round(height * gain), 1), left + max(round(width * gain), 1)
    return plane[..., top:bottom, left:right]


def _crop_window(box: list[float], height: int, width: int) -> tuple[int, int, int, int] | None:
    """Pixels Ultralytics' `crop_mask` keeps: columns c with x1 <= c < x2, rows r with y1 <= r < y2."""
    x1, y1, x2, y2 = (np.float32(v) for v in box)  # the comparison runs in the boxes' float32
    c0, c1 = (min(max(math.ceil(v), 0), width) for v in (x1, x2))
    r0, r1 = (min(max(math.ceil(v), 0), height) for v in (y1, y2))
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1, r1


def _upsampled_window(content: torch.Tensor, window: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """`F.interpolate(content, (height, width), mode="bilinear") > 0` inside the window, as a bool array."""
    c0, r0, c1, r1 = window
    ch = content.shape[2]
    if ch == height and content.shape[3] == width:  # Ultralytics skips the interpolation too
        return (content[0, 0, r0:r1, c0:c1] > 0).cpu().numpy()
    # Source rows the window's output rows read: floor(scale * (r + 0.5) - 0.5) and the next, with a margin.
    scale = ch / height
    first = min(max(math.floor(scale * (r0 + 0.5) - 0.5) - 1, 0), ch - 1)
    last = min(max(math.floor(scale * (r1 - 0.5) - 0.5) + 3, first + 1), ch)
    rows = F.interpolate(content[..., first:last, :], size=(last - first, width), mode="bilinear")
    # Rows outside first:last stay zero: no output row of the window reads them.
    columns = content.new_zeros((1, 1, ch, c1 - c0))
    columns[..., first:last, :] = rows[..., c0:c1]
    upsampled = F.interpolate(columns, size=(height, c1 - c0), mode="bilinear")
    return (upsampled[0, 0, r0:r1] > 0).cpu().numpy()
