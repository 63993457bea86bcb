"""Run-length encoded masks: COCO's RLE (pycocotools) and Label Studio's brush RLE (BrushLabels `rle`).

Masks are 2-D boolean arrays of the image's size (height, width), as in formats/geometry.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from pycocotools import mask as coco_mask

from formats.geometry import BoxXYXY


class CocoRLE(TypedDict):
    size: list[int]
    counts: str


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
