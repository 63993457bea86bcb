"""What a conversion of a Label Studio export is asked to do (formats/coco_dataset.py,
formats/yolo_dataset.py), and the error that tells the user what to fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from formats.export_images import ImageSources, default_local_files_root, default_ls_data_dir
from formats.label_config import LabelConfigError
from formats.ls_export import Selection, label_config_classes


class ConversionError(Exception):
    """A user error (bad input file, bad option); the message says what to fix."""


@dataclass(frozen=True)
class ConvertOptions:
    json_file_path: Path
    out_dir: Path
    classes: tuple[str, ...] = ()
    label_config: Path | None = None
    out_config: str | None = None
    ann_name: str = "ann"
    selection: Selection = Selection()
    image_key: str | None = None
    sources: ImageSources | None = None  # None: Label Studio's folders on this machine, no downloads
    progress: bool = False


def default_sources() -> ImageSources:
    """Label Studio's folders on this machine, as Label Studio sets them; nothing is downloaded."""
    return ImageSources(default_ls_data_dir(), default_local_files_root())


def fixed_classes(options: ConvertOptions) -> tuple[list[str], str | None]:
    """Category names fixed up front (--classes, else the labeling config) and the config's image key."""
    config_names: list[str] = []
    config_key = None
    if options.label_config is not None:
        try:
            config_names, config_key = label_config_classes(options.label_config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConversionError(f"cannot read the labeling config '{options.label_config}': {exc.strerror or exc}") from None
        except LabelConfigError as exc:
            raise ConversionError(f"labeling config '{options.label_config}': {exc}") from None
        if not config_names:
            raise ConversionError(f"labeling config '{options.label_config}' has no RectangleLabels, PolygonLabels or BrushLabels labels")
    return (list(options.classes) or config_names), config_key
