"""Train the tiny pose, OBB and classification demo models on synthetic shapes, on CPU, in minutes.

    python -m tools.make_task_demo_models [--out models] [--only pose obb cls] [--minutes 6 | --epochs N]

Writes `demo-shapes-pose.pt` (YOLOv8n-pose: triangle and square corners as keypoints),
`demo-shapes-obb.pt` (YOLOv8n-obb: rotated rectangles and ellipses) and `demo-shapes-cls.pt`
(YOLOv8n-cls: the dominant circle, square or triangle), trained on the deterministic data of
`tools.shapes_tasks` starting from the demo detector's layers (`--start_from`), then measured on
held-out pictures; the metrics are merged into `models/demo-shapes-task-metrics.json`. The
repository commits the results; rerun this to reproduce them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from tools.shapes_tasks import write_classify_dataset, write_obb_dataset, write_pose_dataset

DEFAULT_OUT = Path("models")
RECIPES = {  # kind: (architecture, weights file, dataset writer)
    "pose": ("yolov8n-pose.yaml", "demo-shapes-pose.pt", write_pose_dataset),
    "obb": ("yolov8n-obb.yaml", "demo-shapes-obb.pt", write_obb_dataset),
    "cls": ("yolov8n-cls.yaml", "demo-shapes-cls.pt", write_classify_dataset),
}
HELD_OUT_SEED = 50_000  # validation pictures for the stated metrics, never trained on


def train(kind: str, out_dir: Path, workdir: Path, n_train: int, imgsz: int, minutes: float,
          start_from: Path | None = None, epochs: int | None = None) -> Path:
    from ultralytics import YOLO

    architecture, file_name, write = RECIPES[kind]
    data = write(workdir / f"data-{kind}", n_train=n_train, n_val=60, size=imgsz)
    model = YOLO(architecture)
    if start_from is not None:  # a detector trained on the same shapes: its backbone and neck transfer
        model.load(str(start_from))
    # Without `epochs`, `time` (hours) caps the run whatever the epoch count: the CPU is shared. A fixed epoch
    # count gives the same run on any machine (the time cap stretches the schedule to the machine's speed).
    schedule = {"epochs": epochs} if epochs else {"epochs": 40, "time": minutes / 60}
    model.train(data=str(data), imgsz=imgsz, **schedule, batch=16, device="cpu", workers=2,
                seed=0, deterministic=True, plots=False, amp=False, project=str(workdir / "runs"), name=kind,
                exist_ok=True, verbose=False, fliplr=0.0 if kind == "pose" else 0.5)
    target = out_dir / file_name
    shutil.copyfile(workdir / "runs" / kind / "weights" / "best.pt", target)
    return target


def measure(kind: str, weights: Path, workdir: Path, imgsz: int) -> dict[str, float]:
    """Metrics on 200 held-out pictures (seeds from HELD_OUT_SEED)."""
    from ultralytics import YOLO

    _, _, write = RECIPES[kind]
    # Ultralytics wants a train split to exist: one picture, unused.
    data = write(workdir / f"heldout-{kind}", n_train=1, n_val=200, size=imgsz, seed=HELD_OUT_SEED)
    metrics = YOLO(str(weights)).val(data=str(data), imgsz=imgsz, batch=16, device="cpu", plots=False, verbose=False,
                                     project=str(workdir / "val"), name=kind)
    if kind == "cls":
        return {"top1": round(float(metrics.top1), 4), "top5": round(float(metrics.top5), 4)}
    values = {"box_map50": round(float(metrics.box.map50), 4), "box_map50_95": round(float(metrics.box.map), 4)}
    if kind == "pose":
        values |= {"pose_map50": round(float(metrics.pose.map50), 4), "pose_map50_95": round(float(metrics.pose.map), 4)}
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the weights (default: models)")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--images", type=int, default=400, help="training pictures (plus 60 for validation)")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--minutes", type=float, default=6.0, help="training time per model")
    parser.add_argument("--epochs", type=int, help="train exactly this many epochs instead of --minutes")
    parser.add_argument("--measure_only", action="store_true", help="measure the weights in --out, train nothing")
    parser.add_argument("--start_from", type=Path, default=Path("models/demo-shapes-det.pt"),
                        help="weights whose matching layers start the training (the demo detector); 'none': from scratch")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics_file = args.out / "demo-shapes-task-metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="demo-shapes-tasks-") as tmp:
        for kind in args.only:
            weights = (args.out / RECIPES[kind][1] if args.measure_only
                       else train(kind, args.out, Path(tmp), args.images, args.imgsz, args.minutes,
                                  None if str(args.start_from) == "none" else args.start_from, args.epochs))
            metrics[weights.name] = measure(kind, weights, Path(tmp), args.imgsz)
            metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            print(f"wrote {weights}: {metrics[weights.name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
