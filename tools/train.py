"""Label Studio JSON export -> YOLO dataset -> fine-tuned YOLO model with a model card, on this machine.

    python -m tools.train --json_file_path export.json --model yolov8n-seg.pt --out_dir runs/x \\
        [--label_config config.xml] [--epochs 50] [--imgsz 640] [--batch 16] [--device cpu|cuda:0] [image options]

The same pipeline the backend runs on "Start Training": the dataset is written as tools.ls_to_yolo
writes it (latest non-cancelled annotation per task, seeded train/val split) into OUT/dataset, the model is
fine-tuned from --model (its head is rebuilt for the export's labels, which become the model's class
names), then it and --model are scored on the val split (mAP50-95; masks for a segmentation model, keypoints
for pose, rotated boxes for OBB; top-1 accuracy for classification: the dataset follows --model's task). Writes
OUT/model.pt and OUT/card.json. To serve it, copy model.pt into MODEL_ROOT and name it in `model_path`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from formats.conversion import ConversionError, ConvertOptions
from formats.ls_export import Selection, parse_class_list
from formats.yolo_dataset import YoloOptions, export_yolo
from tools.convert_to_rle_mask_coco import EXIT_ERROR, add_image_source_arguments, add_selection_arguments, image_sources_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_file_path", type=Path, required=True, help="the Label Studio JSON export")
    parser.add_argument("--model", required=True, help="starting weights (.pt), e.g. yolov8n-seg.pt")
    parser.add_argument("--out_dir", type=Path, required=True, help="output folder (dataset/, model.pt, card.json)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs (default 50; on CPU try 5-20)")
    parser.add_argument("--imgsz", type=int, default=640, help="image size (default 640; on CPU try 160-320)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: half the cores)")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of images for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    add_selection_arguments(parser)
    add_image_source_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        card = train_from_export(args)
    except (ConversionError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"{card['model']}: mAP50-95 {card['map_new']} (--model {card['map_previous']}) on the val split; "
          f"card: {Path(card['model']).with_name('card.json')}")
    return 0


def train_from_export(args: argparse.Namespace) -> dict:
    from backend.models.cache import select_device
    from backend.training import trainer

    started = time.monotonic()
    base = Path(args.model)
    if not base.is_file():
        raise FileNotFoundError(f"--model '{args.model}' does not exist (offline, Ultralytics cannot download it)")
    if args.epochs < 1 or args.batch < 1 or args.imgsz < 32 or args.imgsz % 32:
        raise ValueError("--epochs and --batch must be at least 1, --imgsz a multiple of 32")
    task = _model_task(base)  # detect, segment, classify, pose (needs --label_config) or obb
    dataset_dir = args.out_dir / "dataset"
    convert = ConvertOptions(json_file_path=args.json_file_path, out_dir=dataset_dir,
                             classes=tuple(parse_class_list(args.classes)), label_config=args.label_config,
                             selection=Selection(use_predictions=args.predictions, all_annotations=args.all_annotations),
                             image_key=args.image_key, sources=image_sources_from_args(args), progress=True)
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    summary = export_yolo(YoloOptions(convert, task=task, val_fraction=args.val_fraction, seed=args.seed))
    print(summary.report(), file=sys.stderr)
    if summary.tasks_converted < 2:
        raise ValueError(f"{summary.tasks_converted} image(s) in the export: at least 2 are needed (train and val)")
    threads = trainer.limit_resources(args.threads, niceness=0)
    device = args.device or select_device("auto")
    options = trainer.TrainOptions(args.epochs, args.imgsz, args.batch, device, threads)
    work = args.out_dir / "work"
    data_yaml = dataset_dir / "data.yaml"
    weights = trainer.train(base, data_yaml, work, options,
                            lambda epoch, epochs: print(f"epoch {epoch} of {epochs}", file=sys.stderr), task)
    classes = summary.categories
    new = trainer.score(weights, data_yaml, task, lambda name: name if name in classes else None, work, options)
    by_lower = {name.lower(): name for name in classes}
    previous = trainer.score(base, data_yaml, task, lambda name: by_lower.get(name.lower()), work, options)
    shutil.copyfile(weights, args.out_dir / "model.pt")
    shutil.rmtree(work, ignore_errors=True)
    card = {"model": str(args.out_dir / "model.pt"), "task": task, "base_model": base.name, "classes": classes,
            "images": summary.tasks_converted, "annotations": summary.annotations_used, "epochs": args.epochs,
            "imgsz": args.imgsz, "device": device, "map_new": round(new.map50_95, 4),
            "map_previous": round(previous.map50_95, 4), "map_previous_note": previous.note,
            "seconds": round(time.monotonic() - started, 1), "export": str(args.json_file_path)}
    (args.out_dir / "card.json").write_text(json.dumps(card, indent=1))
    return card


def _model_task(weights: Path) -> str:
    from ultralytics import YOLO

    return str(YOLO(str(weights)).task)


if __name__ == "__main__":
    raise SystemExit(main())
