"""Folder -> COCO + Label Studio tasks through the backend's own models and predictor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from backend.serving.app import build_services
from formats.geometry import mask_iou
from formats.rle import ls_rle_alpha
from formats.label_config import parse_label_config
from tests.conftest import DEMO_DET, DEMO_SEG, MODELS_DIR
from tools.annotate_dir import annotate, main
from tools.annotate_options import AnnotateError, AnnotateOptions, annotate_settings, label_config_xml, local_files_url
from tools.shapes_dataset import CLASS_NAMES, generate_image

SEEDS = range(6000, 6006)
DEMO_SAM = MODELS_DIR / "demo-tiny-sam.pt"


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes images (one in a subfolder, one name with a space), an unreadable file, a hidden folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    (root / ".thumbs").mkdir()
    for seed in SEEDS:
        folder = root / "sub" if seed % 3 == 0 else root
        cv2.imwrite(str(folder / f"shape {seed}.png"), generate_image(seed).image)
    cv2.imwrite(str(root / ".thumbs" / "hidden.png"), generate_image(1).image)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return root


def seed_of(file_name: str) -> int:
    return int(Path(file_name).stem.split()[-1])


def test_masks_are_exactly_the_backends_predictions_and_tasks_import_into_label_studio(images_dir: Path, tmp_path: Path) -> None:
    options = AnnotateOptions(images_dir, out_dir=tmp_path / "out", model=str(MODELS_DIR / DEMO_SEG), shape="masks",
                              overrides=(("model_score_threshold", "0.25"), ("cache_dir", str(tmp_path / "cache"))),
                              ls_tasks=tmp_path / "tasks.json", ls_root=images_dir.parent, batch=4)
    summary = annotate(options, environ={})

    coco = COCO(str(tmp_path / "out" / "annotations" / "instances_default.json"))
    assert sorted(image["file_name"] for image in coco.imgs.values()) == sorted(
        str(p.relative_to(images_dir)) for p in images_dir.rglob("shape *.png"))
    assert [c["name"] for c in coco.dataset["categories"]] == list(CLASS_NAMES)
    assert summary.tasks_skipped == {"unreadable image": 1} and "broken.jpg" in summary.report()

    # The same predictions straight from the backend, for the same images.
    settings = annotate_settings(options, environ={})
    services = build_services(settings)
    config = parse_label_config(label_config_xml(list(CLASS_NAMES), "masks"))
    found = 0
    for image in coco.imgs.values():
        task = {"id": 1, "data": {"image": local_files_url(image["file_name"])}}
        (prediction,) = services.predictor.predict([task], config, None, "v")
        expected = [ls_rle_alpha(r["value"]["rle"], r["original_width"], r["original_height"]) > 0 for r in prediction["result"]]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(annotations) == len(expected)
        for ann, mask in zip(annotations, expected):
            assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
        truth = generate_image(seed_of(image["file_name"])).instances
        found += sum(max((mask_iou(m, t.mask) for m in expected), default=0) > 0.5 for t in truth)
    n_truth = sum(len(generate_image(seed).instances) for seed in SEEDS)
    assert found >= n_truth / 2  # predictions belong to their own images

    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == len(coco.imgs)
    for ls_task in tasks:
        assert ls_task["data"]["image"].startswith(f"/data/local-files/?d={images_dir.name}/")
        (prediction,) = ls_task["predictions"]
        assert {r["type"] for r in prediction["result"]} <= {"brushlabels"} and prediction["model_version"]


def test_settings_file_and_polygons_for_segmentation_models_by_default(images_dir: Path, tmp_path: Path) -> None:
    settings_file = tmp_path / "config.toml"
    settings_file.write_text(f'model_root = "{MODELS_DIR}"\nyolo_seg_model = "{DEMO_SEG}"\n'
                             f'model_score_threshold = 0.25\ncache_dir = "{tmp_path / "cache"}"\n')
    code = main([str(images_dir), "--config", str(settings_file), "--out_dir", str(tmp_path / "out"), "--batch", "2"])

    coco = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    assert code == 0 and coco["annotations"]
    assert all(isinstance(ann["segmentation"], list) and len(ann["segmentation"][0]) >= 6 for ann in coco["annotations"])
    assert main([str(images_dir), "--config", str(settings_file), "--out_dir", str(tmp_path / "strict"), "--strict"]) == 3


def test_detection_models_give_boxes_and_refuse_masks_without_sam(images_dir: Path, tmp_path: Path) -> None:
    base = AnnotateOptions(images_dir, out_dir=tmp_path / "out", model=str(MODELS_DIR / DEMO_DET),
                           overrides=(("cache_dir", str(tmp_path / "cache")),))
    summary = annotate(base, environ={})
    with pytest.raises(AnnotateError, match="is a detection model"):
        annotate(dataclasses.replace(base, shape="polygons"), environ={})
    with pytest.raises(AnnotateError, match="no images"):
        annotate(dataclasses.replace(base, images_dir=tmp_path / "out" / "annotations"), environ={})

    assert set(summary.regions) == {"rectangle"}
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    assert all(len(ann["segmentation"][0]) == 8 for ann in coco["annotations"])


@pytest.mark.skipif(not DEMO_SAM.is_file(), reason="models/demo-tiny-sam.pt not trained yet (tools.make_demo_models --only sam)")
def test_sam_turns_detection_boxes_into_masks(images_dir: Path, tmp_path: Path) -> None:
    options = AnnotateOptions(images_dir, out_dir=tmp_path / "out", model=str(MODELS_DIR / DEMO_DET), shape="masks",
                              sam_checkpoint=str(DEMO_SAM),
                              overrides=(("sam_config", "demo"), ("cache_dir", str(tmp_path / "cache"))))
    summary = annotate(options, environ={})
    assert set(summary.regions) == {"brush"}
