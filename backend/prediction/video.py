"""Video pre-annotation: each task's video is fetched into the cache, tracked frame by frame, and each
VideoRectangle gets one region per track. A task whose video cannot be used raises (ImageError,
PermissionError, VideoError): the batch predictor gives it no prediction; the other tasks are still answered.

Tracking runs inside the /predict request, so a long video is cut at VIDEO_TIME_LIMIT seconds (under
Label Studio's ML_TIMEOUT_PREDICT, 100 s by default) with a warning naming the frames reached; for
long videos use the offline path, `python -m tools.track_video`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from backend.prediction.video_regions import frame_rate_of, video_regions
from backend.sources.images import ImageError, ImageFetcher
from formats.label_config import Control
from backend.sources.label_studio import Credentials
from backend.models.cache import ModelPathError, resolve_model_path
from backend.models.yolo_track import BUILT_IN_TRACKERS, TrackOptions, track_video
from backend.settings import Settings

logger = logging.getLogger(__name__)


def track_options(control: Control, settings: Settings, device: str) -> TrackOptions:
    """The tracking options of a VideoRectangle: its tracker (a custom .yaml must be inside MODEL_ROOT),
    `model_conf` (default: its score threshold) and `model_iou`."""
    tracker = control.options.tracker
    if tracker not in BUILT_IN_TRACKERS:
        tracker = str(resolve_model_path(settings.model_root_path, tracker, f"model_tracker on <VideoRectangle name=\"{control.name}\">"))
        if not Path(tracker).is_file():
            raise ModelPathError(f"model_tracker on <VideoRectangle name=\"{control.name}\">: '{control.options.tracker}' "
                                 f"is not a file in MODEL_ROOT ({settings.model_root_path})")
    threshold = control.score_threshold if control.score_threshold is not None else settings.model_score_threshold
    conf = control.options.track_conf if control.options.track_conf is not None else threshold
    return TrackOptions(tracker, conf, control.options.track_iou, device, settings.yolo_imgsz or None, settings.half)


class VideoPredictor:
    def __init__(self, settings: Settings, fetcher: ImageFetcher, device: str) -> None:
        self._settings = settings
        self._fetcher = fetcher
        self._device = device

    def check(self, control: Control) -> None:
        """Raise ModelPathError for a tracker file the control cannot use (before any task is tracked)."""
        track_options(control, self._settings, self._device)

    def task_regions(self, task: dict, control: Control, model_path: Path, credentials: Credentials | None,
                     track: Callable = track_video) -> list[dict]:
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(control.data_key) if isinstance(data, dict) else None
        task_id = task.get("id") if isinstance(task, dict) else "?"
        if not isinstance(url, str):
            raise ImageError(f"task data has no '{control.data_key}' video URL")
        video = self._fetcher.fetch(url, task.get("id"), credentials)
        info, frames = track(video, model_path, track_options(control, self._settings, self._device),
                             self._settings.video_time_limit)
        if not info.complete:
            logger.warning("task %s: tracking stopped after %d frames (%.1f s of video) at VIDEO_TIME_LIMIT=%g s; "
                           "the tracks cover those frames only. For long videos run `python -m tools.track_video` "
                           "offline and import its tasks", task_id, info.frame_count, info.frame_count / info.fps,
                           self._settings.video_time_limit)
        frame_rate = frame_rate_of(control, data)
        if abs(frame_rate - info.fps) > 1e-3:
            logger.info("task %s: <Video frameRate> is %g but the video has %g frames per second; keyframes follow "
                        "Label Studio's frame numbering at %g", task_id, frame_rate, info.fps, frame_rate)
        return video_regions(control, frames, info, frame_rate)
