"""Backend /predict against calling Ultralytics directly, same model and files, side by side in one run.

    python bench/bench_predict.py [--model demo-shapes-seg.pt] [--imgsz 640] [--repeats 9] [--tasks 32]
                                  [--only shapes,bus,crowded,shapes-batch,crowded-batch]

The backend side is `/predict` over HTTP with a RectangleLabels + PolygonLabels + BrushLabels config
(file read, EXIF, inference, boxes, polygons, brush RLE, JSON); the direct side is
`YOLO.predict(path, retina_masks=True)` on the same file, which gives the same boxes and masks.
Scenarios (targets on a 2-core CPU):
- shapes: one 640x640 synthetic shapes image (latency ratio <= 1.10)
- bus: Ultralytics' bus.jpg (810x1080, a real photo) (<= 0.6)
- crowded: a 1920x1080 synthetic image with 50 shapes (tools/crowded_shapes.py) (<= 0.6)
- shapes-batch: `--tasks` 640x640 images in one request against Ultralytics' batch predict with the
  same batch size (throughput ratio >= 0.9)
- crowded-batch: `--tasks` different 1920x1080 50-shape images in one request (>= 1.5); also the peak
  memory (RSS growth) of each side during the request.
Runs alternate between the two sides so machine noise hits both alike. Both sides use the process'
torch threads: set OMP_NUM_THREADS to compare thread counts.
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
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import uvicorn  # noqa: E402

from backend.serving.app import build_services, create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from tools.crowded_shapes import crowded_image  # noqa: E402
from tools.shapes_dataset import generate_image  # noqa: E402

SINGLE = {"shapes": 1.10, "bus": 0.6, "crowded": 0.6}  # latency ratio targets (at most)
BATCH = {"shapes-batch": 0.9, "crowded-batch": 1.5}  # throughput ratio targets (at least)


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


def write_images(root: Path, tasks: int) -> dict[str, list[str]]:
    """File names per scenario, written under root."""
    import ultralytics

    files: dict[str, list[str]] = {"bus": ["bus.jpg"], "shapes": [], "crowded": []}
    shutil.copyfile(Path(ultralytics.__file__).parent / "assets" / "bus.jpg", root / "bus.jpg")
    for index in range(tasks):
        files["shapes"].append(f"shapes_{index:02d}.jpg")
        cv2.imwrite(str(root / files["shapes"][-1]), generate_image(90_000 + index, size=640).image)
        files["crowded"].append(f"crowded_{index:02d}.jpg")
        cv2.imwrite(str(root / files["crowded"][-1]), crowded_image(index))
    return files


class PeakMemory:
    """Peak resident memory growth of this process while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakMemory:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo-shapes-seg.pt", help="file in --model-root (default: the demo seg model)")
    parser.add_argument("--model-root", default=str(REPO_ROOT / "models"))
    parser.add_argument("--imgsz", type=int, default=640, help="inference size for both sides")
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per side for each single image")
    parser.add_argument("--batch-repeats", type=int, default=3, help="timed runs per side for each batch (>= 1)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--only", default=",".join([*SINGLE, *BATCH]), help="comma-separated scenarios")
    args = parser.parse_args()
    scenarios = args.only.split(",")
    unknown = set(scenarios) - set(SINGLE) - set(BATCH)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.repeats < 1 or args.batch_repeats < 1:
        parser.error("--repeats and --batch-repeats must be at least 1")

    import torch
    from ultralytics import YOLO

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_images(root, args.tasks)
        settings = Settings.load({"model_root": args.model_root, "yolo_det_model": args.model, "yolo_seg_model": args.model,
                                  "yolo_imgsz": args.imgsz, "model_score_threshold": args.conf, "device": "cpu",
                                  "batch_size": args.batch_size, "local_files_document_root": str(root),
                                  "cache_dir": str(root / "cache"), "log_level": "WARNING"}, environ={})
        url, server = serve(settings)
        model = YOLO(str(Path(args.model_root) / args.model))
        config = label_config([model.names[i] for i in sorted(model.names)])
        http = httpx.Client(timeout=1200)  # keep-alive, as Label Studio's requests session does
        direct_options = dict(conf=args.conf, imgsz=args.imgsz, retina_masks=True, device="cpu", verbose=False)

        def backend_call(names: list[str]) -> int:
            tasks = [{"id": i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
            response = http.post(f"{url}/predict", json={"tasks": tasks, "label_config": config})
            response.raise_for_status()
            return sum(len(r["result"]) for r in response.json()["results"])

        def direct_call(names: list[str]) -> int:
            found = 0
            for start in range(0, len(names), args.batch_size):
                chunk = [str(root / name) for name in names[start:start + args.batch_size]]
                found += sum(len(r.boxes) for r in model.predict(chunk, batch=len(chunk), **direct_options))
                # Ultralytics' CPU device setup lowers torch's thread count (to cores - 1) in the thread that
                # sets up its predictor; the direct side gets the process' count back, like the backend.
                torch.set_num_threads(threads)
            return found

        def alternate(repeats: int, names: list[str]) -> tuple[list[float], list[float]]:
            backend_times, direct_times = [], []
            for _ in range(repeats):
                backend_times.append(timed(backend_call, names))
                direct_times.append(timed(direct_call, names))
            return backend_times, direct_times

        backend_call(files["bus"])  # loads the model and warms both sides up
        direct_call(files["bus"])
        print(f"model {args.model} at imgsz {args.imgsz} on {settings.device}, torch threads {threads} "
              f"(of {os.cpu_count()} CPUs), load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for scenario in (s for s in SINGLE if s in scenarios):
            names = files[scenario][:1]
            regions, detections = backend_call(names), direct_call(names)
            backend_times, direct_times = alternate(args.repeats, names)
            backend_ms, direct_ms = statistics.median(backend_times) * 1e3, statistics.median(direct_times) * 1e3
            print(f"{scenario}: one image, {detections} detections -> {regions} regions (boxes, polygons, brush RLE)")
            print(f"  backend /predict median {backend_ms:.1f} ms, Ultralytics predict median {direct_ms:.1f} ms: "
                  f"ratio {backend_ms / direct_ms:.3f} (target <= {SINGLE[scenario]})")
        for scenario in (s for s in BATCH if s in scenarios):
            names = files[scenario.removesuffix("-batch")]
            with PeakMemory() as backend_memory:  # the first timed run of each side
                backend_times = [timed(backend_call, names)]
            with PeakMemory() as direct_memory:
                direct_times = [timed(direct_call, names)]
            more_backend, more_direct = alternate(args.batch_repeats - 1, names)
            backend_times, direct_times = backend_times + more_backend, direct_times + more_direct
            backend_rate, direct_rate = len(names) / statistics.median(backend_times), len(names) / statistics.median(direct_times)
            print(f"{scenario}: {len(names)} tasks in one request, batch size {args.batch_size}")
            print(f"  backend {backend_rate:.2f} images/s, Ultralytics batch predict {direct_rate:.2f} images/s: "
                  f"ratio {backend_rate / direct_rate:.3f} (target >= {BATCH[scenario]})")
            print(f"  peak memory during the request (RSS growth / peak RSS): backend {backend_memory.growth_mb:.0f} / "
                  f"{backend_memory.peak / 2**20:.0f} MB, Ultralytics {direct_memory.growth_mb:.0f} / {direct_memory.peak / 2**20:.0f} MB")
        server.should_exit = True


def timed(call: Callable[[list[str]], int], names: list[str]) -> float:
    started = time.perf_counter()
    call(names)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
