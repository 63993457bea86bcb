"""SAM 2.1 and MobileSAM without GitHub: the backend answers exactly what the libraries' own predictors answer.

Random-weight checkpoints are built by the libraries' own builders (Meta's build_sam2, Ultralytics'
TinyViT inside segment-anything's Sam) and saved the way the published files are, then loaded by
the backend like any checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from formats.geometry import mask_iou
from backend.models.sam import SamSegmenter, load_sam, mobile_sam_network
from backend.models.sam_checkpoints import SamLoadError, resolve_checkpoint
from backend.models.sam_embeddings import DiskEmbeddings, MemoryEmbeddings, image_key
from backend.serving.app import build_services
from tests.conftest import demo_settings, ultralytics_asset
from tests.test_sam_interactive import SamApp, assert_regions_show, interactive_request, pixels_of

sam2 = pytest.importorskip("sam2")
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402

CLICK, OTHER_CLICK = np.array([[300.0, 620.0]]), np.array([[520.0, 380.0]])
BOX = np.array([40.0, 220.0, 780.0, 900.0])


@pytest.fixture(scope="module")
def bus() -> np.ndarray:
    return np.asarray(Image.open(ultralytics_asset("bus.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SAM 2.1 Hiera tiny saved as Meta publishes it ({"model": state_dict}), under Ultralytics' name."""
    torch.manual_seed(0)
    network = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_t.pt"
    torch.save({"model": network.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def sam2_pair(sam2_checkpoint: Path, bus: np.ndarray) -> tuple[SamSegmenter, SAM2ImagePredictor]:
    model = load_sam("sam2", "", sam2_checkpoint, "cpu")
    predictor = SAM2ImagePredictor(model.network)
    predictor.set_image(bus)
    return SamSegmenter(model, MemoryEmbeddings(2), None), predictor


def assert_same(ours: tuple[np.ndarray, np.ndarray], theirs: tuple) -> None:
    masks, scores = ours
    assert masks.shape == theirs[0].shape and masks.dtype == bool
    assert all(np.array_equal(a, b.astype(bool)) for a, b in zip(masks, theirs[0]))
    np.testing.assert_allclose(scores, theirs[1], rtol=1e-5, atol=1e-6)
    assert 0 < masks.mean() < 1, "a constant mask would make the comparison meaningless"


def test_sam2_1_tiny_answers_like_sam2_image_predictor(sam2_pair: tuple, bus: np.ndarray) -> None:
    sam, predictor = sam2_pair
    positive = np.array([1])
    assert_same(sam.masks(bus, CLICK, positive, None, multimask=True),
                predictor.predict(CLICK, positive, multimask_output=True))
    two, labels = np.concatenate([CLICK, OTHER_CLICK]), np.array([1, 0])
    assert_same(sam.masks(bus, two, labels, None, multimask=False),
                predictor.predict(two, labels, multimask_output=False))
    assert_same(sam.masks(bus, None, None, BOX, multimask=False), predictor.predict(box=BOX, multimask_output=False))
    assert_same(sam.masks(bus, CLICK, positive, BOX, multimask=False),
                predictor.predict(CLICK, positive, box=BOX, multimask_output=False))
    assert sam.encoder_calls == 1


def test_sam2_best_mask_and_box_batches_match_the_predictor(sam2_pair: tuple, bus: np.ndarray) -> None:
    sam, predictor = sam2_pair
    masks, scores, _ = predictor.predict(OTHER_CLICK, np.array([1]), multimask_output=True)
    mask, score = sam.best_mask(bus, OTHER_CLICK, np.array([1]), None, multimask=True)
    assert np.array_equal(mask, masks[int(np.argmax(scores))].astype(bool))
    assert score == pytest.approx(float(scores.max()), rel=1e-5)
    boxes = np.array([BOX, [0.0, 0.0, 300.0, 300.0], [500.0, 100.0, 800.0, 1000.0]])
    theirs = predictor.predict(box=boxes, multimask_output=False)[0][:, 0].astype(bool)
    assert np.array_equal(sam.masks_for_boxes(bus, boxes), theirs)


def test_sam2_embeddings_survive_the_fp16_disk_cache(sam2_checkpoint: Path, sam2_pair: tuple, bus: np.ndarray,
                                                     tmp_path: Path) -> None:
    model = sam2_pair[0].model
    DiskEmbeddings(tmp_path, "m").save(image_key(bus), sam2_pair[0].embedding(bus))  # computed once, in memory
    restarted = SamSegmenter(model, MemoryEmbeddings(1), DiskEmbeddings(tmp_path, "m"))
    cached, _ = restarted.best_mask(bus, CLICK, np.array([1]), None, multimask=True)
    fresh, _ = sam2_pair[0].best_mask(bus, CLICK, np.array([1]), None, multimask=True)
    assert restarted.encoder_calls == 0 and restarted.disk_hits == 1
    assert mask_iou(cached, fresh) >= 0.99  # fp16 on disk: nearly, not bit-exact


@pytest.mark.parametrize("model_name, config, name", [
    ("sam2", "", "sam2.1:hiera_t"), ("sam2.1", "hiera_t", "sam2.1:hiera_t"),
    ("sam2", "sam2.1_hiera_t", "sam2.1:hiera_t"), ("sam2", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1:hiera_t"),
])
def test_sam2_config_names(sam2_checkpoint: Path, model_name: str, config: str, name: str) -> None:
    assert load_sam(model_name, config, sam2_checkpoint, "cpu").name == f"{name}:sam2.1_t.pt"


@pytest.mark.parametrize("model_name, config, message", [
    ("sam2", "hiera_l", "is a SAM 2.1 hiera_t checkpoint, which does not fit SAM_CONFIG=hiera_l with MODEL_NAME=sam2: "
                        "set MODEL_NAME=sam2.1 SAM_CONFIG=hiera_t, or leave SAM_CONFIG empty"),
    ("sam2", "sam2_hiera_t", "is a SAM 2.1 hiera_t checkpoint, which does not fit SAM_CONFIG=sam2_hiera_t"),
    ("sam2", "hiera_x", "SAM_CONFIG \\(sam_config\\)='hiera_x' is not a sam2 architecture: use one of hiera_t, "
                        "hiera_s, hiera_b\\+, hiera_l"),
    ("sam", "", "is a SAM 2.1 hiera_t checkpoint, not a sam one: set MODEL_NAME=sam2.1 SAM_CONFIG=hiera_t"),
])
def test_sam2_wrong_settings_are_one_sentence(sam2_checkpoint: Path, model_name: str, config: str,
                                              message: str) -> None:
    with pytest.raises(SamLoadError, match=message) as caught:
        load_sam(model_name, config, sam2_checkpoint, "cpu")
    assert "\n" not in str(caught.value)


def test_sam2_without_its_package_says_how_to_install(sam2_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(SamLoadError, match="MODEL_NAME \\(model_name\\)=sam2 needs the optional 'sam2' package.*: "
                                           "pip install sam2"):
        load_sam("sam2", "", sam2_checkpoint, "cpu")


def test_default_sam2_checkpoint_is_tiny_on_cpu_and_large_on_cuda(tmp_path: Path) -> None:
    for name in ("sam2.1_hiera_tiny.pt", "sam2.1_l.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_checkpoint("", tmp_path, "sam2", "", "cpu").name == "sam2.1_hiera_tiny.pt"
    assert resolve_checkpoint("", tmp_path, "sam2.1", "", "cuda:0").name == "sam2.1_l.pt"  # Ultralytics' name
    with pytest.raises(SamLoadError, match="holds neither sam2.1_hiera_small.pt nor sam2.1_s.pt, SAM 2.1's hiera_s "
                                           "for cpu: download https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
                                           "sam2.1_hiera_small.pt into it"):
        resolve_checkpoint("", tmp_path, "sam2", "hiera_s", "cpu")
    with pytest.raises(SamLoadError, match="is empty: set it to a SAM checkpoint"):
        resolve_checkpoint("", tmp_path, "sam", "", "cpu")


def test_mobile_sam_answers_like_sam_predictor(tmp_path: Path, bus: np.ndarray) -> None:
    """MobileSAM's own SamPredictor is segment-anything's, around the TinyViT encoder."""
    torch.manual_seed(0)
    torch.save(mobile_sam_network().state_dict(), tmp_path / "mobile_sam.pt")
    model = load_sam("mobile_sam", "vit_t", tmp_path / "mobile_sam.pt", "cpu")
    sam = SamSegmenter(model, MemoryEmbeddings(2), None)
    predictor = SamPredictor(model.network)
    predictor.set_image(bus)
    positive = np.array([1])
    assert_same(sam.masks(bus, CLICK, positive, None, multimask=True),
                predictor.predict(CLICK, positive, multimask_output=True))
    assert_same(sam.masks(bus, CLICK, positive, BOX, multimask=False),
                predictor.predict(CLICK, positive, box=BOX, multimask_output=False))


def test_label_studio_click_and_box_through_the_app_with_sam2_1(sam2_checkpoint: Path, image_root: Path,
                                                                 tmp_path: Path) -> None:
    settings = demo_settings(image_root, tmp_path / "cache", model_name="sam2", sam_checkpoint_file=str(sam2_checkpoint),
                             out_mask="true", out_poly="true", out_bbox="true")
    app = SamApp(build_services(settings))
    try:
        network = app.services.interactive.segmenter.model.network
        assert app.services.interactive.describe().startswith(f"SAM sam2.1:hiera_t from {sam2_checkpoint}")
        pixels = pixels_of("bus.jpg")
        height, width = pixels.shape[:2]
        predictor = SAM2ImagePredictor(network)
        predictor.set_image(pixels)
        points = np.array([[0.405 * width, 0.552 * height], [0.2 * width, 0.8 * height]])
        expected = predictor.predict(points, np.array([1, 0]), multimask_output=False)[0][0].astype(bool)
        assert_regions_show(app.predict(interactive_request("predict-interactive-points.json", "bus.jpg")),
                            expected, "bus")
        pixels = pixels_of("zidane.jpg")
        height, width = pixels.shape[:2]
        predictor.set_image(pixels)
        box = np.array([0.05 * width, 0.2 * height, 0.95 * width, 0.75 * height])
        expected = predictor.predict(box=box, multimask_output=False)[0][0].astype(bool)
        assert_regions_show(app.predict(interactive_request("predict-interactive-rectangle.json", "zidane.jpg")),
                            expected, "bus")
    finally:
        app.client.close()
