"""Offline video pre-annotation: video files -> Label Studio tasks with VideoRectangle predictions.

    python -m tools.track_video VIDEO [VIDEO ...] --label_config label_configs/demo-shapes-video.xml \
        --out tasks.json [--model_root models] [--url_prefix "/data/local-files/?d=videos/"]

For videos longer than a /predict may take (VIDEO_TIME_LIMIT): the same tracking and regions as the
backend, without a time limit, one task per video, written as a JSON list to import into Label Studio
(each task's video URL is `--url_prefix` + the file name, e.g. a Local Storage path).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.prediction.video_regions import frame_rate_of, video_regions
from formats.label_config import Control, LabelConfigError, parse_label_config
from backend.models.cache import ModelPathError, resolve_model_path, select_device
from backend.models.yolo_track import VideoError, track_video
from formats.regions import prediction
from backend.settings import Settings
from backend.prediction.video import track_options


def video_controls(label_config: str) -> list[Control]:
    """The config's VideoRectangles; raises LabelConfigError when it has none."""
    controls = [c for c in parse_label_config(label_config).prediction_controls if c.tag == "VideoRectangle"]
    if not controls:
        raise LabelConfigError("the labeling config has no VideoRectangle to predict")
    return controls


def video_task(video: Path, url: str, controls: list[Control], settings: Settings) -> dict:
    """The Label Studio task of one video (at `url`) with the predictions of the VideoRectangles. A
    <Video frameRate="$key"> gets the video's own frame rate in the task's data[key]."""
    data: dict = {}
    regions = []
    for control in controls:
        data[control.data_key] = url
        model = resolve_model_path(settings.model_root_path, control.model_path or settings.yolo_det_model,
                                   f"model_path on <VideoRectangle name=\"{control.name}\">")
        info, frames = track_video(video, model, track_options(control, settings, select_device(settings.device)),
                                   float("inf"))
        if control.options.frame_rate.startswith("$"):
            data.setdefault(control.options.frame_rate[1:], info.fps)
        regions += video_regions(control, frames, info, frame_rate_of(control, data))
    version = ",".join(sorted({Path(c.model_path or settings.yolo_det_model).stem for c in controls}))
    print(f"{video}: {len(regions)} tracks", file=sys.stderr)
    return {"data": data, "predictions": [prediction(regions, version)]}


def video_tasks(videos: list[Path], label_config: str, settings: Settings, url_prefix: str) -> list[dict]:
    """One Label Studio task per video, with the predictions of every VideoRectangle in the config."""
    controls = video_controls(label_config)
    return [video_task(video, url_prefix + video.name, controls, settings) for video in videos]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--label_config", type=Path, required=True, help="labeling config with a VideoRectangle")
    parser.add_argument("--out", type=Path, required=True, help="tasks JSON to import into Label Studio")
    parser.add_argument("--model_root", default="models", help="directory model_path and tracker files are in")
    parser.add_argument("--url_prefix", default="/data/local-files/?d=", help="prefix of each task's video URL")
    args = parser.parse_args(argv)
    settings = Settings.load({"model_root": args.model_root})
    try:
        tasks = video_tasks(args.videos, args.label_config.read_text(), settings, args.url_prefix)
    except (LabelConfigError, ModelPathError, VideoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(tasks))
    print(f"wrote {len(tasks)} tasks to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
