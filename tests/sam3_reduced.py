"""A reduced SAM 3 with random weights (fixed seed) built through Meta's own builder, and Meta's reference on it.

The full model (860 M parameters) takes minutes per image on a 2-core CPU; the reduced one has Meta's
modules with fewer, narrower layers at 224 pixels, which keeps every code path (text and geometry
encoders, fusion encoder, decoder with presence token, segmentation head, instance interactivity).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sam3", reason="the sam3 extra is not installed")

from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR  # noqa: E402
from backend.models.sam3_network import Sam3Architecture, build_network, running, save_reduced_checkpoint  # noqa: E402

REDUCED = Sam3Architecture(resolution=224, vit_width=32, vit_depth=2, vit_heads=2, vit_window=8, vit_global_blocks=(1,),
                           text_width=32, text_heads=2, text_layers=1, encoder_layers=1, decoder_layers=1,
                           feedforward=128)
CHECKPOINT = "sam3-reduced.pt"
PICTURE = "sam3_picture.png"  # written into the session's Local Storage root
_built: dict[str, Path] = {}


def reduced_checkpoint(directory: Path, seed: int = 0) -> Path:
    """The reduced checkpoint as `directory/sam3-reduced.pt` (built once per test session, then copied)."""
    key = f"seed{seed}"
    if key not in _built:
        _built[key] = save_reduced_checkpoint(directory / f".build-{key}" / CHECKPOINT, REDUCED, seed)
    target = directory / CHECKPOINT
    if not target.exists():
        shutil.copyfile(_built[key], target)
    return target


class MetaReference:
    """Meta's Sam3Processor and Sam3Image.predict_inst on the checkpoint, loaded by Meta's own loader."""

    def __init__(self, checkpoint: Path) -> None:
        import sam3.model_builder as builder
        from sam3.model.sam3_image_processor import Sam3Processor

        self.network = build_network(REDUCED, "cpu")
        builder._load_checkpoint(self.network, str(checkpoint))
        self.processor = Sam3Processor(self.network, resolution=REDUCED.resolution, device="cpu")

    def state(self, pixels: np.ndarray) -> dict:
        from PIL import Image

        with running(torch.device("cpu")):
            return self.processor.set_image(Image.fromarray(pixels))

    def text(self, pixels: np.ndarray, phrase: str, threshold: float) -> dict:
        self.processor.confidence_threshold = threshold
        with running(torch.device("cpu")):
            return _numpy(self.processor.set_text_prompt(phrase, self.state(pixels)))

    def examples(self, pixels: np.ndarray, boxes: list[tuple[list[float], bool]], threshold: float) -> dict:
        """add_geometric_prompt box by box; boxes in pixels xyxy, converted to Meta's normalized cxcywh."""
        height, width = pixels.shape[:2]
        self.processor.confidence_threshold = threshold
        state = self.state(pixels)
        with running(torch.device("cpu")):
            for (x0, y0, x1, y1), positive in boxes:
                box = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
                state = self.processor.add_geometric_prompt(box, positive, state)
        return _numpy(state)

    def click(self, pixels: np.ndarray, **prompt: object) -> tuple[np.ndarray, np.ndarray]:
        state = self.state(pixels)
        with running(torch.device("cpu")):
            masks, scores, _ = self.network.predict_inst(state, **prompt)
        return np.asarray(masks) > 0, np.asarray(scores)


def _numpy(state: dict) -> dict:
    return {"masks": state["masks"][:, 0].numpy(), "boxes": state["boxes"].numpy(), "scores": state["scores"].numpy()}


def threshold_keeping(scores: np.ndarray, count: int) -> float:
    """A threshold between the count-th and the next highest score: exactly `count` instances pass."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    return float((ranked[count - 1] + ranked[count]) / 2)


def test_picture(seed: int = 3, height: int = 150, width: int = 200) -> np.ndarray:
    """Smooth noise with a few bright and dark blobs: not a blank image, not a dataset."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height // 10, width // 10, 3)) * 255).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((10, 10, 1), dtype=np.uint8))
    for _ in range(4):
        y, x = rng.integers(10, height - 30), rng.integers(10, width - 30)
        pixels[y:y + 20, x:x + 25] = rng.integers(0, 255, 3)
    return np.ascontiguousarray(pixels)


test_picture.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sam3-models")
    reduced_checkpoint(root)
    for name in (DEMO_DET, DEMO_SEG):
        shutil.copyfile(MODELS_DIR / name, root / name)
    return root


@pytest.fixture(scope="module")
def meta(model_root: Path) -> MetaReference:
    return MetaReference(model_root / CHECKPOINT)


@pytest.fixture(scope="module")
def picture(image_root: Path) -> np.ndarray:
    pixels = test_picture()
    Image.fromarray(pixels).save(image_root / PICTURE)
    return pixels


def brush_mask(region: dict) -> np.ndarray:
    """A BrushLabels region's mask, decoded by Label Studio's own converter."""
    from label_studio_sdk.converter.brush import decode_rle

    height, width = region["original_height"], region["original_width"]
    return np.asarray(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3] > 0
