"""Click-to-track on video: each VideoRectangle prompt is propagated forwards by SAM 2 and answered as
that region (same id, same labels) with the boxes of its masks as keyframes.

The region keeps the annotator's keyframes up to and including the prompt's; the frames after it are
SAM 2's, SAM2_TRACK_FRAMES of them, numbered as Label Studio numbers them (backend.prediction.video_regions). Objects
prompted on the same frame are tracked in one propagation; a task whose video cannot be used, or a
prompt that cannot be read, is a warning and no answer for it. Tracking stops at VIDEO_TIME_LIMIT
seconds per request with a warning naming the frames reached.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from backend.prediction.video_regions import frame_rate_of, track_sequence
from formats.geometry import mask_to_box
from backend.sources.images import ImageError, ImageFetcher
from formats.label_config import LabelConfig
from backend.sources.label_studio import Credentials
from backend.interactive.sam import InteractivePredictor
from backend.models.cache import ModelCache
from backend.models.sam2 import Sam2Model
from backend.models.sam2_video import ObjectPrompt, Sam2VideoTracker
from backend.models.yolo_track import VideoError, VideoInfo, probe_video
from formats.regions import prediction
from backend.settings import Settings
from backend.interactive.video_prompts import VideoPrompt, read_video_prompts

logger = logging.getLogger(__name__)

Track = list[tuple[int, np.ndarray, float, str]]  # (decoded frame index, xyxy box, score, class) per frame found


def decoded_index(frame: int, fps: float, frame_rate: float) -> int:
    """The video's 0-based decoded frame shown at Label Studio's 1-based frame `frame` (label_studio_frame's inverse)."""
    return int(round((frame - 1) * fps / frame_rate))


class VideoInteractive:
    def __init__(self, tracker: Sam2VideoTracker, settings: Settings, fetcher: ImageFetcher) -> None:
        self.tracker = tracker
        self._settings = settings
        self._fetcher = fetcher

    def predict(self, tasks: list, config: LabelConfig, context: dict, credentials: Credentials | None,
                model_version: str) -> list[dict]:
        prompts = read_video_prompts(context.get("result") or [], config)
        if not prompts:
            logger.warning("video interactive request without a usable videorectangle; answering nothing")
        return [prediction(self._task_regions(task, prompts, credentials) if prompts else [], model_version)
                for task in tasks]

    def _task_regions(self, task: dict, prompts: list[VideoPrompt], credentials: Credentials | None) -> list[dict]:
        control = prompts[0].control
        data = task.get("data") or {}
        task_id = task.get("id")
        try:
            url = data.get(control.data_key)
            if not isinstance(url, str):
                raise ImageError(f"task data has no '{control.data_key}' video URL")
            video = self._fetcher.fetch(url, task_id, credentials)
            info = probe_video(video)
        except (ImageError, PermissionError, VideoError) as exc:
            logger.warning("task %s: %s", task_id, exc)
            return []
        frame_rate = frame_rate_of(control, data)
        tracks = self._tracks(video, info, frame_rate, prompts, task_id)
        return [answer_region(prompt, tracks[key], info, frame_rate) for key, prompt in enumerate(prompts) if key in tracks]

    def _tracks(self, video: Path, info: VideoInfo, frame_rate: float, prompts: list[VideoPrompt],
                task_id: object) -> dict[int, Track]:
        """Each readable prompt's track (the prompt's index in `prompts` is its key), grouped by prompt frame."""
        groups: dict[int, list[ObjectPrompt]] = defaultdict(list)
        for key, prompt in enumerate(prompts):
            start = decoded_index(prompt.frame, info.fps, frame_rate)
            box, click = prompt.in_pixels(info.width, info.height)
            if info.frame_count and start >= info.frame_count:
                logger.warning("task %s: videorectangle %s is on frame %d, after the video's last frame (%d)",
                               task_id, prompt.region_id, prompt.frame, info.frame_count)
            elif box is None and click is None:
                logger.warning("task %s: videorectangle %s lies outside the %dx%d video on frame %d", task_id,
                               prompt.region_id, info.width, info.height, prompt.frame)
            else:
                groups[start].append(ObjectPrompt(key, box, click))
        tracks: dict[int, Track] = {prompt.key: [] for group in groups.values() for prompt in group}
        deadline = time.monotonic() + self._settings.video_time_limit
        for start, group in sorted(groups.items()):
            length = self._settings.sam2_track_frames + 1
            if info.frame_count:
                length = min(length, info.frame_count - start)
            with contextlib.closing(self.tracker.propagate(video, info, start, length, group)) as frames:
                for index, keys, masks, scores in frames:
                    for key, mask, score in zip(keys, masks, scores):
                        box = mask_to_box(mask)
                        if box is not None:
                            tracks[key].append((index, np.array(box), float(score), ""))
                    if time.monotonic() > deadline and index < start + length - 1:
                        logger.warning("task %s: SAM 2 tracking stopped at VIDEO_TIME_LIMIT=%g s on frame %d of %d-%d; "
                                       "the tracks end there", task_id, self._settings.video_time_limit, index + 1,
                                       start + 1, start + length)
                        return tracks
        return tracks


def answer_region(prompt: VideoPrompt, track: Track, info: VideoInfo, frame_rate: float) -> dict:
    """The prompt's region with the annotator's keyframes up to the prompt and SAM 2's after it; its score is
    SAM 2's mean object presence over the frames it was found in."""
    found = track_sequence(track, info, frame_rate)
    after = [keyframe for keyframe in found if keyframe["frame"] > prompt.frame]
    at_prompt = next((keyframe for keyframe in found if keyframe["frame"] == prompt.frame), None)
    drawn = {**prompt.prompt, "enabled": at_prompt is not None and at_prompt["enabled"], "time": prompt.frame / frame_rate}
    before = [keyframe for keyframe in prompt.keyframes if keyframe["frame"] < prompt.frame]
    duration = prompt.duration if prompt.duration else info.frame_count / info.fps
    value = {"sequence": before + [drawn] + after,
             "framesCount": prompt.frames_count or math.ceil(duration * frame_rate - 1e-9), "duration": duration}
    if prompt.labels is not None:
        value["labels"] = list(prompt.labels)
    score = float(np.mean([score for _, _, score, _ in track])) if track else 0.0
    return {"id": prompt.region_id, "from_name": prompt.control.name, "to_name": prompt.control.to_name,
            "type": prompt.control.type, "value": value, "score": round(score, 6), "origin": "prediction"}


def video_predictions(interactive: InteractivePredictor, models: ModelCache, settings: Settings, fetcher: ImageFetcher,
                      tasks: list, config: LabelConfig, context: dict, credentials: Credentials | None,
                      model_version: str) -> list[dict]:
    """The answers to a request with videorectangle prompts, tracked by the configured SAM 2 (whose
    video predictor is built once per process); with another SAM, a warning and empty answers."""
    model = interactive.segmenter.model
    if not isinstance(model, Sam2Model):
        logger.warning("videorectangle prompts need SAM 2's video predictor: set MODEL_NAME=sam2 (the configured "
                       "SAM is %s); answering nothing", model.name)
        return [prediction([], model_version) for _ in tasks]
    tracker = models.get(("sam2-video", str(interactive.checkpoint), model.name, str(model.device)),
                         lambda: Sam2VideoTracker(model, settings.sam2_video_cache_frames))
    return VideoInteractive(tracker, settings, fetcher).predict(tasks, config, context, credentials, model_version)
