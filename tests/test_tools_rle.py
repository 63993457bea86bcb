"""The fast Label Studio brush RLE decoder against label-studio-sdk's decode_rle, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle

from formats.rle import ls_rle_alpha, mask_to_ls_rle


def sdk_alpha(rle: list[int], width: int, height: int) -> np.ndarray:
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3]


def rle_pack(values: list[list[int]], word_size: int = 8, sizes: tuple[int, ...] = (3, 4, 8, 16)) -> list[int]:
    """thi.ng rle-pack (what Label Studio's editor writes) from explicit records: [value] * n is a
    series record, a list of differing values a literal record; the SDK never writes literals."""
    bits: list[int] = []

    def put(value: int, width: int) -> None:
        bits.extend((value >> shift) & 1 for shift in range(width - 1, -1, -1))

    put(sum(len(record) for record in values), 32)
    put(word_size - 1, 5)
    for size in sizes:
        put(size - 1, 4)
    for record in values:
        index = next(i for i, size in enumerate(sizes) if len(record) - 1 < (1 << size))
        series = len(record) > 1 and len(set(record)) == 1
        put(int(series), 1)
        put(index, 2)
        put(len(record) - 1, sizes[index])
        for value in record[:1] if series else record:
            put(value, word_size)
    bits.extend([0] * (-len(bits) % 8))
    return np.packbits(np.array(bits, dtype=np.uint8)).tolist()


def test_masks_from_the_backend_encoder_decode_like_the_sdk() -> None:
    rng = np.random.default_rng(0)
    for width, height in ((1, 1), (7, 3), (64, 48), (301, 199)):
        for density in (0.0, 0.02, 0.5, 1.0):
            mask = rng.random((height, width)) < density
            rle = mask_to_ls_rle(mask)
            alpha = ls_rle_alpha(rle, width, height)
            assert alpha.dtype == np.uint8
            assert np.array_equal(alpha, sdk_alpha(rle, width, height))
            assert np.array_equal(alpha > 0, mask)


def test_any_value_stream_decodes_like_the_sdk() -> None:
    """Channels differ per pixel and runs cross pixel boundaries, including runs longer than 2**16."""
    rng = np.random.default_rng(1)
    for width, height in ((5, 4), (40, 30), (200, 120)):
        runs = rng.integers(1, 13, size=width * height)
        values = np.repeat(rng.integers(0, 256, size=runs.size), runs)[: width * height * 4]
        values = np.pad(values, (0, width * height * 4 - values.size), constant_values=7).astype(np.uint8)
        rle = encode_rle(values)
        assert np.array_equal(ls_rle_alpha(rle, width, height), sdk_alpha(rle, width, height))
    long_run = np.concatenate([np.full(70_000, 255), np.zeros(50_000), np.full(40_000, 9)]).astype(np.uint8)
    rle = encode_rle(long_run)
    assert np.array_equal(ls_rle_alpha(rle, 200, 200), sdk_alpha(rle, 200, 200))


def test_literal_records_and_other_field_sizes_decode_like_the_sdk() -> None:
    records = [[0, 0, 0, 255], [255] * 9, [1, 2, 3], [0] * 300, [255, 255, 0, 0, 3], [4, 4, 4, 5], [6] * 7]
    width = sum(len(record) for record in records) // 4  # 332 values: 83 RGBA pixels
    for sizes in ((3, 4, 8, 16), (2, 5, 9, 12)):
        rle = rle_pack(records, sizes=sizes)
        assert np.array_equal(ls_rle_alpha(rle, width, 1), sdk_alpha(rle, width, 1))


@pytest.mark.parametrize("rle, message", [
    ([1, 2, 3], "header"),
    ([0, 0, 0, 16, 224, 0, 0, 0, 0] + [300], "outside 0..255"),
    (["a"] * 10, "header"),
])
def test_malformed_rle_is_a_value_error(rle: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ls_rle_alpha(rle, 2, 2)


def test_truncated_or_wrong_size_rle_is_a_value_error() -> None:
    rle = mask_to_ls_rle(np.eye(20, dtype=bool))
    with pytest.raises(ValueError, match="ends inside a run"):
        ls_rle_alpha(rle[: len(rle) // 2], 20, 20)
    with pytest.raises(ValueError, match="expected 1600"):
        ls_rle_alpha(mask_to_ls_rle(np.eye(10, dtype=bool)), 20, 20)
