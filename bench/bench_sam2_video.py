"""SAM 2 click-to-track on video: frames per second of propagation, the backend against Meta's own
SAM2VideoPredictor on the same frames, in the same run.

    python -m bench.bench_sam2_video [--frames 24] [--objects 1] [--repeats 2] [--threads 2] [--device cpu]

Random (seeded) SAM 2.1 Hiera tiny weights from Meta's build_sam2: the work per frame does not depend on
the weights. A moving-shapes video (tools.shapes_tasks, 320x240, 25 fps; SAM 2 resizes every frame to
1024x1024 whatever its size) gets one box per object on its first frame, tracked through --frames frames:
- Meta: `init_state` on a folder of the decoded frames (it loads them all, 12 MB each, before the first
  prompt), `add_new_points_or_box`, `propagate_in_video`; fps counts propagation only, and init_state is
  reported on its own;
- backend, first prompt: `VideoInteractive.predict` on a Label Studio context for the Local Storage mp4,
  as /predict runs it (probe the file, decode frames lazily, encode each once, propagate, boxes,
  sequence), with an empty frame-feature cache;
- backend, second prompt: another box on the same frames, their features cached.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from backend.sources.images import ImageFetcher
from formats.label_config import parse_label_config
from backend.sources.label_studio import AccessTokens
from backend.models.sam import load_sam
from backend.models.sam2_video import FrameFeatures, Sam2VideoTracker
from backend.settings import Settings
from backend.interactive.video import VideoInteractive
from tools.shapes_tasks import write_video

SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
FPS = 25.0
CONFIG = parse_label_config(
    '<View><Video name="video" value="$video" frameRate="25"/><VideoRectangle name="box" toName="video"/>'
    '<Labels name="labels" toName="video"><Label value="shape"/></Labels></View>')


def boxes(objects: int, shift: float) -> list[dict]:
    """`objects` boxes in percent along the frame's diagonal, moved by `shift` percent."""
    return [{"x": 5.0 + 18 * k + shift, "y": 5.0 + 12 * k + shift, "width": 25.0, "height": 30.0} for k in range(objects)]


def context(objects: int, shift: float) -> dict:
    return {"result": [{"id": f"obj{k}", "from_name": "box", "to_name": "video", "type": "videorectangle",
                        "value": {"sequence": [{"frame": 1, "enabled": True, "rotation": 0, **box, "time": 0.04}],
                                  "labels": ["shape"]}} for k, box in enumerate(boxes(objects, shift))]}


def meta_side(checkpoint: Path, video: Path, objects: int, frames: int, root: Path) -> tuple[float, float]:
    """Seconds of Meta's init_state and of its propagation through `frames` frames."""
    from sam2.build_sam import build_sam2_video_predictor

    folder = root / "meta-frames"
    folder.mkdir(exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    for index in range(frames):
        ok, frame = capture.read()
        assert ok, "the video is shorter than --frames"
        cv2.imwrite(str(folder / f"{index:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 100])
    capture.release()
    predictor = build_sam2_video_predictor(SAM2_CONFIG, ckpt_path=str(checkpoint), device="cpu")
    started = time.perf_counter()
    state = predictor.init_state(str(folder))
    loaded = time.perf_counter()
    height, width = state["video_height"], state["video_width"]
    for key, box in enumerate(boxes(objects, 0.0)):
        pixels = np.array([box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]]) / 100 * np.array([width, height, width, height])
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=key, box=pixels)
    for _ in predictor.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=frames - 1):
        pass
    return loaded - started, time.perf_counter() - loaded


def backend_side(backend: VideoInteractive, objects: int, shift: float) -> float:
    task = {"id": 1, "data": {"video": "/data/local-files/?d=bench.mp4"}}
    started = time.perf_counter()
    (answer,) = backend.predict([task], CONFIG, context(objects, shift), None, "bench")
    elapsed = time.perf_counter() - started
    assert len(answer["result"]) == objects
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24, help="frames tracked, the prompt's included")
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        from sam2.build_sam import build_sam2

        checkpoint = root / "sam2.1_hiera_tiny.pt"
        torch.save({"model": build_sam2(SAM2_CONFIG, ckpt_path=None, device="cpu").state_dict()}, checkpoint)
        video = write_video(root / "bench.mp4", seconds=(args.frames + 1) / FPS)
        settings = Settings.load({"local_files_document_root": str(root), "cache_dir": str(root / "cache"),
                                  "sam2_track_frames": args.frames - 1, "video_time_limit": 1e6}, environ={})
        tracker = Sam2VideoTracker(load_sam("sam2", "", checkpoint, args.device), args.frames)
        fetcher = ImageFetcher(settings.cache_path / "images", settings.local_files_document_root,
                               settings.download_timeout, settings.max_image_pixels, AccessTokens(30.0),
                               settings.max_download_bytes)
        backend = VideoInteractive(tracker, settings, fetcher)
        rows: dict[str, list[float]] = {"meta init_state": [], "meta propagate": [], "backend first prompt": [],
                                        "backend second prompt": []}
        for repeat in range(args.repeats):
            init, propagate = meta_side(checkpoint, video, args.objects, args.frames, root)
            rows["meta init_state"].append(init)
            rows["meta propagate"].append(propagate)
            tracker.features = FrameFeatures(args.frames)
            rows["backend first prompt"].append(backend_side(backend, args.objects, 0.0))
            rows["backend second prompt"].append(backend_side(backend, args.objects, 2.0 + repeat))
    medians = {name: statistics.median(values) for name, values in rows.items()}
    print(f"SAM 2.1 hiera_t on {args.device}, {args.threads} threads, {args.objects} object(s), {args.frames} frames, "
          f"median of {args.repeats}")
    for name, value in medians.items():
        rate = "" if name == "meta init_state" else f"  {args.frames / value:6.2f} frames/s"
        print(f"{name:24s} {value:8.2f} s{rate}")
    meta_total = medians["meta init_state"] + medians["meta propagate"]
    print(f"backend first / meta (init_state + propagate): {medians['backend first prompt'] / meta_total:.2f}x")
    print(f"backend second / backend first: {medians['backend second prompt'] / medians['backend first prompt']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
