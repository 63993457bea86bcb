"""Label Studio JSON export -> COCO instance segmentation dataset (brush masks as RLE): the core of
tools/convert_to_rle_mask_coco.py (its command line) and of tools/annotate_dir.py's COCO file.

Writes OUT/annotations/<ann_name>.json, OUT/images/ and, with `out_config`, an MMDetection config,
all or nothing (formats/staging.py). The export is streamed, so memory stays bounded however many
tasks it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from formats.coco import CocoWriter, coco_categories, coco_image, region_annotation
from formats.conversion import ConversionError, ConvertOptions, default_sources, fixed_classes
from formats.export_images import ExportImages, ImageLocator
from formats.ls_export import CategoryIndex, ExportError, ImagePlacement, Selection, Summary, convert_tasks, iter_export_tasks
from formats.mmdet_config import MODELS, mmdet_config
from formats.staging import staged_output


def write_coco(tasks: Iterable[dict], selection: Selection, categories: CategoryIndex, images: ImagePlacement,
               image_key: str | None, ann_path: Path, work_dir: Path, info: dict) -> Summary:
    """Convert `tasks` into the COCO file `ann_path`; images are placed by `images`."""
    summary = Summary()
    writer = CocoWriter(work_dir)
    try:
        for image_id, converted in enumerate(convert_tasks(tasks, selection, categories, images, image_key, summary), 1):
            summary.tasks_converted += 1
            writer.add_image(coco_image(image_id, converted.image.file_name, converted.width, converted.height,
                                        ls_task_id=converted.task_id))
            for region, category_id in converted.regions:
                writer.add_annotation(region_annotation(region, writer.n_annotations + 1, image_id, category_id))
        summary.categories = categories.names
        writer.write(ann_path, coco_categories(summary.categories), info)
    finally:
        writer.close()
    return summary


def convert(options: ConvertOptions) -> Summary:
    """Run the conversion; raises ConversionError for user errors, leaving no partial output."""
    if options.out_config is not None and options.out_config not in MODELS:
        raise ConversionError(f"--out_config must be one of {', '.join(MODELS)}")
    if not options.ann_name or Path(options.ann_name).name != options.ann_name:
        raise ConversionError(f"--ann_name must be a file name without folders, not '{options.ann_name}'")
    if not options.json_file_path.is_file():
        raise ConversionError(f"the export '{options.json_file_path}' does not exist")
    names, config_key = fixed_classes(options)
    sources = options.sources or default_sources()
    ann_relative = f"annotations/{options.ann_name}.json"
    try:
        with staged_output(options.out_dir) as staging:
            images = ExportImages(ImageLocator(sources, staging.work / "downloads"), staging.publish / "images")
            tasks = iter_export_tasks(options.json_file_path, options.progress)
            info = {"description": f"Label Studio export {options.json_file_path.name}, converted by convert_to_rle_mask_coco",
                    "version": "1.0"}
            summary = write_coco(tasks, options.selection, CategoryIndex(names), images,
                                 options.image_key or config_key, staging.publish / ann_relative, staging.work, info)
            summary.outputs.append(options.out_dir / ann_relative)
            if options.out_config:
                config_path = staging.publish / f"{options.out_config}.py"
                config_path.write_text(mmdet_config(options.out_config, options.out_dir, ann_relative, "images/",
                                                    summary.categories), encoding="utf-8")
                summary.outputs.append(options.out_dir / config_path.name)
    except ExportError as exc:
        raise ConversionError(str(exc)) from None
    except OSError as exc:
        raise ConversionError(f"cannot write the dataset to '{options.out_dir}': {exc}") from None
    return summary
