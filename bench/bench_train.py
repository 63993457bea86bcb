"""Training on the demo data: time per epoch, the whole job, and /predict latency while it trains vs idle.

    python -m bench.bench_train [--images 40] [--epochs 5] [--imgsz 160] [--batch 8] [--threads 0] [--requests 20]

A training job for a project of `--images` demo shapes images (renamed disc/box/wedge, polygon
annotations served by a Label Studio stand-in on 127.0.0.1) runs as the backend runs it: a child process
at lower priority with TRAIN_THREADS threads. /predict (one 160x160 image, PolygonLabels, the demo
segmentation model) is timed first idle, then in a loop for as long as the job runs: the printed ratio
is the median latency during training over the median idle latency (target <= 1.5 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from backend.serving.app import build_services, create_app
from backend.sources.label_studio import Credentials
from backend.settings import Settings
from backend.training.jobs import FINISHED
from backend.training.service import TrainingService
from tests.training_stand_in import TOKEN, TrainingLabelStudio, shapes_png

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CONFIG = ("<View><Image name=\"image\" value=\"$image\"/><PolygonLabels name=\"poly\" toName=\"image\">"
          "<Label value=\"circle\"/><Label value=\"square\"/><Label value=\"triangle\"/></PolygonLabels></View>")
PROJECT = 1


def predict_once(client: TestClient) -> float:
    body = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=probe.png"}}], "label_config": CONFIG,
            "project": "2.1"}  # another project: served by the start-up model all along
    started = time.perf_counter()
    response = client.post("/predict", json=body)
    response.raise_for_status()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="TRAIN_THREADS (0: half the cores)")
    parser.add_argument("--requests", type=int, default=20, help="idle /predict requests to time")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        root, images = work / "models", work / "images"
        root.mkdir()
        images.mkdir()
        for name in ("demo-shapes-det.pt", "demo-shapes-seg.pt"):
            shutil.copyfile(MODELS_DIR / name, root / name)
        (images / "probe.png").write_bytes(shapes_png(7000))
        settings = Settings.load({
            "model_root": str(root), "yolo_det_model": "demo-shapes-det.pt", "yolo_seg_model": "demo-shapes-seg.pt",
            "cache_dir": str(work / "cache"), "local_files_document_root": str(images), "device": "cpu",
            "train_epochs": args.epochs, "train_imgsz": args.imgsz, "train_batch": args.batch,
            "train_threads": args.threads, "train_min_images": 2}, environ={})
        with TrainingLabelStudio(PROJECT, range(6000, 6000 + args.images)) as ls, \
                TestClient(create_app(settings, build_services(settings))) as client:
            for _ in range(3):
                predict_once(client)  # warm-up: model load, first-call allocations
            idle = [predict_once(client) for _ in range(args.requests)]
            service = TrainingService(settings)
            epoch_times: dict[int, float] = {}
            started = time.perf_counter()
            service.trigger(PROJECT, "bench", Credentials(ls.url, TOKEN))
            during: list[float] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    state = service.board.state(PROJECT)
                    if state.get("phase") == "training":
                        epoch_times.setdefault(int(state.get("epoch") or 0), time.perf_counter())
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            while service.board.state(PROJECT).get("state") not in FINISHED:
                if service.board.state(PROJECT).get("phase") == "training":
                    during.append(predict_once(client))
                else:
                    time.sleep(0.05)
            job_seconds = time.perf_counter() - started
            stop.set()
            watcher.join()
            state = service.board.state(PROJECT)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    marks = [epoch_times[k] for k in sorted(epoch_times)]
    per_epoch = [b - a for a, b in zip(marks, marks[1:])]
    print(f"job: {state.get('state')}: {state.get('message')}")
    print(f"{args.images} images, {args.epochs} epochs at {args.imgsz} px, batch {args.batch}, "
          f"TRAIN_THREADS={args.threads or 'auto'}")
    if per_epoch:
        print(f"time per epoch: median {statistics.median(per_epoch):.2f} s (min {min(per_epoch):.2f}, "
              f"max {max(per_epoch):.2f}; epochs timed {len(per_epoch)})")
    print(f"end-to-end job (webhook trigger to promoted model): {job_seconds:.1f} s")
    idle_ms, during_ms = statistics.median(idle) * 1000, statistics.median(during) * 1000 if during else float("nan")
    print(f"/predict median idle {idle_ms:.1f} ms ({len(idle)} requests), during training {during_ms:.1f} ms "
          f"({len(during)} requests): ratio {during_ms / idle_ms:.2f}x")


if __name__ == "__main__":
    main()
