"""Object masks kept as the window around the object: per-object work (brush RLE, polygons, boxes)
costs the object's size, not the image's, and N objects never need an N x H x W array."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from formats.geometry import BoxXYXY, mask_to_box, mask_to_polygons
from formats.rle import mask_to_ls_rle, mask_window_to_ls_rle


@dataclass(frozen=True)
class MaskCrop:
    """A mask of a width x height image that is background outside `mask`, whose top-left pixel is (x0, y0)."""

    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool
    width: int
    height: int

    @classmethod
    def of(cls, mask: np.ndarray) -> MaskCrop:
        """The tight crop of a full-image mask (an empty mask gives an empty crop)."""
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=np.uint8))
        return cls(x, y, np.asarray(mask[y:y + h, x:x + w], dtype=bool), int(mask.shape[1]), int(mask.shape[0]))

    def full(self) -> np.ndarray:
        """The image-sized mask."""
        full = np.zeros((self.height, self.width), dtype=bool)
        h, w = self.mask.shape
        full[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return full

    def any(self) -> bool:
        return bool(self.mask.any())

    def box(self) -> BoxXYXY | None:
        """Tight pixel box around the mask's pixels, in image pixels; None when empty."""
        box = mask_to_box(self.mask)
        return None if box is None else (box[0] + self.x0, box[1] + self.y0, box[2] + self.x0, box[3] + self.y0)

    def polygons(self, tolerance: float = 0.5, min_area: float = 1.0) -> list[np.ndarray]:
        """`mask_to_polygons` of the full mask, traced in the crop."""
        return [polygon + (self.x0, self.y0) for polygon in mask_to_polygons(self.mask, tolerance, min_area)]

    def ls_rle(self) -> list[int]:
        """`mask_to_ls_rle` of the full mask, encoded from the crop."""
        if self.mask.shape == (self.height, self.width):
            return mask_to_ls_rle(self.mask)
        return mask_window_to_ls_rle(self.mask, self.x0, self.y0, self.width, self.height)


class MaskCrops(Sequence):
    """Several objects' masks of one image; indexing or iterating gives full-image masks (built on
    demand, for callers that want them), `crops` the crops themselves."""

    def __init__(self, crops: Sequence[MaskCrop], width: int, height: int) -> None:
        self.crops = tuple(crops)
        self.width, self.height = width, height

    @classmethod
    def of(cls, masks: np.ndarray) -> MaskCrops:
        """Crops of an (N, H, W) stack of full masks."""
        return cls([MaskCrop.of(mask) for mask in masks], int(masks.shape[2]), int(masks.shape[1]))

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self.crops[index].full()

    def __iter__(self) -> Iterator[np.ndarray]:
        return (crop.full() for crop in self.crops)
