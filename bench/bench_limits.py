"""Issue 21's bounds measured on the production server (gunicorn, one worker, demo models), side by side with
the idle figures in one run:

    python -m bench.bench_limits [--images 8] [--side 9999] [--stalled 6] [--json report.json]

1. Memory: one /predict with `--images` near-limit PNGs (9999x9999, about 100 megapixels each, a few hundred KB
   on disk) from Local Storage. The worker's resident memory is sampled every 20 ms: its peak above the
   idle worker (models loaded and run once on a small picture) is the figure; each task must be answered (a prediction) or refused with a
   reason (an empty list, and the warning line).
2. Time: GET /health latency on the idle server, then while `--stalled` /predict requests (more than THREADS)
   wait on image downloads that never send a byte.

Exit status 1 when the peak exceeds `--max-rss-mb` above idle (1500), a task is neither predicted nor refused,
or /health took a second or more while the downloads stalled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests

from bench.load import demo_settings, start_gunicorn
from bench.stalling_images import StallingImages

CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="rect" toName="image">'
          '<Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels></View>')


def near_limit_png(side: int) -> bytes:
    """A side x side picture of a few large shapes on a plain background: tiny as a PNG, huge decoded."""
    image = np.full((side, side, 3), 60, np.uint8)
    cv2.circle(image, (side // 3, side // 3), side // 8, (40, 180, 220), -1)
    cv2.rectangle(image, (side // 2, side // 2), (side // 2 + side // 5, side // 2 + side // 5), (200, 60, 60), -1)
    return cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def health_ms(url: str, count: int) -> dict[str, float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        requests.get(f"{url}/health", timeout=30).raise_for_status()
        seconds.append(time.perf_counter() - started)
    return {"median_ms": round(statistics.median(seconds) * 1000, 1), "max_ms": round(max(seconds) * 1000, 1)}


def measure_memory(url: str, worker: int, names: list[str]) -> dict:
    tasks = [{"id": index, "data": {"image": f"/data/local-files/?d={name}"}} for index, name in enumerate(names)]
    idle = rss_mb(worker)
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(worker))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=600)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    results = response.json()["results"]
    return {"status": response.status_code, "tasks": len(tasks), "predicted": sum(isinstance(r, dict) for r in results),
            "refused": sum(r == [] for r in results), "seconds": round(seconds, 1), "idle_rss_mb": round(idle),
            "peak_rss_mb": round(peak), "peak_above_idle_mb": round(peak - idle)}


def measure_health(url: str, images: StallingImages, stalled: int, samples: int) -> dict:
    idle = health_ms(url, samples)
    body = {"tasks": [{"id": 1, "data": {"image": f"{images.url}/stall-1.png"}}], "label_config": CONFIG}
    senders = [threading.Thread(target=requests.post, args=(f"{url}/predict",), kwargs={"json": body, "timeout": 120},
                                daemon=True) for _ in range(stalled)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while images.count("stall") < min(stalled, 4) and time.monotonic() < deadline:
        time.sleep(0.1)
    during = health_ms(url, samples)
    images.release.set()
    for sender in senders:
        sender.join(120)
    return {"stalled_requests": stalled, "downloads_waiting": images.count("stall"), "idle": idle, "stalled": during}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=9999)
    parser.add_argument("--stalled", type=int, default=6, help="/predict requests waiting on stalled downloads")
    parser.add_argument("--samples", type=int, default=20, help="GET /health calls per figure")
    parser.add_argument("--max-rss-mb", type=float, default=1500.0)
    parser.add_argument("--with", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="backend settings, e.g. max_decoded_pixels=1000000000 to compare")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work, StallingImages(b"", stall_max_s=90) as stalling:
        root = Path(work)
        (root / "images").mkdir()
        picture = near_limit_png(args.side)
        names = [f"big-{index}.png" for index in range(args.images)]
        for name in names:
            (root / "images" / name).write_bytes(picture)
        (root / "images" / "small.png").write_bytes(near_limit_png(640))
        settings = demo_settings(root / "images", root / "cache", sam=False) | {
            "allow_private_urls": "true", "download_timeout": "60"} | dict(item.split("=", 1) for item in args.overrides)
        server = start_gunicorn(settings, 1, root / "gunicorn.log")
        try:
            (worker,) = server.worker_pids()
            warm_up = {"tasks": [{"id": 0, "data": {"image": "/data/local-files/?d=small.png"}}], "label_config": CONFIG}
            requests.post(f"{server.url}/predict", json=warm_up, timeout=300)  # idle: models loaded and run once
            report = {"png_bytes": len(picture), "side": args.side, "settings": args.overrides,
                      "memory": measure_memory(server.url, worker, names),
                      "health": measure_health(server.url, stalling, args.stalled, args.samples)}
        finally:
            server.stop()
        warnings = [line for line in (root / "gunicorn.log").read_text(errors="replace").splitlines()
                    if "tasks got no prediction" in line]
    report["warnings"] = [line[-300:] for line in warnings]
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    memory, health = report["memory"], report["health"]
    answered = memory["predicted"] + memory["refused"] == memory["tasks"] and (memory["refused"] == 0 or warnings)
    ok = memory["peak_above_idle_mb"] <= args.max_rss_mb and answered and health["stalled"]["max_ms"] < 1000
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
