"""What tools/annotate_dir.py is asked to do, shared with its pose/OBB/classification outputs
(tools/annotate_tasks.py) and videos (tools/annotate_videos.py): the options, the backend settings they
make (a TOML file, `--with key=value`, the options), the folder's files and their Local Storage URLs,
and the labeling config made for a detection or segmentation model.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

from backend.settings import Settings, SettingsError
from tools.remote_files import remote_settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SHAPE_TAGS = {"boxes": "RectangleLabels", "polygons": "PolygonLabels", "masks": "BrushLabels"}


class AnnotateError(Exception):
    """A user error; the message says what to fix."""


def image_files(images_dir: Path, suffixes: set[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files under the folder, sorted; hidden files and folders are left out."""
    return sorted(path for path in images_dir.rglob("*")
                  if path.suffix.lower() in suffixes and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(images_dir).parts))


def local_files_url(relative: str) -> str:
    return "/data/local-files/?d=" + quote(relative)


def local_files_path(url: str) -> str:
    return unquote(parse_qs(urlparse(url).query)["d"][-1])


def label_config_xml(class_names: list[str], shape: str) -> str:
    """A labeling config with one control of the shape's tag whose labels are the model's classes."""
    tag = SHAPE_TAGS[shape]
    labels = "".join(f"<Label value={quoteattr(name)}/>" for name in class_names)
    return f'<View><Image name="image" value="$image"/><{tag} name="label" toName="image">{labels}</{tag}></View>'


def load_toml_settings(path: Path) -> dict[str, object]:
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotateError(f"cannot read --config '{path}': {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AnnotateError(f"--config '{path}' is not valid TOML: {exc}") from None
    nested = [key for key, value in values.items() if isinstance(value, (dict, list))]
    if nested:
        raise AnnotateError(f"--config '{path}': settings are plain `key = value` lines; '{nested[0]}' is not")
    return values


def parse_with(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AnnotateError(f"--with expects key=value, got '{pair}'")
        overrides[key] = value
    return overrides


@dataclass(frozen=True)
class AnnotateOptions:
    images_dir: Path | str  # a folder, or a cloud storage root URL (s3://, gs://, az://)
    out_dir: Path | None = None  # default: images_dir
    model: str | None = None  # a .pt file, or a name inside MODEL_ROOT; default: the settings' YOLO_SEG_MODEL
    shape: str | None = None  # boxes | polygons | masks; default: polygons for segmentation models (or SAM)
    settings_file: Path | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    sam_checkpoint: str | None = None  # "" enables SAM with the configured checkpoint
    ls_tasks: Path | None = None
    ls_root: Path | None = None  # the Local Storage root the tasks' URLs are relative to; default: images_dir
    batch: int = 32
    progress: bool = False
    ray: str | None = None  # None: this process; "local": a local Ray; else a Ray cluster address
    storage_options: tuple[tuple[str, Any], ...] = ()  # fsspec options for a cloud root, over STORAGE_OPTIONS
    label_config: Path | None = None  # a labeling config to predict; default: one made for the model's task
    ls_video_tasks: Path | None = None  # also track the folder's videos into Label Studio tasks written here


def annotate_settings(options: AnnotateOptions, environ: dict[str, str]) -> Settings:
    values: dict[str, object] = load_toml_settings(options.settings_file) if options.settings_file else {}
    values.update(dict(options.overrides))
    if isinstance(options.images_dir, str):
        values.update(remote_settings(options.storage_options, values, environ))
    else:
        values["local_files_document_root"] = str(options.images_dir)
    if options.model:
        model_file = Path(options.model).expanduser()
        if model_file.is_file():
            values["model_root"] = str(model_file.resolve().parent)
            model_name = model_file.name
        else:
            model_name = options.model
        for key in ("yolo_det_model", "yolo_seg_model", "yolo_pose_model", "yolo_obb_model", "yolo_cls_model"):
            values[key] = model_name
    if options.sam_checkpoint is not None:
        values["model_name"] = values.get("model_name") or "sam"
        values["yolo_sam"] = True
        if options.sam_checkpoint:
            values["sam_checkpoint_file"] = options.sam_checkpoint
    try:
        settings = Settings.load(values, environ=environ)
    except SettingsError as exc:
        raise AnnotateError(str(exc)) from None
    # One model serves every shape: without --model, the segmentation model unless --shape boxes.
    model = settings.yolo_det_model if options.shape == "boxes" and not options.model else settings.yolo_seg_model
    return dataclasses.replace(settings, yolo_det_model=model, yolo_seg_model=model)
