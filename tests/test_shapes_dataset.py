"""The synthetic shapes generator: fixed pictures for tests and the demo, varied ones for training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SHAPES_SEEDS
from tools.shapes_dataset import CLASS_NAMES, generate_image, generate_varied_image, main, write_yolo_dataset

# generate_image's pixels and masks for the tests' held-out seeds: the demo models, the tiny SAM and the
# tests' expectations all rest on them, so a change must be deliberate (retrain, rerun the quality tests).
HELD_OUT_DIGEST = "0306197ea3548de1b1637d087d08576a49dd96b3de7a189b8c392664bdaa7633"


def digest(seeds: range) -> str:
    hashed = hashlib.sha256()
    for seed in seeds:
        sample = generate_image(seed)
        hashed.update(sample.image.tobytes())
        for instance in sample.instances:
            hashed.update(bytes([instance.class_id]) + instance.mask.tobytes())
    return hashed.hexdigest()


def test_generate_image_is_unchanged_for_the_held_out_seeds() -> None:
    assert digest(SHAPES_SEEDS) == HELD_OUT_DIGEST


@pytest.mark.parametrize("seed", range(40))
def test_varied_images_are_reproducible_and_their_masks_are_the_visible_shapes(seed: int) -> None:
    sample, again = generate_varied_image(seed), generate_varied_image(seed)
    assert np.array_equal(sample.image, again.image)
    height, width = sample.image.shape[:2]
    assert 96 <= height <= 400 and 96 <= width <= 400
    assert sample.instances and all(0 <= inst.class_id < len(CLASS_NAMES) for inst in sample.instances)
    masks = np.stack([inst.mask for inst in sample.instances])
    assert masks.shape[1:] == (height, width)
    assert (masks.sum(axis=(1, 2)) >= 20).all() and (masks.sum(axis=0) <= 1).all()  # visible parts never overlap


def test_varied_images_vary() -> None:
    samples = [generate_varied_image(seed) for seed in range(60)]
    sizes = {sample.image.shape[:2] for sample in samples}
    assert len(sizes) == len(samples)
    assert {inst.class_id for sample in samples for inst in sample.instances} == set(range(len(CLASS_NAMES)))
    brightness = [float(sample.image.mean()) for sample in samples]
    assert min(brightness) < 80 and max(brightness) > 150


def test_dataset_mixes_both_kinds_with_one_label_file_per_picture(tmp_path: Path) -> None:
    data_yaml = write_yolo_dataset(tmp_path, n_train=3, n_val=2, n_varied_train=4, n_varied_val=1)
    assert "names:\n  0: circle\n  1: square\n  2: triangle" in data_yaml.read_text()
    for split, count in (("train", 7), ("val", 3)):
        images = sorted(p.stem for p in (tmp_path / "images" / split).glob("*.png"))
        labels = sorted(p.stem for p in (tmp_path / "labels" / split).glob("*.txt"))
        assert images == labels and len(images) == count
    varied = cv2.imread(str(tmp_path / "images" / "train" / "varied_00002.png"))
    assert np.array_equal(varied, generate_varied_image(2).image)
    first_line = (tmp_path / "labels" / "val" / "shapes_00003.txt").read_text().splitlines()[0].split()
    assert int(first_line[0]) == generate_image(3).instances[0].class_id and len(first_line) >= 7


def test_cli_writes_held_out_pictures_to_import(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "pics"), "--count", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["shapes_5000.png", "shapes_5001.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "pics" / "shapes_5001.png")), generate_image(5001).image)
    assert "wrote 2 pictures" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "none"), "--count", "0"])
    assert refused.value.code == 2 and "--count must be at least 1" in capsys.readouterr().err
