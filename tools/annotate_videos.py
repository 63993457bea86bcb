"""annotate_dir's videos: with --ls_video_tasks, each video file in the folder becomes one Label Studio
task with VideoRectangle predictions, tracked as tools.track_video tracks them (the backend's tracking,
without /predict's time limit).

The tasks are for a video project, so they go to their own file. Their config is --label_config when it
has a VideoRectangle, else one made for the detection or segmentation model (`video_label_config`):
a <Video frameRate="$fps"> whose tasks carry each file's own frame rate, so Label Studio's frames are
the file's frames. A video that cannot be decoded is left out and reported.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from formats.label_config import parse_label_config
from backend.models.cache import ModelPathError
from backend.models.yolo_track import VideoError
from backend.settings import Settings
from tools.annotate_options import AnnotateError, AnnotateOptions, image_files, local_files_url
from tools.annotate_tasks import load_model
from formats.ls_export import Summary
from tools.track_video import video_controls, video_task

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v"}


def video_label_config(class_names: list[str]) -> str:
    """Label Studio's video object tracking template with the model's classes as labels."""
    labels = "".join(f"<Label value={quoteattr(name)}/>" for name in class_names)
    return ('<View><Video name="video" value="$video" frameRate="$fps"/>'
            f'<Labels name="videoLabels" toName="video">{labels}</Labels>'
            '<VideoRectangle name="box" toName="video"/></View>')


def video_config(label_config: str | None, services, settings: Settings) -> str:  # noqa: ANN001 - backend Services
    """--label_config when it has a VideoRectangle, else the config made for the settings' detection model
    (--model); raises ModelPathError for a model that does not track."""
    if label_config and any(c.tag == "VideoRectangle" for c in parse_label_config(label_config).prediction_controls):
        return label_config
    model = load_model(services, settings.yolo_det_model, "--model")
    if model.task not in ("detect", "segment"):
        raise ModelPathError(f"videos are tracked with a detection or segmentation model; '{settings.yolo_det_model}' "
                             f"is a YOLO {model.task} model")
    return video_label_config(list(model.class_names))


@dataclass
class VideoRun:
    tasks: int = 0
    tracks: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video, why)


def write_video_tasks(videos: list[tuple[Path, str]], label_config: str, settings: Settings, out: Path) -> VideoRun:
    """Track each (video file, its task URL) and write the tasks as a JSON array to `out`."""
    controls = video_controls(label_config)
    run = VideoRun()
    tasks = []
    for video, url in videos:
        try:
            tasks.append(video_task(video, url, controls, settings))
        except VideoError as exc:
            run.failures.append((str(video), str(exc)))
    run.tasks, run.tracks = len(tasks), sum(len(task["predictions"][0]["result"]) for task in tasks)
    out.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    return run


def folder_videos(options: AnnotateOptions) -> list[tuple[Path, str]]:
    """(video file, its Local Storage URL) of each video in the folder, for --ls_video_tasks."""
    if not isinstance(options.images_dir, Path):
        raise AnnotateError("--ls_video_tasks is for a local folder")
    ls_root = (options.ls_root or options.images_dir).expanduser().resolve()
    return [(path, local_files_url(path.relative_to(ls_root).as_posix()))
            for path in image_files(options.images_dir, VIDEO_SUFFIXES)]


def track_videos(videos: list[tuple[Path, str]], video_xml: str, settings: Settings, work_dir: Path, out: Path,
                 summary: Summary) -> None:
    """The videos' Label Studio tasks written to `out`, counted in `summary`."""
    run = write_video_tasks(videos, video_xml, settings, work_dir / "video-tasks.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(work_dir / "video-tasks.json", out)
    summary.outputs.append(out)
    summary.regions["video track"] += run.tracks
    for video, reason in run.failures:
        summary.skip_task(video, "unreadable video", reason)
