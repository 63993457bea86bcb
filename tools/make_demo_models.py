"""Train the small demo models on synthetic shapes, on CPU, and measure them on held-out images.

    python -m tools.make_demo_models [--out models] [--only seg det sam]

Writes `demo-shapes-seg.pt` (YOLOv8n segmentation, from scratch: architecture yaml, no downloaded weights,
seeded) and `demo-shapes-det.pt` (YOLOv8n detection, started from the segmentation model's backbone, neck
and box head, then tuned on boxes), both trained on `generate_image` pictures of `tools.shapes_dataset`,
the kind the tests and the demo use. Then it measures each model on held-out images, never trained or
validated on, and prints the figures and writes them to `demo-shapes-metrics.json` beside the weights:
box and mask mAP50 (Ultralytics' validator; masks both at the 1/4 resolution Ultralytics validates by
default and at full resolution, as the backend returns them) and, at the backend's default score
threshold 0.5, the recall of each class; also the same figures on `generate_varied_image` pictures
(other sizes, backgrounds and shape sizes the models were not trained for). Also writes the tiny SAM of
`tools.tiny_sam` (`--only sam`). The repository commits the results so tests and the offline demo
need no download; rerun this to reproduce them (the default recipe: about 50 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tools.shapes_dataset import (CLASS_NAMES, generate_image, generate_varied_image, write_data_yaml,
                                  write_yolo_dataset, write_yolo_split)

DEFAULT_OUT = Path("models")
METRICS_FILE = "demo-shapes-metrics.json"
YOLO_RECIPES = {  # in training order: detection starts from the segmentation model
    "seg": ("yolov8n-seg.yaml", "demo-shapes-seg.pt"),
    "det": ("yolov8n.yaml", "demo-shapes-det.pt"),
}
# Training and validation seeds start at 0 and stay far below these; tests/conftest.py uses 5000..5011.
HELD_OUT_SEEDS = range(5000, 5200)
DEFAULT_SCORE_THRESHOLD = 0.5  # backend.settings' MODEL_SCORE_THRESHOLD default
MATCH_IOU = 0.5


@dataclass(frozen=True)
class Recipe:
    seg_epochs: int = 40  # segmentation from scratch
    seg_tune_epochs: int = 10  # then segmentation again from those weights, without mosaic, at a fresh low rate
    det_epochs: int = 10  # detection, from the segmentation model's weights (the last half without mosaic)
    close_mosaic: int = 10  # last epochs of the first segmentation stage without mosaic
    images: int = 1000  # generate_image training pictures
    val_images: int = 100  # to pick the best epoch
    imgsz: int = 160
    seed: int = 0


def train_stage(architecture: str, start: Path | None, data_yaml: Path, epochs: int, close_mosaic: int,
                recipe: Recipe, workdir: Path, name: str) -> Path:
    """One Ultralytics training run; returns its best weights. `start` seeds every layer that fits."""
    from ultralytics import YOLO

    model = YOLO(architecture)
    if start is not None:
        model.load(str(start))
    model.train(data=str(data_yaml), imgsz=recipe.imgsz, epochs=epochs, close_mosaic=close_mosaic, batch=16,
                device="cpu", workers=2, seed=recipe.seed, deterministic=True, plots=False, amp=False,
                warmup_epochs=3 if start is None else 1, project=str(workdir), name=name, exist_ok=True,
                verbose=False)
    return workdir / name / "weights" / "best.pt"


def train_yolo(kind: str, data_yaml: Path, out_dir: Path, workdir: Path, recipe: Recipe) -> Path:
    """Segmentation learns from scratch (its box head learns boxes too), then again from those weights without
    mosaic at a fresh low rate; detection starts from the segmentation model (backbone, neck and box head: every
    layer the architectures share), so it needs few CPU epochs."""
    architecture, file_name = YOLO_RECIPES[kind]
    if kind == "seg":
        first = train_stage(architecture, None, data_yaml, recipe.seg_epochs, recipe.close_mosaic, recipe, workdir,
                            "seg")
        best = train_stage(architecture, first, data_yaml, recipe.seg_tune_epochs, recipe.seg_tune_epochs, recipe,
                           workdir, "seg-tune")
    else:
        segmenter = out_dir / YOLO_RECIPES["seg"][1]
        if not segmenter.is_file():
            raise SystemExit(f"{segmenter} is missing: the detection model starts from it (--only seg det)")
        best = train_stage(architecture, segmenter, data_yaml, recipe.det_epochs, recipe.det_epochs // 2, recipe,
                           workdir, "det")
    target = out_dir / file_name
    shutil.copyfile(best, target)
    return target


def write_held_out(root: Path) -> dict[str, Path]:
    """One dataset per picture kind, its val split the held-out seeds; returns their data.yaml paths."""
    yamls = {}
    for kind in ("shapes", "varied"):
        write_yolo_split(root / kind, "val", HELD_OUT_SEEDS, varied=kind == "varied")
        yamls[kind] = write_data_yaml(root / kind, train="images/val")
    return yamls


def evaluate(weights: Path, held_out: dict[str, Path], imgsz: int, workdir: Path) -> dict[str, dict[str, float]]:
    from ultralytics import YOLO

    metrics: dict[str, dict[str, float]] = {}
    for kind, data_yaml in held_out.items():
        figures: dict[str, float] = {}
        for native_masks in (False, True):
            # save_json makes the validator compare masks at full resolution (process_mask_native)
            result = YOLO(str(weights)).val(data=str(data_yaml), imgsz=imgsz, batch=16, device="cpu", plots=False,
                                            save_json=native_masks, verbose=False, project=str(workdir),
                                            name=f"{weights.stem}-{kind}", exist_ok=True)
            figures["box_map50"] = round(float(result.box.map50), 4)
            if hasattr(result, "seg"):
                key = "mask_map50_full_res" if native_masks else "mask_map50"
                figures[key] = round(float(result.seg.map50), 4)
            elif not native_masks:
                break
        figures.update(recall_at_threshold(weights, kind, imgsz))
        metrics[kind] = figures
    return metrics


def recall_at_threshold(weights: Path, kind: str, imgsz: int) -> dict[str, float]:
    """Share of each class's held-out objects found (same class, box IoU >= 0.5) at score >= 0.5."""
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.metrics import box_iou

    model = YOLO(str(weights))
    found, total = np.zeros(len(CLASS_NAMES)), np.zeros(len(CLASS_NAMES))
    for seed in HELD_OUT_SEEDS:
        sample = generate_varied_image(seed) if kind == "varied" else generate_image(seed)
        result = model.predict(sample.image, imgsz=imgsz, conf=DEFAULT_SCORE_THRESHOLD, device="cpu", verbose=False)[0]
        predicted_boxes, predicted_classes = result.boxes.xyxy.cpu(), result.boxes.cls.cpu().int()
        unmatched = torch.ones(len(predicted_classes), dtype=torch.bool)
        for inst in sample.instances:
            ys, xs = np.nonzero(inst.mask)
            truth = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            total[inst.class_id] += 1
            if not len(predicted_classes):
                continue
            candidates = box_iou(truth, predicted_boxes)[0] * ((predicted_classes == inst.class_id) & unmatched)
            best = int(candidates.argmax())
            if candidates[best] >= MATCH_IOU:
                unmatched[best] = False
                found[inst.class_id] += 1
    return {f"recall@{DEFAULT_SCORE_THRESHOLD}_{name}": round(float(found[i] / max(total[i], 1)), 4)
            for i, name in enumerate(CLASS_NAMES)}


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the weights (default: models)")
    parser.add_argument("--only", nargs="+", choices=["seg", "det", "sam"], default=["seg", "det", "sam"],
                        help="det alone starts from the segmentation model already in --out")
    parser.add_argument("--seg_epochs", type=int, default=defaults.seg_epochs, help="segmentation epochs from scratch")
    parser.add_argument("--seg_tune_epochs", type=int, default=defaults.seg_tune_epochs,
                        help="segmentation epochs from the first stage, without mosaic")
    parser.add_argument("--det_epochs", type=int, default=defaults.det_epochs,
                        help="detection epochs, from the segmentation model")
    parser.add_argument("--close_mosaic", type=int, default=defaults.close_mosaic,
                        help="last epochs of the first stage without mosaic augmentation")
    parser.add_argument("--images", type=int, default=defaults.images,
                        help=f"training images (default {defaults.images}; "
                             f"plus {defaults.val_images} to pick the best epoch)")
    parser.add_argument("--imgsz", type=int, default=defaults.imgsz)
    args = parser.parse_args(argv)
    recipe = Recipe(seg_epochs=args.seg_epochs, seg_tune_epochs=args.seg_tune_epochs, det_epochs=args.det_epochs,
                    close_mosaic=args.close_mosaic, images=args.images, imgsz=args.imgsz)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-shapes-") as tmp:
        workdir = Path(tmp)
        yolo_kinds = [k for k in YOLO_RECIPES if k in args.only]
        if yolo_kinds:
            data_yaml = write_yolo_dataset(workdir / "data", n_train=recipe.images, n_val=recipe.val_images,
                                           seed=recipe.seed)
            held_out = write_held_out(workdir / "held-out")
            metrics_path = args.out / METRICS_FILE
            report = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
            for kind in yolo_kinds:
                weights = train_yolo(kind, data_yaml, args.out, workdir / "runs", recipe)
                held_out_metrics = evaluate(weights, held_out, recipe.imgsz, workdir / "eval")
                report[weights.name] = {"recipe": asdict(recipe), "held_out_seeds": [HELD_OUT_SEEDS.start,
                                        HELD_OUT_SEEDS.stop - 1], "held_out": held_out_metrics}
                metrics_path.write_text(json.dumps(report, indent=2) + "\n")
                print(f"wrote {weights}: held-out {json.dumps(held_out_metrics)}; figures in {metrics_path}")
        if "sam" in args.only:
            from tools.tiny_sam import train_tiny_sam

            print(f"wrote {train_tiny_sam(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
