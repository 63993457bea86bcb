"""VideoRectangle on a <Video>: one region per track, with Label Studio's `sequence` of keyframes.

Label Studio numbers video frames from 1 at its <Video frameRate> (default 24): its player shows
frame F at time F / frameRate and counts ceil(duration * frameRate) frames. The video's decoded frame
i (time i / fps) is therefore keyframe round(i * frameRate / fps) + 1, which is i + 1 when frameRate
is the file's frame rate, as it should be. A keyframe is `enabled` while its track goes on into the
next frame; the last keyframe before a gap or the track's end is not, so the box is not carried over
frames where the tracker lost the object.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict

import numpy as np

from formats.control_options import DEFAULT_FRAME_RATE
from formats.geometry import box_to_ls_rect
from formats.label_config import Control
from backend.models.yolo_track import TrackedFrame, VideoInfo


def frame_rate_of(control: Control, task_data: dict) -> float:
    """The <Video frameRate> Label Studio plays this task at: a number or `$key` of the task data,
    24 when missing or not a number, and 1/x for x below 1 (as Label Studio's Video tag does)."""
    raw = control.options.frame_rate
    if raw.startswith("$"):
        raw = str(task_data.get(raw[1:], "")) if isinstance(task_data, dict) else ""
    try:
        rate = float(raw)
    except ValueError:
        rate = float(DEFAULT_FRAME_RATE)
    if not math.isfinite(rate) or rate <= 0:
        return float(DEFAULT_FRAME_RATE)
    return 1.0 / rate if rate < 1 else rate


def label_studio_frame(index: int, fps: float, frame_rate: float) -> int:
    """Label Studio's 1-based frame number of the video's decoded frame `index` (0-based)."""
    return int(round(index * frame_rate / fps)) + 1


def video_regions(control: Control, frames: list[TrackedFrame], info: VideoInfo, frame_rate: float) -> list[dict]:
    """One `videorectangle` region per track whose majority class has a label, in order of first appearance."""
    tracks: dict[int, list[tuple[int, np.ndarray, float, str]]] = defaultdict(list)
    for frame in frames:
        for track_id, box, score, class_name in zip(frame.track_ids, frame.boxes, frame.scores, frame.class_names):
            tracks[int(track_id)].append((frame.index, box, float(score), class_name))
    duration = info.frame_count / info.fps
    regions = []
    for items in tracks.values():
        votes = Counter(control.label_for(class_name) for *_, class_name in items)
        votes.pop(None, None)
        if not votes:
            continue
        label = max(votes, key=lambda name: (votes[name], -list(votes).index(name)))  # ties: first seen
        sequence = track_sequence(items, info, frame_rate)
        regions.append({
            "id": uuid.uuid4().hex[:10],
            "from_name": control.name,
            "to_name": control.to_name,
            "type": control.type,
            "value": {"sequence": sequence, "labels": [label], "framesCount": math.ceil(duration * frame_rate - 1e-9),
                      "duration": duration},
            "score": round(float(np.mean([score for _, _, score, _ in items])), 6),
            "origin": "prediction",
        })
    return regions


def track_sequence(items: list[tuple[int, np.ndarray, float, str]], info: VideoInfo, frame_rate: float) -> list[dict]:
    """Keyframes of one track: (decoded index, xyxy box, score, class) per frame it was found in."""
    keyframes: list[list] = []  # [Label Studio frame, first decoded index, last decoded index, box]
    for index, box, _, _ in items:
        frame = label_studio_frame(index, info.fps, frame_rate)
        if keyframes and keyframes[-1][0] == frame:
            keyframes[-1][2] = index  # several decoded frames in one Label Studio frame: the first one's box
        else:
            keyframes.append([frame, index, index, box])
    sequence = []
    for position, (frame, _, last, box) in enumerate(keyframes):
        goes_on = position + 1 < len(keyframes) and keyframes[position + 1][1] == last + 1
        sequence.append({"frame": frame, "enabled": goes_on, "rotation": 0,
                         **box_to_ls_rect(tuple(box), info.width, info.height), "time": frame / frame_rate})
    return sequence
