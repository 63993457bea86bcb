"""Label Studio JSON export -> COCO instance segmentation dataset (brush masks as RLE).

    python tools/convert_to_rle_mask_coco.py --json_file_path export.json --out_dir OUT \\
        [--classes cat dog] [--out_config mask-rcnn_r50_fpn|rtmdet-ins_s]

OpenMMLab label_anything's command line, made exact and complete: every image region type
(brushlabels as RLE, polygonlabels, rectanglelabels incl. rotated; keypoints are counted and
skipped), one image entry per task, bbox and area from the pixels, stable category ids, images
copied from Label Studio's media folder or downloaded, and a report of everything left out.
Writes OUT/annotations/ann.json, OUT/images/ and, with --out_config, an MMDetection config.
The export is streamed, so memory stays bounded however many tasks it holds. The conversion is
formats/coco_dataset.py; images not on disk are downloaded by backend/sources/export_downloads.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: make the repository's `tools` and `backend` packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
from collections.abc import Callable  # noqa: E402

from backend.sources.export_downloads import ExportDownloader  # noqa: E402
from formats.coco_dataset import convert  # noqa: E402
from formats.conversion import ConversionError, ConvertOptions  # noqa: E402
from formats.export_images import ImageSources, default_local_files_root, default_ls_data_dir  # noqa: E402
from formats.ls_export import Selection, Summary, parse_class_list  # noqa: E402
from formats.mmdet_config import MODELS  # noqa: E402

EXIT_ERROR = 1
EXIT_STRICT = 3


def add_image_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the images are")
    group.add_argument("--ls_data_dir", type=Path, default=None,
                       help="Label Studio's data directory; uploads are read from <dir>/media/upload "
                            f"(default: as Label Studio sets it, here {default_ls_data_dir()})")
    group.add_argument("--local_files_root", type=Path, default=None,
                       help="root of /data/local-files/?d= paths (default: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    group.add_argument("--image_root", type=Path, default=None,
                       help="a folder holding the images, by Label Studio path or file name (searched first)")
    group.add_argument("--ls_url", default=os.environ.get("LABEL_STUDIO_URL", ""),
                       help="Label Studio URL, to download images not found on disk (default: LABEL_STUDIO_URL)")
    group.add_argument("--api_key", default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
                       help="Label Studio API key or personal access token (default: LABEL_STUDIO_API_KEY)")
    group.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one download (default 30)")


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to convert")
    group.add_argument("--classes", nargs="+", default=[],
                       help="category names in id order (space or comma separated); other labels are skipped. "
                            "Default: --label_config order, else the order labels are first seen")
    group.add_argument("--label_config", type=Path, default=None,
                       help="the project's labeling config XML: fixes category order and the image key")
    group.add_argument("--all_annotations", action="store_true",
                       help="convert every non-cancelled annotation of a task (default: only the latest)")
    group.add_argument("--predictions", action="store_true", help="convert the tasks' predictions instead of annotations")
    group.add_argument("--image_key", default=None, help="task data key of the image URL (default: 'image' or the config's)")
    group.add_argument("--strict", action="store_true",
                       help=f"exit with {EXIT_STRICT} if anything was skipped or an image is missing")


def image_sources_from_args(args: argparse.Namespace) -> ImageSources:
    return ImageSources(ls_data_dir=(args.ls_data_dir or default_ls_data_dir()).expanduser(),
                        local_files_root=args.local_files_root or default_local_files_root(),
                        image_root=args.image_root, ls_url=args.ls_url, api_key=args.api_key, timeout=args.timeout,
                        downloader=ExportDownloader)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_to_rle_mask_coco", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_file_path", type=Path, required=True, help="the Label Studio JSON export")
    parser.add_argument("--out_dir", type=Path, required=True, help="output folder (annotations/, images/)")
    parser.add_argument("--out_config", default=None, choices=list(MODELS), help="also write an MMDetection config")
    parser.add_argument("--ann_name", default="ann", help="annotation file name without .json (default: ann)")
    add_selection_arguments(parser)
    add_image_source_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ConvertOptions(
        json_file_path=args.json_file_path, out_dir=args.out_dir, classes=tuple(parse_class_list(args.classes)),
        label_config=args.label_config, out_config=args.out_config, ann_name=args.ann_name,
        selection=Selection(use_predictions=args.predictions, all_annotations=args.all_annotations),
        image_key=args.image_key, sources=image_sources_from_args(args), progress=True)
    return run_and_report(lambda: convert(options), args.strict, ConversionError)


def run_and_report(run: Callable[[], Summary], strict: bool, errors: type[Exception] | tuple[type[Exception], ...]) -> int:
    """A tool's exit status: its summary and category list printed (OpenMMLab's script prints the
    categories last), a clear message for `errors` and interruptions, EXIT_STRICT if `strict` and
    anything was skipped."""
    try:
        summary = run()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(summary.report())
    print(summary.categories)
    if strict and summary.skipped_anything:
        print("error: --strict: some tasks, regions or images were skipped (see above)", file=sys.stderr)
        return EXIT_STRICT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
