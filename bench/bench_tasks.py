"""Pose, OBB, classification and video tracking: backend /predict against Ultralytics directly, same
model and file, side by side in one run.

    python -m bench.bench_tasks [--repeats 15] [--size 640] [--video_seconds 3] [--only pose,obb,classify,video]

Image tasks: one task per `/predict` over HTTP with the label_configs/ example for the task (file read,
EXIF, inference, regions, JSON) against `YOLO.predict(path)` on the same file; the median latency
ratio. Video: the example video config's `/predict` against `YOLO.track(path, stream=True)` consumed
frame by frame; frames per second of each side. Runs alternate between the sides so machine noise
hits both alike; both use the process' torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import torch
from ultralytics import YOLO

from backend.models.yolo import INFERENCE_THREADS
from backend.settings import Settings
from bench.bench_predict import serve
from tools.shapes_tasks import generate_classify_image, generate_obb_image, generate_pose_image, write_video

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"
IMAGE_TASKS = {  # task: (config, model, picture generator)
    "pose": ("demo-shapes-pose.xml", "demo-shapes-pose.pt", generate_pose_image),
    "obb": ("demo-shapes-obb.xml", "demo-shapes-obb.pt", generate_obb_image),
    "classify": ("demo-shapes-classify.xml", "demo-shapes-cls.pt", generate_classify_image),
}


def post(client: httpx.Client, url: str, config: str, data: dict) -> dict:
    response = client.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": data}], "label_config": config}, timeout=600)
    response.raise_for_status()
    return response.json()


def bench_image_task(task: str, client: httpx.Client, url: str, root: Path, size: int, repeats: int) -> float:
    config_file, model_file, generate = IMAGE_TASKS[task]
    config = (REPO_ROOT / "label_configs" / config_file).read_text()
    path = root / f"{task}.png"
    cv2.imwrite(str(path), generate(7, size)[0])
    model = YOLO(str(MODELS / model_file))
    data = {"image": f"/data/local-files/?d={path.name}"}
    post(client, url, config, data), model.predict(str(path), conf=0.5, verbose=False)  # warm-up both sides
    torch.set_num_threads(INFERENCE_THREADS)  # Ultralytics' set-up lowered it; the backend infers at this count
    backend, direct = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        post(client, url, config, data)
        backend.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(str(path), conf=0.5, verbose=False)
        direct.append(time.perf_counter() - started)
    ratio = statistics.median(backend) / statistics.median(direct)
    print(f"{task:9s} /predict median {statistics.median(backend) * 1000:.1f} ms vs YOLO.predict "
          f"{statistics.median(direct) * 1000:.1f} ms: {ratio:.2f}x")
    return ratio


def bench_video(client: httpx.Client, url: str, root: Path, seconds: float, repeats: int) -> float:
    video = write_video(root / "shapes.mp4", seconds=seconds)
    frames = int(round(25 * seconds))
    config = (REPO_ROOT / "label_configs" / "demo-shapes-video.xml").read_text()
    backend, direct = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        post(client, url, config, {"video": f"/data/local-files/?d={video.name}"})
        backend.append(time.perf_counter() - started)
        started = time.perf_counter()
        model = YOLO(str(MODELS / "demo-shapes-det.pt"))  # the backend loads a fresh model per video too
        for _ in model.track(str(video), stream=True, tracker="bytetrack.yaml", conf=0.25, iou=0.7, verbose=False):
            torch.set_num_threads(INFERENCE_THREADS)  # as the backend does once Ultralytics' set-up lowered it
        direct.append(time.perf_counter() - started)
    backend_fps, direct_fps = frames / statistics.median(backend), frames / statistics.median(direct)
    print(f"video     /predict {backend_fps:.1f} frames/s vs YOLO.track {direct_fps:.1f} frames/s "
          f"({frames} frames 320x240): {backend_fps / direct_fps:.2f}")
    return backend_fps / direct_fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=640, help="side of the square test pictures")
    parser.add_argument("--video_seconds", type=float, default=3.0)
    parser.add_argument("--video_repeats", type=int, default=3)
    parser.add_argument("--only", default="pose,obb,classify,video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as tmp:
        root = Path(tmp)
        settings = Settings.load({"model_root": str(MODELS), "local_files_document_root": str(root),
                                  "cache_dir": str(root / "cache"), "model_score_threshold": 0.5,
                                  "yolo_det_model": "demo-shapes-det.pt", "yolo_seg_model": "demo-shapes-seg.pt"},
                                 environ={})
        url, server = serve(settings)
        try:
            with httpx.Client() as client:
                for task in args.only.split(","):
                    if task == "video":
                        bench_video(client, url, root, args.video_seconds, args.video_repeats)
                    else:
                        bench_image_task(task, client, url, root, args.size, args.repeats)
        finally:
            server.should_exit = True


if __name__ == "__main__":
    main()
