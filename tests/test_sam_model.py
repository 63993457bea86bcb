"""The SAM adapter: SamPredictor's answers exactly, the image encoder once per image, clear load errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor, sam_model_registry

from formats.geometry import mask_iou
from backend.serving.metrics import Metrics
from backend.models.sam import SamModel, SamSegmenter, load_sam
from backend.models.sam_embeddings import DiskEmbeddings, MemoryEmbeddings, image_key
from tests.conftest import MODELS_DIR, ultralytics_asset
from tools.shapes_dataset import generate_image
from tools.tiny_sam import interior_click

DEMO_SAM = MODELS_DIR / "demo-tiny-sam.pt"


@pytest.fixture(scope="module")
def demo_model() -> SamModel:
    return load_sam("sam", "demo", DEMO_SAM, "cpu")


@pytest.fixture(scope="module")
def bus() -> np.ndarray:
    return np.asarray(Image.open(ultralytics_asset("bus.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def shapes() -> tuple[np.ndarray, list[np.ndarray]]:
    sample = generate_image(5_100_000)
    return np.ascontiguousarray(sample.image[:, :, ::-1]), [inst.mask for inst in sample.instances]


def reference(model: SamModel, pixels: np.ndarray) -> SamPredictor:
    predictor = SamPredictor(model.network)
    predictor.set_image(pixels)
    return predictor


def segmenter(model: SamModel, disk: DiskEmbeddings | None = None, metrics: Metrics | None = None) -> SamSegmenter:
    on_lookup = (lambda result: metrics.embedding_cache.labels(result).inc()) if metrics else (lambda result: None)
    return SamSegmenter(model, MemoryEmbeddings(4), disk, on_lookup)


def assert_same_answer(ours: tuple[np.ndarray, np.ndarray], theirs: tuple) -> None:
    masks, scores = ours
    assert masks.shape == theirs[0].shape and masks.dtype == bool
    assert all(mask_iou(a, b) >= 0.999 for a, b in zip(masks, theirs[0]))
    np.testing.assert_allclose(scores, theirs[1], rtol=1e-5, atol=1e-6)


def test_demo_sam_answers_like_sam_predictor(demo_model: SamModel, bus: np.ndarray,
                                             shapes: tuple[np.ndarray, list[np.ndarray]]) -> None:
    for pixels, click, box in ((bus, [300.0, 620.0], [40.0, 220.0, 780.0, 800.0]),
                               (shapes[0], [80.0, 80.0], [10.0, 20.0, 120.0, 150.0])):
        sam = segmenter(demo_model)
        predictor = reference(demo_model, pixels)
        point, positive = np.array([click]), np.array([1])
        assert_same_answer(sam.masks(pixels, point, positive, None, multimask=True),
                           predictor.predict(point, positive, multimask_output=True))
        two = np.array([click, [5.0, 5.0]])
        assert_same_answer(sam.masks(pixels, two, np.array([1, 0]), None, multimask=False),
                           predictor.predict(two, np.array([1, 0]), multimask_output=False))
        assert_same_answer(sam.masks(pixels, None, None, np.array(box), multimask=False),
                           predictor.predict(box=np.array(box), multimask_output=False))
        assert_same_answer(sam.masks(pixels, point, positive, np.array(box), multimask=False),
                           predictor.predict(point, positive, box=np.array(box), multimask_output=False))
        boxes = np.array([box, [0.0, 0.0, 60.0, 60.0]])
        ours = sam.masks_for_boxes(pixels, boxes)
        for k in range(2):
            theirs = predictor.predict(box=boxes[k], multimask_output=False)[0][0]
            assert mask_iou(ours[k], theirs) >= 0.999
        assert sam.encoder_calls == 1


def test_best_mask_is_sam_predictors_best_scored_candidate(demo_model: SamModel, bus: np.ndarray,
                                                           shapes: tuple[np.ndarray, list[np.ndarray]]) -> None:
    # best_mask picks on the low-resolution logits and upscales only that candidate
    for pixels, clicks in ((bus, [[300.0, 620.0], [500.0, 300.0], [100.0, 900.0]]),
                           (shapes[0], [interior_click(mask) for mask in shapes[1]])):
        sam, predictor = segmenter(demo_model), reference(demo_model, pixels)
        for click in clicks:
            point, positive = np.array([click]), np.array([1])
            masks, scores, _ = predictor.predict(point, positive, multimask_output=True)
            mask, score = sam.best_mask(pixels, point, positive, None, multimask=True)
            assert np.array_equal(mask, masks[int(np.argmax(scores))])
            assert score == pytest.approx(float(scores.max()), rel=1e-5)
        box = np.array([10.0, 20.0, 300.0, 400.0])
        masks, scores, _ = predictor.predict(box=box, multimask_output=False)
        mask, score = sam.best_mask(pixels, None, None, box, multimask=False)
        assert np.array_equal(mask, masks[0]) and score == pytest.approx(float(scores[0]), rel=1e-5)


def test_a_negative_click_changes_the_mask_as_sam_does(demo_model: SamModel,
                                                       shapes: tuple[np.ndarray, list[np.ndarray]]) -> None:
    pixels, masks = shapes
    sam, predictor = segmenter(demo_model), reference(demo_model, pixels)
    points = np.array([interior_click(masks[0]), interior_click(masks[1])])  # one on each of two shapes
    with_negative = sam.masks(pixels, points, np.array([1, 0]), None, multimask=False)
    assert_same_answer(with_negative, predictor.predict(points, np.array([1, 0]), multimask_output=False))
    both_positive = sam.masks(pixels, points, np.array([1, 1]), None, multimask=False)
    assert mask_iou(with_negative[0][0], both_positive[0][0]) < 0.9, "the point's label must reach SAM"


def test_random_vit_b_answers_like_sam_predictor(bus: np.ndarray) -> None:
    torch.manual_seed(0)
    model = SamModel(sam_model_registry["vit_b"](), "cpu", "vit_b")
    sam, predictor = segmenter(model), reference(model, bus)
    point, positive = np.array([[400.0, 500.0]]), np.array([1])
    ours = sam.masks(bus, point, positive, None, multimask=True)
    assert_same_answer(ours, predictor.predict(point, positive, multimask_output=True))
    assert 0 < ours[0].mean() < 1, "a constant mask would make the comparison meaningless"
    box = np.array([50.0, 200.0, 760.0, 900.0])
    assert_same_answer(sam.masks(bus, point, positive, box, multimask=False),
                       predictor.predict(point, positive, box=box, multimask_output=False))
    assert sam.encoder_calls == 1


def test_a_second_click_does_not_run_the_encoder(demo_model: SamModel, bus: np.ndarray) -> None:
    metrics = Metrics()
    sam = segmenter(demo_model, metrics=metrics)
    for x in (100.0, 300.0, 500.0):
        sam.masks(bus, np.array([[x, 500.0]]), np.array([1]), None, multimask=True)
    assert sam.encoder_calls == 1
    assert metrics.embedding_cache.labels("miss")._value.get() == 1
    assert metrics.embedding_cache.labels("hit")._value.get() == 2
    sam.masks(np.ascontiguousarray(bus[::-1]), np.array([[10.0, 10.0]]), np.array([1]), None, multimask=True)
    assert sam.encoder_calls == 2, "a different image must get its own embedding"


def test_concurrent_clicks_on_a_new_image_embed_it_once(demo_model: SamModel, bus: np.ndarray,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sam = segmenter(demo_model)
    slow_embed = demo_model.embed

    def embed(pixels: np.ndarray):  # noqa: ANN202 - wraps SamModel.embed
        time.sleep(0.3)  # long enough for every thread to be waiting on the first one
        return slow_embed(pixels)

    monkeypatch.setattr(sam.model, "embed", embed)
    start = threading.Barrier(6)
    answers: list[np.ndarray] = []

    def click(x: float) -> None:
        start.wait()
        answers.append(sam.masks(bus, np.array([[x, 600.0]]), np.array([1]), None, multimask=True)[0])

    threads = [threading.Thread(target=click, args=(100.0 * k,)) for k in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 6 and sam.encoder_calls == 1


def test_least_recently_used_embeddings_are_evicted(demo_model: SamModel,
                                                    shapes: tuple[np.ndarray, list[np.ndarray]]) -> None:
    sam = SamSegmenter(demo_model, MemoryEmbeddings(2), None)
    images = [np.ascontiguousarray(np.roll(shapes[0], k, axis=1)) for k in range(3)]
    for pixels in images + [images[2], images[0]]:
        sam.embedding(pixels)
    assert sam.encoder_calls == 4  # images 0, 1, 2, then 0 again: it was the least recently used


def test_disk_cache_survives_a_new_instance(demo_model: SamModel, bus: np.ndarray, tmp_path: Path) -> None:
    point, positive = np.array([[300.0, 620.0]]), np.array([1])
    first = segmenter(demo_model, DiskEmbeddings(tmp_path, "model-a"))
    fresh = first.masks(bus, point, positive, None, multimask=True)
    files = list((tmp_path / "model-a").iterdir())
    assert [f.name for f in files] == [f"{image_key(bus)}.pt"], "one file, no temporary left behind"
    assert torch.load(files[0], weights_only=True)["features"].dtype == torch.float16

    restarted = segmenter(demo_model, DiskEmbeddings(tmp_path, "model-a"))
    cached = restarted.masks(bus, point, positive, None, multimask=True)
    assert restarted.encoder_calls == 0 and restarted.disk_hits == 1
    assert all(mask_iou(a, b) >= 0.99 for a, b in zip(cached[0], fresh[0]))  # fp16 on disk: nearly, not bit-exact

    other_model = segmenter(demo_model, DiskEmbeddings(tmp_path, "model-b"))
    other_model.embedding(bus)
    assert other_model.encoder_calls == 1, "another checkpoint must not reuse these embeddings"


def test_an_unreadable_disk_entry_is_recomputed(demo_model: SamModel, bus: np.ndarray, tmp_path: Path) -> None:
    disk = DiskEmbeddings(tmp_path, "model")
    (disk.directory / f"{image_key(bus)}.pt").write_bytes(b"truncated")
    sam = segmenter(demo_model, disk)
    sam.embedding(bus)
    assert sam.encoder_calls == 1
    assert segmenter(demo_model, DiskEmbeddings(tmp_path, "model")).embedding(bus).features.shape[0] == 1


def test_sam_hq_answers_like_its_own_predictor(bus: np.ndarray) -> None:
    hq = pytest.importorskip("segment_anything_hq")  # optional extra: pip install segment-anything-hq timm
    torch.manual_seed(0)
    network = hq.sam_model_registry["vit_tiny"](checkpoint=None).eval()
    sam = segmenter(SamModel(network, "cpu", "sam_hq:vit_tiny"))
    predictor = hq.SamPredictor(network)
    predictor.set_image(bus)
    point, positive, box = np.array([[300.0, 600.0]]), np.array([1]), np.array([50.0, 200.0, 700.0, 900.0])
    assert_same_answer(sam.masks(bus, point, positive, None, multimask=True),
                       predictor.predict(point, positive, multimask_output=True))
    assert_same_answer(sam.masks(bus, None, None, box, multimask=False), predictor.predict(box=box, multimask_output=False))
