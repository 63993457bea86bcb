"""python -m tools.train: export -> dataset -> fine-tuned model -> model card, and its error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.training_stand_in import RENAMED, TRAINING_CONFIG, annotated_task, shapes_png
from tools.convert_to_rle_mask_coco import EXIT_ERROR

SEEDS = range(6000, 6012)


def write_export(directory: Path) -> tuple[Path, Path]:
    images = directory / "images"
    images.mkdir()
    for seed in SEEDS:
        (images / f"shapes-{seed}.png").write_bytes(shapes_png(seed))
    export = directory / "export.json"
    export.write_text(json.dumps([annotated_task(100 + i, seed, f"/data/upload/1/shapes-{seed}.png")
                                  for i, seed in enumerate(SEEDS)]))
    config = directory / "config.xml"
    config.write_text(TRAINING_CONFIG)
    return export, images


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.train", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_export_to_trained_model_and_card(tmp_path: Path) -> None:
    export, images = write_export(tmp_path)
    out = tmp_path / "run"
    result = run_tool("--json_file_path", str(export), "--model", str(MODELS_DIR / DEMO_SEG), "--out_dir", str(out),
                      "--label_config", str(tmp_path / "config.xml"), "--image_root", str(images), "--epochs", "1",
                      "--imgsz", "160", "--batch", "8", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    assert card["classes"] == list(RENAMED) and card["task"] == "segment" and card["images"] == len(SEEDS)
    assert card["map_previous"] == 0.0 and 0.0 <= card["map_new"] <= 1.0
    assert result.stdout.strip().splitlines()[-1].startswith(f"{out / 'model.pt'}: mAP50-95 {card['map_new']}")
    from ultralytics import YOLO

    assert list(YOLO(str(out / "model.pt")).names.values()) == list(RENAMED)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "dataset", "model.pt"]


def test_error_exits(tmp_path: Path) -> None:
    export, images = write_export(tmp_path)
    missing = run_tool("--json_file_path", str(export), "--model", str(tmp_path / "none.pt"), "--out_dir", str(tmp_path / "o"))
    assert missing.returncode == EXIT_ERROR and "none.pt' does not exist" in missing.stderr
    no_images = run_tool("--json_file_path", str(export), "--model", str(MODELS_DIR / DEMO_SEG), "--out_dir",
                         str(tmp_path / "o"), "--image_root", str(tmp_path / "nowhere"), "--ls_data_dir", str(tmp_path))
    assert no_images.returncode == EXIT_ERROR and "0 image(s) in the export" in no_images.stderr
    assert "Traceback" not in missing.stderr + no_images.stderr
