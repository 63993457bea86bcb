"""Ultralytics tracking (BoT-SORT, ByteTrack) over a video file, one decoded frame at a time.

`YOLO.track(video, stream=True)` reads the file with OpenCV's VideoCapture frame by frame and yields
one result per frame, which is reduced to its boxes at once: memory holds a frame at a time whatever
the video's length, and the tracks are Ultralytics' own. Each video gets its own YOLO instance:
Ultralytics keeps the tracker's state in the model's predictor, which concurrent requests must not share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.models.yolo import INFERENCE_THREADS

BUILT_IN_TRACKERS = {"botsort": "botsort.yaml", "bytetrack": "bytetrack.yaml"}


class VideoError(ValueError):
    """The video cannot be read; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # the file's frame rate (constant frame rate assumed)
    frame_count: int  # frames decoded (all of them when `complete`)
    width: int
    height: int
    complete: bool  # False when the time limit stopped tracking early


@dataclass(frozen=True)
class TrackedFrame:
    """One decoded frame's tracked objects, in pixels."""

    index: int  # 0-based position of the frame in the video
    track_ids: np.ndarray  # (N,) int
    boxes: np.ndarray  # (N, 4) xyxy
    scores: np.ndarray  # (N,)
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class TrackOptions:
    tracker: str  # botsort, bytetrack, or a tracker .yaml path
    conf: float
    iou: float
    device: str
    imgsz: int | None = None
    half: bool = False


def tracked_frame(index: int, result) -> TrackedFrame:  # noqa: ANN001 - ultralytics Results
    """The tracked boxes of an Ultralytics `track` result (objects without a track id are left out)."""
    boxes = result.boxes
    if boxes is None or boxes.id is None:
        return TrackedFrame(index, np.zeros(0, int), np.zeros((0, 4)), np.zeros(0), ())
    class_ids = boxes.cls.cpu().numpy().astype(int)
    return TrackedFrame(index, boxes.id.cpu().numpy().astype(int), boxes.xyxy.cpu().numpy().astype(np.float64),
                        boxes.conf.cpu().numpy().astype(np.float64), tuple(result.names[i] for i in class_ids))


def probe_video(video: Path) -> VideoInfo:
    """The video's frame rate, size and frame count as its header states them; raises VideoError."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    opened = capture.isOpened()
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if opened else 0.0
    width, height = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) if opened else (0, 0)
    frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if opened else 0
    capture.release()
    if not opened:
        raise VideoError(f"'{video.name}' is not a video OpenCV can read")
    if fps <= 0 or width <= 0 or height <= 0:
        raise VideoError(f"'{video.name}' has no frame rate or frame size")
    return VideoInfo(fps, frame_count, width, height, True)


def track_video(video: Path, model_path: Path, options: TrackOptions, time_limit: float) -> tuple[VideoInfo, list[TrackedFrame]]:
    """Track objects through the video, frame by frame, for at most `time_limit` seconds."""
    import torch
    from ultralytics import YOLO

    header = probe_video(video)
    fps, width, height = header.fps, header.width, header.height
    model = YOLO(str(model_path))
    track_options = dict(stream=True, tracker=BUILT_IN_TRACKERS.get(options.tracker, options.tracker), conf=options.conf,
                         iou=options.iou, device=options.device, verbose=False)
    if options.imgsz:
        track_options["imgsz"] = options.imgsz
    if options.half:
        track_options["half"] = True
    frames: list[TrackedFrame] = []
    deadline = time.monotonic() + time_limit
    complete = True
    results = model.track(str(video), **track_options)
    try:
        for result in results:
            if not frames:  # Ultralytics' set-up, run for the first frame, lowered the thread count
                torch.set_num_threads(INFERENCE_THREADS)
            frames.append(tracked_frame(len(frames), result))
            if time.monotonic() > deadline:
                complete = False
                break
    except Exception as exc:  # a file OpenCV opens but cannot decode to the end
        raise VideoError(f"'{video.name}' could not be read to the end: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        results.close()  # stops Ultralytics' reader (and frees the video) when the time limit broke the loop
    return VideoInfo(fps, len(frames), width, height, complete), frames
