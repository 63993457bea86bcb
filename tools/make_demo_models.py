"""Train the small demo models on synthetic shapes, on CPU, in minutes.

    python -m tools.make_demo_models [--out models] [--only det seg sam]

Writes `demo-shapes-det.pt` (YOLOv8n detection) and `demo-shapes-seg.pt` (YOLOv8n segmentation),
trained from scratch on the deterministic shapes dataset of `tools.shapes_dataset`, plus the tiny
SAM of `tools.tiny_sam`. The repository commits the results so tests and the offline demo need no
download; rerun this to reproduce them.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from tools.shapes_dataset import write_yolo_dataset

DEFAULT_OUT = Path("models")
YOLO_RECIPES = {
    "det": ("yolov8n.yaml", "demo-shapes-det.pt"),
    "seg": ("yolov8n-seg.yaml", "demo-shapes-seg.pt"),
}


def train_yolo(kind: str, data_yaml: Path, out_dir: Path, workdir: Path, epochs: int, imgsz: int) -> Path:
    from ultralytics import YOLO

    architecture, file_name = YOLO_RECIPES[kind]
    model = YOLO(architecture)
    model.train(data=str(data_yaml), imgsz=imgsz, epochs=epochs, batch=16, device="cpu", workers=2,
                seed=0, deterministic=True, plots=False, amp=False, project=str(workdir), name=kind,
                exist_ok=True, verbose=False)
    target = out_dir / file_name
    shutil.copyfile(workdir / kind / "weights" / "best.pt", target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the weights (default: models)")
    parser.add_argument("--only", nargs="+", choices=["det", "seg", "sam"], default=["det", "seg", "sam"])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--images", type=int, default=300, help="training images (plus 60 for validation)")
    parser.add_argument("--imgsz", type=int, default=160)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-shapes-") as tmp:
        workdir = Path(tmp)
        yolo_kinds = [k for k in args.only if k in YOLO_RECIPES]
        if yolo_kinds:
            data_yaml = write_yolo_dataset(workdir / "data", n_train=args.images, n_val=60, size=args.imgsz)
            for kind in yolo_kinds:
                print(f"wrote {train_yolo(kind, data_yaml, args.out, workdir / 'runs', args.epochs, args.imgsz)}")
        if "sam" in args.only:
            from tools.tiny_sam import train_tiny_sam

            print(f"wrote {train_tiny_sam(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
