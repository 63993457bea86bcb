"""Bounded load run against the production server: gunicorn with N uvicorn workers on 127.0.0.1.

    python -m bench.load [--requests 500] [--clients 8] [--workers 2] [--batch-tasks 4] [--json report.json]

This process starts gunicorn (backend/gunicorn.conf.py) on the demo models and sends `--requests`
/predict calls from `--clients` concurrent clients: batch requests (`--batch-tasks` Local Storage
shapes images each) alternating with interactive ones (one smart click, answered by the demo SAM
when models/demo-tiny-sam.pt exists). It reports failed requests, p50/p95 latency, and each
worker's resident memory after warm-up; exit status 1 when a request failed, a worker was
replaced, or a worker's memory grew more than `--rss-tolerance` after warm-up.
Every loop is bounded: a fixed number of requests and a `--max-seconds` deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from backend.settings import Settings  # noqa: E402
from tools.shapes_dataset import generate_image  # noqa: E402

MODELS_DIR = REPO_ROOT / "models"
SAM_CHECKPOINT = MODELS_DIR / "demo-tiny-sam.pt"
SHAPE_LABELS = "".join(f'<Label value="{name}"/>' for name in ("circle", "square", "triangle"))
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    f'<KeyPointLabels name="kp" toName="image" smart="true">{SHAPE_LABELS}</KeyPointLabels>'
    f'<RectangleLabels name="rect" toName="image">{SHAPE_LABELS}</RectangleLabels>'
    f'<PolygonLabels name="poly" toName="image">{SHAPE_LABELS}</PolygonLabels>'
    f'<BrushLabels name="brush" toName="image">{SHAPE_LABELS}</BrushLabels></View>'
)
IMAGE_SEEDS = range(7000, 7016)
REQUEST_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GunicornServer:
    process: subprocess.Popen
    url: str
    log_path: Path

    def worker_pids(self) -> list[int]:
        try:
            return sorted(child.pid for child in psutil.Process(self.process.pid).children())
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_seconds: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=grace_seconds)


def start_gunicorn(settings: Mapping[str, str], workers: int, log_path: Path, timeout_s: float = 180) -> GunicornServer:
    """gunicorn -c backend/gunicorn.conf.py backend._wsgi:app on a free loopback port, settings from the environment;
    returns once every worker has started its app (read from the log, so LOG_LEVEL must be INFO or DEBUG)."""
    port = free_port()
    setting_names = {f.name.upper() for f in dataclasses.fields(Settings)}
    env = {name: value for name, value in os.environ.items() if name not in setting_names}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({name.upper(): value for name, value in settings.items()})
    env.update({"WORKERS": str(workers), "HOST": "127.0.0.1", "PORT": str(port)})
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn.conf.py", "backend._wsgi:app"],
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = GunicornServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        booted = log_path.read_text(errors="replace").count("Application startup complete")
        if booted >= workers and len(server.worker_pids()) == workers:
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"gunicorn did not start within {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')[-4000:]}")


def demo_settings(image_root: Path, cache_dir: Path, sam: bool) -> dict[str, str]:
    settings = {"model_root": str(MODELS_DIR), "yolo_det_model": "demo-shapes-det.pt",
                "yolo_seg_model": "demo-shapes-seg.pt", "model_score_threshold": "0.25", "device": "cpu",
                "local_files_document_root": str(image_root), "cache_dir": str(cache_dir), "log_level": "INFO"}
    if sam:
        settings.update(model_name="sam", sam_config="demo", sam_checkpoint_file=str(SAM_CHECKPOINT))
    return settings


def write_images(directory: Path) -> list[str]:
    names = []
    for seed in IMAGE_SEEDS:
        cv2.imwrite(str(directory / f"shapes_{seed}.png"), generate_image(seed).image)
        names.append(f"shapes_{seed}.png")
    return names


def request_bodies(count: int, images: list[str], batch_tasks: int) -> list[tuple[str, dict]]:
    """(kind, body) for every request: batch and interactive alternate; images and clicks rotate."""
    bodies = []
    for index in range(count):
        if index % 2 == 0:
            tasks = [{"id": index * batch_tasks + k, "data": {"image": f"/data/local-files/?d={images[(index + k) % len(images)]}"}}
                     for k in range(batch_tasks)]
            bodies.append(("batch", {"tasks": tasks, "label_config": LABEL_CONFIG, "project": "1.1"}))
        else:
            click = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
                     "value": {"x": 20 + (index * 7) % 60, "y": 20 + (index * 13) % 60, "width": 0.6, "keypointlabels": ["circle"]}}
            task = {"id": index, "data": {"image": f"/data/local-files/?d={images[index % len(images)]}"}}
            bodies.append(("interactive", {"tasks": [task], "label_config": LABEL_CONFIG, "project": "1.1",
                                           "params": {"context": {"result": [click]}}}))
    return bodies


@dataclass
class Outcome:
    kind: str
    seconds: float
    error: str | None


@dataclass
class LoadReport:
    requests: int
    clients: int
    workers: int
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)  # worker pid -> after warm-up, max, growth
    workers_replaced: bool = False
    seconds: float = 0.0

    def ok(self, rss_tolerance: float) -> bool:
        growth_ok = all(worker["growth"] <= rss_tolerance for worker in self.rss_mb.values())
        return self.failed == 0 and self.sent == self.requests and not self.workers_replaced and growth_ok and bool(self.rss_mb)


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "p50": round(statistics.median(ordered) * 1000, 1), "p95": round(p95 * 1000, 1)}


def run_load(server: GunicornServer, bodies: list[tuple[str, dict]], clients: int, warmup: int,
             max_seconds: float) -> LoadReport:
    report = LoadReport(len(bodies), clients, len(server.worker_pids()))
    workers_before = server.worker_pids()
    local = threading.local()
    done = threading.Semaphore(0)
    deadline = time.monotonic() + max_seconds

    def send(item: tuple[str, dict]) -> Outcome | None:
        if time.monotonic() > deadline:
            return None
        kind, body = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        try:
            response = session.post(f"{server.url}/predict", json=body, timeout=REQUEST_TIMEOUT_S)
            error = None if response.status_code == 200 and len(response.json()["results"]) == len(body["tasks"]) \
                else f"HTTP {response.status_code}: {response.text[:200]}"
        except (requests.RequestException, ValueError, KeyError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        done.release()
        return Outcome(kind, time.perf_counter() - started, error)

    samples: dict[int, list[float]] = {pid: [] for pid in workers_before}
    stop_sampling = threading.Event()
    warmed_up = threading.Event()

    def sample_memory() -> None:
        completed = 0
        while not stop_sampling.wait(0.25):
            while done.acquire(blocking=False):
                completed += 1
            if completed >= warmup:
                warmed_up.set()
            if not warmed_up.is_set():
                continue
            for pid in samples:
                try:
                    samples[pid].append(psutil.Process(pid).memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass

    sampler = threading.Thread(target=sample_memory, name="rss-sampler", daemon=True)
    started = time.perf_counter()
    sampler.start()
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="client") as pool:
        outcomes = [outcome for outcome in pool.map(send, bodies) if outcome is not None]
    stop_sampling.set()
    sampler.join(timeout=5)
    report.seconds = round(time.perf_counter() - started, 1)
    report.sent = len(outcomes)
    failures = [outcome.error for outcome in outcomes if outcome.error]
    report.failed = len(failures)
    report.errors = failures[:10]
    measured = outcomes[warmup:]  # the first requests also load the models in each worker
    report.latency_ms = {"all": percentiles([o.seconds for o in measured])}
    for kind in ("batch", "interactive"):
        report.latency_ms[kind] = percentiles([o.seconds for o in measured if o.kind == kind])
    for pid, rss in samples.items():
        if rss:
            report.rss_mb[str(pid)] = {"after_warmup": round(rss[0], 1), "max": round(max(rss), 1), "last": round(rss[-1], 1),
                                       "growth": round(max(rss) / rss[0] - 1, 4)}
    report.workers_replaced = server.worker_pids() != workers_before
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-tasks", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=0, help="requests before memory is watched (default: 10%%, at least 2 per client)")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    warmup = args.warmup or max(2 * args.clients, args.requests // 10)
    with tempfile.TemporaryDirectory(prefix="ls-backend-load-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = write_images(root / "images")
        sam = SAM_CHECKPOINT.is_file()
        server = start_gunicorn(demo_settings(root / "images", root / "cache", sam), args.workers, root / "gunicorn.log")
        try:
            report = run_load(server, request_bodies(args.requests, images, args.batch_tasks), args.clients, warmup,
                              args.max_seconds)
        finally:
            server.stop()
    print(f"{report.sent}/{report.requests} requests from {report.clients} clients to {report.workers} workers in "
          f"{report.seconds} s (interactive: {'demo SAM' if sam else 'no SAM model, empty answers'}); failed: {report.failed}")
    for kind, stats in report.latency_ms.items():
        if stats:
            print(f"  latency {kind:<11} n={stats['n']:<4} p50 {stats['p50']:8.1f} ms   p95 {stats['p95']:8.1f} ms")
    for pid, rss in report.rss_mb.items():
        print(f"  worker {pid}: RSS {rss['after_warmup']:.1f} MB after warm-up, max {rss['max']:.1f} MB "
              f"({rss['growth']:+.1%}), last {rss['last']:.1f} MB")
    for error in report.errors:
        print(f"  error: {error}")
    if report.workers_replaced:
        print("  a worker was replaced during the run")
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return 0 if report.ok(args.rss_tolerance) else 1


if __name__ == "__main__":
    raise SystemExit(main())
