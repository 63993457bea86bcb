"""Pure converters between region representations, shared by the backend and the tools.

Conventions:
- Pixel coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1), so a box
  around it is (j, i, j+1, i+1). COCO and Label Studio both use this convention.
- Label Studio coordinates are percent (0..100) of the displayed image's width and height.
- Masks are 2-D boolean arrays of the image's size (height, width); a window of such a mask is a
  smaller array placed at (x0, y0), the image being background outside it (formats/mask_crop.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import cv2
import numpy as np
from pycocotools import mask as coco_mask

BoxXYXY = tuple[float, float, float, float]

_RELATIVE_TOLERANCE = 1e-3


class LSRect(TypedDict):
    x: float
    y: float
    width: float
    height: float


class CocoRLE(TypedDict):
    size: list[int]
    counts: str


# ---------------------------------------------------------------- coordinates


def pixels_to_percent(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nx2 pixel (x, y) -> Nx2 Label Studio percent."""
    return np.asarray(points, dtype=np.float64) * (100.0 / np.array([width, height]))


def percent_to_pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nx2 Label Studio percent (x, y) -> Nx2 pixels."""
    return np.asarray(points, dtype=np.float64) * (np.array([width, height]) / 100.0)


def box_to_ls_rect(box: BoxXYXY, width: int, height: int) -> LSRect:
    """Pixel (x1, y1, x2, y2) -> Label Studio rectangle value in percent, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return LSRect(x=x1 * 100.0 / width, y=y1 * 100.0 / height,
                  width=(x2 - x1) * 100.0 / width, height=(y2 - y1) * 100.0 / height)


def ls_rect_corners(value: dict, width: int, height: int) -> np.ndarray:
    """Label Studio rectangle value -> 4x2 pixel corners (clockwise from the anchor).

    Label Studio rotates a rectangle by `rotation` degrees clockwise around its top-left corner
    (x, y), which is the anchor both in the editor and in exports.
    """
    x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
    w, h = value["width"] * width / 100.0, value["height"] * height / 100.0
    theta = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(theta), math.sin(theta)
    local = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    rotated = local @ np.array([[cos, sin], [-sin, cos]])
    return rotated + np.array([x, y])


def ls_rect_to_box(value: dict, width: int, height: int) -> BoxXYXY:
    """Label Studio rectangle value -> pixel box enclosing it (rotation included)."""
    corners = ls_rect_corners(value, width, height)
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def rotated_box_to_ls_rect(center: tuple[float, float], size: tuple[float, float], angle: float,
                           width: int, height: int) -> dict:
    """Pixel rotated box (center, (w, h), angle in radians, clockwise on screen: the box's w side
    points along (cos, sin), Ultralytics' `xywhr`) -> Label Studio rectangle value: the top-left
    corner before rotation, sizes in percent, `rotation` in degrees in [0, 360). Not clipped: a
    rotated box may reach past the image, as Label Studio allows. `ls_rect_corners` inverts it."""
    (cx, cy), (w, h) = center, size
    cos, sin = math.cos(angle), math.sin(angle)
    anchor_x = cx - w / 2 * cos + h / 2 * sin
    anchor_y = cy - w / 2 * sin - h / 2 * cos
    return {"x": anchor_x * 100.0 / width, "y": anchor_y * 100.0 / height, "width": w * 100.0 / width,
            "height": h * 100.0 / height, "rotation": math.degrees(angle) % 360.0}


def ls_rect_to_yolo_obb(value: dict, width: int, height: int) -> np.ndarray:
    """Label Studio rectangle value (rotated or not) -> YOLO OBB corners `x1 y1 ... x4 y4` normalized to
    the image (8 floats, not clipped), in Label Studio's order: the anchor, then clockwise on screen."""
    return (ls_rect_corners(value, width, height) / np.array([width, height], dtype=np.float64)).ravel()


def yolo_obb_to_ls_rect(corners: Sequence[float], width: int, height: int) -> dict:
    """YOLO OBB corners (8 normalized floats of a rectangle, consecutive corners in either turning
    direction) -> Label Studio rectangle value; `ls_rect_to_yolo_obb` of a value gives it back."""
    points = np.asarray(corners, dtype=np.float64).reshape(4, 2) * np.array([width, height], dtype=np.float64)
    side_w, side_h = points[1] - points[0], points[3] - points[0]
    if side_w[0] * side_h[1] - side_w[1] * side_h[0] < 0:  # counter-clockwise on screen: walk the other way
        points = points[[0, 3, 2, 1]]
        side_w, side_h = side_h, side_w
    w, h = float(np.hypot(*side_w)), float(np.hypot(*side_h))
    rotation = math.degrees(math.atan2(side_w[1], side_w[0])) % 360.0
    return {"x": points[0, 0] * 100.0 / width, "y": points[0, 1] * 100.0 / height, "width": w * 100.0 / width,
            "height": h * 100.0 / height, "rotation": rotation}


# ---------------------------------------------------------------- masks, boxes, polygons


def mask_to_box(mask: np.ndarray) -> BoxXYXY | None:
    """Tight pixel box (x1, y1, x2, y2) around the mask's pixels; None for an empty mask."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))
    if w == 0 or h == 0:
        return None
    return float(x), float(y), float(x + w), float(y + h)


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5, min_area: float = 1.0) -> list[np.ndarray]:
    """Outline each separate (8-connected) part of the mask as one Nx2 pixel polygon (x, y).

    The outline runs along pixel edges, not pixel centers, so the polygon covers the mask instead
    of shrinking it by half a pixel on every side: a part is traced on the grid of pixel corners,
    where a corner belongs to the part when any of its four pixels does. `tolerance` is the
    Douglas-Peucker distance in pixels (0 keeps every corner); parts whose polygon is smaller than
    `min_area` are dropped. Holes are not represented (Label Studio polygons have none).
    Long outlines are simplified at least to 0.1% of their length, so a large object stays a
    polygon of tens of points, not of every pixel step, while small ones keep their precision.
    """
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    x0, y0, w, h = cv2.boundingRect(mask_u8)
    if w == 0 or h == 0:
        return []
    n_parts, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8[y0:y0 + h, x0:x0 + w], connectivity=8)
    polygons = []
    for part in range(1, n_parts):
        px, py, pw, ph = (int(v) for v in stats[part, :4])
        padded = np.pad(labels[py:py + ph, px:px + pw] == part, 1)
        corners = padded[:-1, :-1] | padded[1:, :-1] | padded[:-1, 1:] | padded[1:, 1:]
        contours, _ = cv2.findContours(corners.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            epsilon = max(tolerance, _RELATIVE_TOLERANCE * cv2.arcLength(contour, closed=True)) if tolerance > 0 else 0
            outline = cv2.approxPolyDP(contour, epsilon, closed=True) if epsilon > 0 else contour
            points = outline[:, 0, :].astype(np.float64) + (x0 + px, y0 + py)
            if len(points) >= 3 and polygon_area(points) >= min_area:
                polygons.append(points)
    return polygons


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of an Nx2 polygon."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygons_to_mask(polygons: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """Rasterize pixel polygons the way COCO tools do (pycocotools), as one boolean mask."""
    flat = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(flat, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------- COCO RLE


def mask_to_coco_rle(mask: np.ndarray) -> CocoRLE:
    encoded = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return CocoRLE(size=[int(s) for s in encoded["size"]], counts=encoded["counts"].decode("ascii"))


def coco_rle_to_mask(rle: CocoRLE) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def coco_rle_area(rle: CocoRLE) -> int:
    return int(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def coco_rle_box(rle: CocoRLE) -> BoxXYXY:
    x, y, w, h = coco_mask.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return float(x), float(y), float(x + w), float(y + h)


# ---------------------------------------------------------------- Label Studio brush RLE

# Label Studio's brush format (thi.ng rle-pack): a bit stream over the image's RGBA bytes with a
# 32-bit length, a 5-bit word size, four 4-bit run-length field sizes, then one record per run.
# label_studio_sdk.converter.brush.mask2rle builds it bit by bit in Python; this vectorized encoder
# writes the same bytes (tests check parity) about two orders of magnitude faster, which matters on
# the /predict hot path for full-resolution masks.
_RLE_SIZES = (3, 4, 8, 16)
_WORD_SIZE = 8
_MAX_RUN = 1 << 16


def mask_to_ls_rle(mask: np.ndarray) -> list[int]:
    """Boolean mask -> Label Studio BrushLabels `rle` (same bytes as the SDK's mask2rle(mask * 255))."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return _runs_to_ls_rle(0, np.zeros(0, np.int64), np.zeros(0, bool))
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    return _runs_to_ls_rle(flat.size, starts, flat[starts])


def mask_window_to_ls_rle(window: np.ndarray, x0: int, y0: int, width: int, height: int) -> list[int]:
    """The Label Studio `rle` of a width x height mask that is background outside `window` (placed at
    x0, y0): the same bytes as `mask_to_ls_rle` of the full mask, without building it."""
    n_pixels = width * height
    window_height, window_width = window.shape
    if window.size == 0 or n_pixels == 0:  # all background: one run
        return _runs_to_ls_rle(n_pixels, np.zeros(1, np.int64), np.zeros(1, bool))
    # Rows of a window narrower than the image are separated by background, so each row padded with
    # a background pixel on both sides holds all of its changes; a full-width window is one segment.
    narrow = window_width < width
    rows = window if narrow else window.reshape(1, -1)
    row_starts = np.arange(y0, y0 + window_height) * width + x0 if narrow else np.array([y0 * width])
    padded = np.zeros((rows.shape[0], rows.shape[1] + 2), dtype=bool)
    padded[:, 1:-1] = rows
    row_index, column = np.nonzero(padded[:, 1:] != padded[:, :-1])
    changes = row_starts[row_index] + column  # flat index of the first pixel of each new run
    inside = changes < n_pixels  # a change right after the image's last pixel starts no run
    changes, values = changes[inside], padded[row_index[inside], column[inside] + 1]
    if changes.size and changes[0] == 0:
        return _runs_to_ls_rle(n_pixels, changes, values)
    return _runs_to_ls_rle(n_pixels, np.concatenate(([0], changes)), np.concatenate(([False], values)))


def _runs_to_ls_rle(n_pixels: int, starts: np.ndarray, run_values: np.ndarray) -> list[int]:
    """Label Studio `rle` of a mask of n_pixels given as runs: each run's first flat index and its value."""
    header = [(n_pixels * 4, 32), (_WORD_SIZE - 1, 5)] + [(size - 1, 4) for size in _RLE_SIZES]
    header_values, header_bits = np.array(header, dtype=np.int64).T
    if n_pixels == 0:
        return _pack_fields(header_values, header_bits)
    lengths = np.diff(starts, append=n_pixels)
    lengths *= 4  # runs over RGBA bytes, so every run is a series (length >= 4)
    # The size field follows the whole run's length: a long run's short remainder keeps 16 bits.
    size_index = (lengths > 8).astype(np.int64)
    size_index += lengths > 16
    size_index += lengths > 256
    run_values = run_values.astype(np.int64)
    if lengths.max() > _MAX_RUN:  # written as full 2**16 chunks followed by the remainder
        n_full = np.where(lengths > _MAX_RUN, (lengths - 1) // _MAX_RUN, 0)
        chunk_counts = n_full + 1
        remainders = lengths - n_full * _MAX_RUN
        lengths = np.full(int(chunk_counts.sum()), _MAX_RUN, dtype=np.int64)
        lengths[np.cumsum(chunk_counts) - 1] = remainders
        size_index = np.repeat(size_index, chunk_counts)
        run_values = np.repeat(run_values, chunk_counts)
    field_bits = np.array(_RLE_SIZES)[size_index]
    # record = series flag (1) | size index (2) | length - 1 (field bits) | value (8)
    records = size_index
    records |= 0b100
    records <<= field_bits
    lengths -= 1
    records |= lengths
    records <<= _WORD_SIZE
    records |= run_values * 255
    field_bits += 3 + _WORD_SIZE
    return _pack_fields(np.concatenate((header_values, records)), np.concatenate((header_bits, field_bits)))


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """Bytes of the fields' lowest `width` bits (at most 32 each) written one after another, most
    significant first, followed by 1..8 zero bits (8 when already byte-aligned), as the SDK writes them.

    Each field lands in one 64-bit word, or straddles two; fields never share bits, so adding a
    word's fields together is OR-ing them. In-place steps: this runs per mask on /predict, and
    fresh temporaries of this size cost page faults."""
    offsets = np.cumsum(widths)
    total_bits = int(offsets[-1])
    offsets -= widths
    word = offsets >> 6
    shift = offsets  # 64 - bit offset in the word - width; negative: straddles into the next word
    shift &= 63
    shift += widths
    np.subtract(64, shift, out=shift)
    straddling = shift < 0
    np.abs(shift, out=shift)
    shift_bits = shift.astype(np.uint64)
    head = values.astype(np.uint64)
    np.left_shift(head, shift_bits, out=head, where=~straddling)
    np.right_shift(head, shift_bits, out=head, where=straddling)
    words = np.zeros(total_bits // 64 + 2, dtype=np.uint64)
    first_in_word = np.flatnonzero(np.diff(word, prepend=-1))
    words[word[first_in_word]] = np.add.reduceat(head, first_in_word)
    tails = values[straddling].astype(np.uint64) << (np.uint64(64) - shift_bits[straddling])
    words[word[straddling] + 1] += tails
    return words.astype(">u8").view(np.uint8)[: total_bits // 8 + 1].tolist()


def ls_rle_to_mask(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """Label Studio BrushLabels `rle` -> boolean mask (alpha channel > 0); ValueError if malformed."""
    return ls_rle_alpha(rle, width, height) > 0


# Decoding walks the records in Python (a record's length depends on its own bits) over one
# precomputed 64-bit big-endian window per byte, so a series record (flag, size index, count, value:
# at most 3+16+32 bits after a 7-bit offset) is a single window read; only the alpha channel is then
# expanded. About 5 ms for a 1080p mask, where the SDK's bit-string decode_rle takes about 400 ms.
_LS_RLE_HEADER_BITS = 32 + 5 + 4 * 4


def _ls_rle_runs(rle: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Label Studio brush `rle` -> (number of values, run values, run lengths), runs in stream order."""
    data = np.asarray(rle)
    if data.ndim != 1 or data.size * 8 < _LS_RLE_HEADER_BITS or data.dtype.kind not in "iu":
        raise ValueError("brush RLE must be a list of byte values with a 53-bit header")
    if data.min() < 0 or data.max() > 255:
        raise ValueError("brush RLE holds values outside 0..255")
    n_bits = data.size * 8
    padded = np.concatenate((data.astype(np.uint64), np.zeros(16, dtype=np.uint64)))
    windows = np.zeros(data.size + 8, dtype=np.uint64)
    for k in range(8):
        windows |= padded[k:k + data.size + 8] << np.uint64(56 - 8 * k)
    words = windows.tolist()
    header = words[0]
    n_values = header >> 32
    word_size = ((header >> 27) & 31) + 1
    field_sizes = [((header >> (23 - 4 * k)) & 15) + 1 for k in range(4)]
    word_mask = (1 << word_size) - 1
    values: list[int] = []
    lengths: list[int] = []
    position, decoded = _LS_RLE_HEADER_BITS, 0
    try:
        while decoded < n_values:
            word = words[position >> 3]
            shift = 64 - (position & 7) - 3  # bits of the window after the record's 3-bit head
            head = (word >> shift) & 7
            field = field_sizes[head & 3]
            shift -= field
            count = ((word >> shift) & ((1 << field) - 1)) + 1
            position += 3 + field
            if head & 4:  # a series: one value repeated `count` times
                values.append((word >> (shift - word_size)) & word_mask)
                lengths.append(count)
                position += word_size
            else:  # literal values
                for _ in range(count):
                    values.append((words[position >> 3] >> (64 - (position & 7) - word_size)) & word_mask)
                    lengths.append(1)
                    position += word_size
            decoded += count
            if position > n_bits:
                raise IndexError
    except IndexError:
        raise ValueError(f"brush RLE ends inside a run ({decoded} of {n_values} values decoded)") from None
    return n_values, np.array(values, dtype=np.int64), np.array(lengths, dtype=np.int64)


def ls_rle_alpha(rle: Sequence[int], width: int, height: int) -> np.ndarray:
    """Label Studio brush `rle` -> HxW uint8 alpha channel, byte-identical to the SDK's
    `decode_rle(rle).reshape(height, width, 4)[:, :, 3]`; raises ValueError for a malformed RLE."""
    n_values, values, lengths = _ls_rle_runs(rle)
    expected = width * height * 4
    if n_values != expected:
        raise ValueError(f"brush RLE holds {n_values} values, expected {expected} for {width}x{height} RGBA")
    if values.size and values.max() > 255:
        raise ValueError("brush RLE holds values wider than a byte")
    ends = np.minimum(np.cumsum(lengths), n_values)
    starts = np.cumsum(lengths) - lengths
    # Pixel k's alpha is value 4k+3, so a run of values [start, end) holds the alphas of pixels
    # start//4 .. (end-4)//4: repeating each run's value that often yields the alpha channel.
    alpha_counts = np.maximum((ends - 4) // 4 - starts // 4 + 1, 0)
    return np.repeat(values.astype(np.uint8), alpha_counts).reshape(height, width)


# ---------------------------------------------------------------- CVAT shapes


def ls_rect_to_cvat_rectangle(value: dict, width: int, height: int) -> tuple[list[float], float]:
    """Label Studio rectangle value -> CVAT rectangle `points` [x1, y1, x2, y2] in pixels and `rotation`.

    Label Studio turns a rectangle around its top-left corner, CVAT around its centre (both in
    degrees, clockwise), so the points are the unrotated box around the rotated box's centre."""
    center_x, center_y = ls_rect_corners(value, width, height).mean(axis=0)
    half_w, half_h = value["width"] * width / 200.0, value["height"] * height / 200.0
    points = [float(center_x - half_w), float(center_y - half_h), float(center_x + half_w), float(center_y + half_h)]
    return points, float(value.get("rotation") or 0.0) % 360.0


def mask_to_cvat_rle(mask: np.ndarray) -> list[int]:
    """Boolean mask -> CVAT mask shape `points` (not COCO's RLE): the lengths of alternating runs,
    background first (0 when the first pixel is set), over the mask's tight box read row by row,
    then the box as left, top, right, bottom, the last two inclusive. The same numbers as
    `cvat_sdk.masks.encode_mask(mask)`; an empty mask is one background pixel at (0, 0)."""
    box = mask_to_box(mask)
    if box is None:
        return [1, 0, 0, 0, 0]
    x1, y1, x2, y2 = (int(v) for v in box)
    flat = np.ascontiguousarray(mask[y1:y2, x1:x2], dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(np.concatenate(([0], changes, [flat.size])))
    runs = lengths.tolist()
    return ([0] + runs if flat[0] else runs) + [x1, y1, x2 - 1, y2 - 1]
