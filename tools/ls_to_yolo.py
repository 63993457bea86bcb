"""Label Studio JSON export -> Ultralytics YOLO dataset (detection, segmentation, classification, pose, OBB).

    python -m tools.ls_to_yolo --json_file_path export.json --out_dir OUT [--task detect|segment|classify|pose|obb] \\
        [--from_name CONTROL ...] [--val_fraction 0.2] [--seed 0] [--classes ...] [image options as convert_to_rle_mask_coco]

Writes OUT/images/{train,val}, OUT/labels/{train,val} and OUT/data.yaml (train with
`yolo train data=OUT/data.yaml`). Detection labels are the boxes around every region (rotated
rectangles, polygons and brush masks included); segmentation labels are polygons: Label Studio
polygons as drawn, rectangles as their four corners, brush masks outlined with the backend's
`mask_to_polygons` (one line per separate part). An object drawn by several controls (a config
with RectangleLabels, PolygonLabels and BrushLabels for the same labels) is labelled once, from
the most precise kind for the task (see formats/region_choice.py); `--from_name` picks controls.
The split is a seeded shuffle of the images. Tasks whose image is missing are skipped (a YOLO
dataset needs the pixels). `--task classify|pose|obb` (Choices, KeyPointLabels with their boxes,
rotated rectangles) are written by formats/yolo_task_dataset.py; pose needs `--label_config`, whose
model_index attributes number the keypoints.

The conversion is formats/yolo_dataset.py; from Python, its `write_yolo_dataset(tasks, out_dir, ...)`
writes a dataset from task dicts (an export, or tasks read through the Label Studio API).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from formats.conversion import ConversionError, ConvertOptions
from formats.ls_export import Selection, parse_class_list
from formats.yolo_dataset import TASKS, YoloOptions, export_yolo
from tools.convert_to_rle_mask_coco import (add_image_source_arguments, add_selection_arguments, image_sources_from_args,
                                            run_and_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.ls_to_yolo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_file_path", type=Path, required=True, help="the Label Studio JSON export")
    parser.add_argument("--out_dir", type=Path, required=True, help="output folder (images/, labels/, data.yaml)")
    parser.add_argument("--task", choices=TASKS, default="segment",
                        help="label format (default: segment); classify: Choices, pose: KeyPointLabels (needs "
                             "--label_config), obb: rectangles as rotated boxes")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of images for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    parser.add_argument("--polygon_tolerance", type=float, default=0.5,
                        help="simplification of brush mask outlines, in pixels (default 0.5)")
    parser.add_argument("--from_name", nargs="+", default=[], metavar="CONTROL",
                        help="use only regions of these control tags (their name= in the labeling config). Default: "
                             "every control, each object once, from the most precise kind for --task")
    add_selection_arguments(parser)
    add_image_source_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = ConvertOptions(
        json_file_path=args.json_file_path, out_dir=args.out_dir, classes=tuple(parse_class_list(args.classes)),
        label_config=args.label_config,
        selection=Selection(use_predictions=args.predictions, all_annotations=args.all_annotations),
        image_key=args.image_key, sources=image_sources_from_args(args), progress=True)
    options = YoloOptions(base, task=args.task, val_fraction=args.val_fraction, seed=args.seed,
                          polygon_tolerance=args.polygon_tolerance, from_names=tuple(args.from_name))
    return run_and_report(lambda: export_yolo(options), args.strict, ConversionError)


if __name__ == "__main__":
    raise SystemExit(main())
