"""Backend /predict against calling Ultralytics directly, same model and images, side by side in one run.

    python bench/bench_predict.py [--model demo-shapes-seg.pt] [--image shapes|bus] [--imgsz 640] [--repeats 15]

The default image is a 640x640 synthetic shapes image the demo model knows (real models: use
`--model yolov8n-seg.pt --image bus`, Ultralytics' bus.jpg).
1. One image, a config with RectangleLabels + PolygonLabels + BrushLabels:
   the backend's /predict over HTTP (image read, inference, boxes, polygons and brush RLE, JSON)
   against `YOLO.predict(path, retina_masks=True)`; prints the median latency ratio (target <= 1.10).
2. 32 tasks in one /predict against Ultralytics' own batch predict over the same 32 files with the
   same batch size; prints the throughput ratio (target >= 0.9).
Runs alternate between the two sides so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from backend.app import build_services, create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from tools.shapes_dataset import generate_image  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(settings: Settings) -> tuple[str, uvicorn.Server]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, build_services(settings)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def label_config(class_names: list[str]) -> str:
    labels = "".join(f'<Label value="{name}"/>' for name in class_names)
    return ('<View><Image name="image" value="$image"/>'
            f'<RectangleLabels name="rect" toName="image">{labels}</RectangleLabels>'
            f'<PolygonLabels name="poly" toName="image">{labels}</PolygonLabels>'
            f'<BrushLabels name="brush" toName="image">{labels}</BrushLabels></View>')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-shapes-seg.pt", help="file in --model-root (default: the demo seg model)")
    parser.add_argument("--model-root", default=str(REPO_ROOT / "models"))
    parser.add_argument("--imgsz", type=int, default=640, help="inference size for both sides (a real model's 640)")
    parser.add_argument("--image", choices=["shapes", "bus"], default="shapes")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both sides")
    args = parser.parse_args()

    import torch
    import ultralytics
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"image_{i:02d}.jpg" for i in range(args.tasks)]
        for index, name in enumerate(names):
            if args.image == "bus":
                shutil.copyfile(Path(ultralytics.__file__).parent / "assets" / "bus.jpg", root / name)
            else:
                cv2.imwrite(str(root / name), generate_image(90_000 + index, size=640).image)
        settings = Settings.load({"model_root": args.model_root, "yolo_det_model": args.model, "yolo_seg_model": args.model,
                                  "yolo_imgsz": args.imgsz, "model_score_threshold": args.conf, "device": "cpu",
                                  "batch_size": args.batch_size, "local_files_document_root": str(root),
                                  "cache_dir": str(root / "cache"), "log_level": "WARNING"}, environ={})
        url, server = serve(settings)
        model = YOLO(str(Path(args.model_root) / args.model))
        config = label_config([model.names[i] for i in sorted(model.names)])
        http = httpx.Client(timeout=600)  # keep-alive, as Label Studio's requests session does
        direct_options = dict(conf=args.conf, imgsz=args.imgsz, retina_masks=True, device="cpu", verbose=False)

        def backend_call(task_names: list[str]) -> int:
            tasks = [{"id": i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(task_names)]
            response = http.post(f"{url}/predict", json={"tasks": tasks, "label_config": config})
            response.raise_for_status()
            return sum(len(r["result"]) for r in response.json()["results"])

        def direct_call(task_names: list[str]) -> int:
            found = 0
            for start in range(0, len(task_names), args.batch_size):
                chunk = [str(root / name) for name in task_names[start:start + args.batch_size]]
                found += sum(len(r.boxes) for r in model.predict(chunk, batch=len(chunk), **direct_options))
            return found

        def timed(call, *call_args) -> float:  # noqa: ANN001
            started = time.perf_counter()
            call(*call_args)
            return time.perf_counter() - started

        regions = backend_call(names[:1])
        detections = direct_call(names[:1])
        for _ in range(2):  # warm-up both sides
            backend_call(names[:1])
            direct_call(names[:1])
        # Ultralytics' CPU device setup lowers torch's thread count (to cores - 1) in whichever thread
        # sets up a predictor; give both sides the same count before measuring.
        torch.set_num_threads(args.threads)
        single_backend, single_direct = [], []
        for _ in range(args.repeats):
            single_backend.append(timed(backend_call, names[:1]))
            single_direct.append(timed(direct_call, names[:1]))
        batch_backend, batch_direct = [], []
        for _ in range(3):
            batch_backend.append(timed(backend_call, names))
            batch_direct.append(timed(direct_call, names))
        server.should_exit = True

    median_backend, median_direct = statistics.median(single_backend), statistics.median(single_direct)
    print(f"model {args.model} at imgsz {args.imgsz} on {settings.device}, torch threads {torch.get_num_threads()}")
    print(f"one image ({args.image}, {detections} detections -> {regions} regions: boxes, polygons, brush RLE)")
    print(f"  backend /predict median {median_backend * 1000:.1f} ms, Ultralytics predict median {median_direct * 1000:.1f} ms")
    print(f"  latency ratio backend/direct: {median_backend / median_direct:.3f} (target <= 1.10)")
    throughput_backend = args.tasks / statistics.median(batch_backend)
    throughput_direct = args.tasks / statistics.median(batch_direct)
    print(f"{args.tasks} tasks in one request, batch size {args.batch_size}")
    print(f"  backend {throughput_backend:.2f} images/s, Ultralytics batch predict {throughput_direct:.2f} images/s")
    print(f"  throughput ratio backend/direct: {throughput_backend / throughput_direct:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
