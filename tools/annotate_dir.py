"""Offline auto-annotation of a folder of images -> COCO (CVAT-importable) and Label Studio tasks.

    python -m tools.annotate_dir IMAGES_DIR [--model models/demo-shapes-seg.pt] [--config config.toml]
        [--shape boxes|polygons|masks] [--sam [CHECKPOINT]] [--label_config config.xml] [--out_dir DIR]
        [--ls_tasks tasks.json]

Runs the backend itself (settings, models, batch predictor, image loading) over every image in
IMAGES_DIR (recursively), then converts the predictions with the same code as the Label Studio
export converter. Writes DIR/annotations/instances_default.json (DIR defaults to IMAGES_DIR; the
file names in it are relative to IMAGES_DIR, as CVAT's COCO import expects) and, with --ls_tasks,
Label Studio tasks with these predictions, to import into a project whose Local Storage (or
LOCAL_FILES_DOCUMENT_ROOT) serves --ls_root. Files that cannot be read are skipped and reported.
`--config` takes a TOML file of backend settings (the README's `--with` keys); `--with key=value`
and the options here override it. Pose, OBB and classification models (or a labeling config with
KeyPointLabels, Choices, Taxonomy) also write COCO keypoints and image classes (tools/annotate_tasks.py),
and --ls_video_tasks tracks the folder's videos (tools/annotate_videos.py). IMAGES_DIR may be a
bucket: `s3://bucket/prefix`, `gs://...`, `az://container/prefix` (tools/remote_files.py; each image
is read by the process that predicts it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from backend.settings import Settings, SettingsError
from backend.sources.object_storage import parse_storage_options
from formats.coco_dataset import write_coco
from formats.export_images import PlacedImage
from formats.label_config import LabelConfigError, parse_label_config
from formats.ls_export import CategoryIndex, Selection, Summary, label_config_classes
from formats.staging import staged_output
from tools.annotate_options import (IMAGE_SUFFIXES, SHAPE_TAGS, AnnotateError, AnnotateOptions, annotate_settings, image_files,
                                    local_files_path, local_files_url, parse_with)
from tools.convert_to_rle_mask_coco import EXIT_STRICT, run_and_report
from tools.preannotate.predicting import model_version
from tools.remote_files import RemoteImages, RootError, image_root, parse_option_pairs

COCO_NAME = "instances_default.json"

logger = logging.getLogger(__name__)


class FolderImages:
    """Images stay where they are; COCO file names are their paths relative to the folder, task URLs
    Local Storage URLs relative to `ls_root`."""

    def __init__(self, images_dir: Path, ls_root: Path) -> None:
        self.images_dir = images_dir
        self._ls_root = ls_root
        self._sizes: dict[str, tuple[int, int]] = {}

    def list_urls(self, suffixes: set[str]) -> list[str]:
        return [local_files_url(path.relative_to(self.images_dir).as_posix()) for path in image_files(self.images_dir, suffixes)]

    def name(self, url: str) -> str:
        return local_files_path(url)

    def ls_url(self, url: str) -> str:
        return local_files_url((self.images_dir / local_files_path(url)).relative_to(self._ls_root).as_posix())

    def note_size(self, url: str, size: tuple[int, int]) -> None:
        self._sizes[url] = size

    def place(self, url: str, task_id: object) -> PlacedImage:
        relative = local_files_path(url)
        return PlacedImage(relative, self.images_dir / relative, "in place", size=self._sizes.pop(url, None))


def folder_images(options: AnnotateOptions) -> FolderImages:
    images_dir = Path(options.images_dir).expanduser().resolve()
    if not images_dir.is_dir():
        raise AnnotateError(f"'{options.images_dir}' is not a folder")
    ls_root = (options.ls_root or images_dir).expanduser().resolve()
    if not images_dir.is_relative_to(ls_root):
        raise AnnotateError(f"--ls_root '{ls_root}' must contain the images folder '{images_dir}'")
    return FolderImages(images_dir, ls_root)


def remote_images(options: AnnotateOptions, settings: Settings) -> RemoteImages:
    if options.out_dir is None:
        raise AnnotateError(f"--out_dir is required: the images are in '{options.images_dir}'")
    if options.ls_root is not None:
        raise AnnotateError("--ls_root is for local folders: tasks of a cloud storage root hold the images' URLs")
    return RemoteImages(str(options.images_dir), parse_storage_options(settings.storage_options))


def annotate(options: AnnotateOptions, environ: dict[str, str] | None = None) -> Summary:
    """Predict every image of the folder and write the outputs; raises AnnotateError for user errors."""
    from backend.serving.app import build_services
    from backend.models.cache import ModelPathError
    from backend.prediction.predictor import PredictionConfigError
    from tools.annotate_tasks import TaskOutputs, model_label_config, read_label_config
    from tools.annotate_videos import folder_videos, track_videos, video_config

    if options.batch < 1:
        raise AnnotateError("--batch must be at least 1")
    local = folder_images(options) if isinstance(options.images_dir, Path) else None
    if local is not None:
        options = dataclasses.replace(options, images_dir=local.images_dir)
    try:
        settings = annotate_settings(options, dict(os.environ) if environ is None else environ)
        images = local or remote_images(options, settings)
        urls = images.list_urls(IMAGE_SUFFIXES)
    except RootError as exc:
        raise AnnotateError(str(exc)) from None
    videos = folder_videos(options) if options.ls_video_tasks else []
    if not urls and not videos:
        raise AnnotateError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{options.images_dir}'")
    try:
        services = build_services(settings)
        config_xml = read_label_config(options.label_config) if options.label_config else model_label_config(
            services, settings, options.shape)
        class_names = label_config_classes(config_xml)[0]
        folder_predictor = FolderPredictor(settings, config_xml, services)
        folder_predictor.check()
        video_xml = video_config(config_xml if options.label_config else None, services, settings) if videos else None
    except (ModelPathError, SettingsError, ImportError, OSError, LabelConfigError, PredictionConfigError) as exc:
        raise AnnotateError(str(exc)) from None
    unreadable: list[tuple[int, str, str]] = []
    in_process = folder_predictor if options.ray is None else None
    version = in_process.version if in_process is not None else model_version(services, parse_label_config(config_xml))

    def predicted_tasks(ls_out: LsTasksWriter | None) -> Iterator[dict]:
        tasks = [{"id": index, "data": {"image": url}} for index, url in enumerate(urls, 1)]
        chunks = [tasks[start:start + options.batch] for start in range(0, len(tasks), options.batch)]
        results = (map(in_process.predict, chunks) if in_process is not None
                   else ray_predictions(chunks, settings, config_xml, options.ray))
        with tqdm(total=len(tasks), unit="img", desc="predicting", disable=not options.progress or None) as bar:
            for chunk_results in results:
                for task, prediction, failure in chunk_results:
                    url = task["data"]["image"]
                    if failure:
                        unreadable.append((task["id"], images.name(url), failure))
                        continue
                    size = task.pop("image_size")
                    images.note_size(url, size)
                    task["predictions"] = [prediction]
                    if ls_out is not None:
                        ls_out.add(task, images.ls_url(url))
                    yield task_outputs.add(task, images.name(url), size)
                bar.update(len(chunk_results))

    out_dir = Path(options.out_dir or options.images_dir).expanduser()
    info = {"description": f"auto-annotated by tools.annotate_dir with {version}", "version": "1.0"}
    try:
        with staged_output(out_dir) as staging:
            ls_out = LsTasksWriter(staging.work / "tasks.json") if options.ls_tasks else None
            task_outputs = TaskOutputs(parse_label_config(config_xml), services, settings, staging.work,
                                       named_by_config=options.label_config is not None)
            # Without RectangleLabels, PolygonLabels or BrushLabels there are no instances to publish.
            instances_dir = staging.publish if class_names and urls else staging.work
            summary = write_coco(predicted_tasks(ls_out), Selection(use_predictions=True), CategoryIndex(class_names),
                                 images, "image", instances_dir / "annotations" / COCO_NAME,
                                 staging.work, info)
            if class_names and urls:
                summary.outputs.append(out_dir / "annotations" / COCO_NAME)
            if video_xml is not None:
                track_videos(videos, video_xml, settings, staging.work, options.ls_video_tasks, summary)
            for path in task_outputs.write(staging.publish / "annotations", info):
                summary.outputs.append(out_dir / "annotations" / path.name)
            summary.regions.update(task_outputs.counts)
            if ls_out is not None:
                ls_out.close()
                options.ls_tasks.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(ls_out.path, options.ls_tasks)
                summary.outputs.append(options.ls_tasks)
    except OSError as exc:
        raise AnnotateError(f"cannot write to '{out_dir}': {exc}") from None
    for task_id, relative, reason in unreadable:
        summary.tasks += 1
        summary.skip_task(task_id, "unreadable image")
        summary.note(f"{relative}: {reason}")
    return summary


def predict_each(predictor, tasks: list[dict], config, version: str) -> Iterator[tuple[dict, dict | None, str | None]]:  # noqa: ANN001
    """(task, prediction, failure) for each task: one predictor call for the batch; if that call
    fails, the batch again image by image, so a file that breaks the call costs only itself."""
    from backend.models.cache import ModelPathError
    from backend.prediction.predictor import PredictionConfigError

    try:
        predictions = predictor.predict(tasks, config, None, version)
    except (ModelPathError, PredictionConfigError) as exc:
        raise AnnotateError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure of the call: find the file that caused it
        if len(tasks) == 1:
            yield tasks[0], None, f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            for task in tasks:
                yield from predict_each(predictor, [task], config, version)
        return
    yield from ((task, prediction, None) for task, prediction in zip(tasks, predictions))


class FolderPredictor:
    """The backend's predictor for one labeling config, telling which images could not be read."""

    def __init__(self, settings: Settings, config_xml: str, services=None) -> None:  # noqa: ANN001 - backend Services
        from backend.serving.app import build_services
        from backend.prediction.predictor import BatchPredictor

        self._services = services or build_services(settings)
        self._config = parse_label_config(config_xml)
        self.version = model_version(self._services, self._config)
        self._loaded: dict[str, tuple[int, int]] = {}  # URL -> (width, height) of each image read
        interactive = self._services.interactive
        box_segmenter = interactive.masks_for_boxes if settings.yolo_sam and interactive else None
        self._predictor = BatchPredictor(settings, self._services.yolo, self._services.fetcher,
                                         box_segmenter=box_segmenter, on_image=self._note_image)

    def _note_image(self, image) -> None:  # noqa: ANN001 - backend.sources.images.TaskImage
        self._loaded[image.url] = (image.width, image.height)

    def check(self) -> None:
        """Raises ModelPathError / PredictionConfigError when a control's model is missing or of the wrong task."""
        self._predictor.plan(self._config)

    def predict(self, tasks: list[dict]) -> list[tuple[dict, dict | None, str | None]]:
        self._loaded.clear()
        results = []
        for task, prediction, failure in predict_each(self._predictor, tasks, self._config, self.version):
            url = task["data"]["image"]
            if not failure and url not in self._loaded:
                failure = _unreadable_reason(self._services.fetcher, url)
            if not failure and not prediction:  # not predicted although it loads: the predictor's warning says why
                failure = "no prediction (the warning for the batch says why)"
            if not failure:
                task["image_size"] = self._loaded[url]  # the size COCO records, without reading the image again
            results.append((task, prediction, failure))
        return results


def ray_predictions(chunks: list[list[dict]], settings: Settings, config_xml: str,
                    address: str) -> Iterator[list[tuple[dict, dict | None, str | None]]]:
    """The chunks predicted by Ray actors (one model instance each), in order."""
    try:
        import ray
    except ImportError:
        raise AnnotateError("--ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False if address == "local" else None, log_to_driver=False)
    resources = ray.cluster_resources()
    n_actors = max(1, int(resources.get("GPU", 0) or resources.get("CPU", 1)))
    gpus = 1 if resources.get("GPU", 0) else 0
    predictor = ray.remote(FolderPredictor).options(max_restarts=-1, max_task_retries=3, num_gpus=gpus,
                                                    num_cpus=0 if gpus else 1)
    actors = [predictor.remote(settings, config_xml) for _ in range(n_actors)]
    pool = ray.util.ActorPool(actors)
    yield from pool.map(lambda actor, chunk: actor.predict.remote(chunk), chunks)


def _unreadable_reason(fetcher, url: str) -> str:  # noqa: ANN001 - backend.sources.images.ImageFetcher
    from backend.sources.images import ImageError

    try:
        fetcher.load(url, None, None)
    except ImageError as exc:
        return str(exc)
    return "the model could not process it"


class LsTasksWriter:
    """A Label Studio tasks file (JSON array) written one task at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] = open(path, "w", encoding="utf-8")
        self._count = 0

    def add(self, task: dict, image_url: str) -> None:
        record = {"data": {"image": image_url}, "predictions": task["predictions"]}
        self._out.write(("[\n" if self._count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        self._count += 1

    def close(self) -> None:
        self._out.write("\n]\n" if self._count else "[]\n")
        self._out.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.annotate_dir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images_dir", help="folder of images (searched recursively), or a bucket prefix: s3://bucket/prefix, "
                                            "gs://bucket/prefix, az://container/prefix (pip install -e '.[remote]')")
    parser.add_argument("--model", default=None,
                        help="YOLO model: a .pt file, or a name in MODEL_ROOT (default: the settings' YOLO_SEG_MODEL)")
    parser.add_argument("--config", type=Path, default=None, help="TOML file of backend settings (key = value)")
    parser.add_argument("--with", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="backend settings, e.g. --with model_score_threshold=0.3 device=cpu")
    parser.add_argument("--shape", choices=list(SHAPE_TAGS), default=None,
                        help="boxes, polygons or masks (RLE); default: polygons for segmentation models and --sam, else boxes")
    parser.add_argument("--sam", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="masks from SAM prompted with the YOLO boxes (MODEL_NAME=sam, YOLO_SAM=true); "
                             "optionally the SAM checkpoint file")
    parser.add_argument("--label_config", type=Path, default=None,
                        help="labeling config to predict (its controls' model_path, else --model or the settings' "
                             "models); default: one made for --model's task")
    parser.add_argument("--ls_video_tasks", type=Path, default=None,
                        help="also track the folder's videos (.mp4 .webm .mov .avi .mkv .m4v) with the detection model "
                             "and write one Label Studio task per video here (a video project's tasks)")
    parser.add_argument("--out_dir", type=Path, default=None,
                        help="writes OUT_DIR/annotations/instances_default.json (default: IMAGES_DIR)")
    parser.add_argument("--ls_tasks", type=Path, default=None, help="also write Label Studio tasks with predictions here")
    parser.add_argument("--ls_root", type=Path, default=None,
                        help="Label Studio Local Storage root the task URLs are relative to (default: IMAGES_DIR)")
    parser.add_argument("--batch", type=int, default=32, help="images per prediction call (default 32)")
    parser.add_argument("--strict", action="store_true", help=f"exit with {EXIT_STRICT} if any file was skipped")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="predict on Ray actors (pip install -e '.[ray]'): without ADDRESS a local Ray, "
                             "'auto' or ray://host:10001 a cluster")
    parser.add_argument("--storage_option", dest="storage_options", metavar="KEY=VALUE", action="append", default=[],
                        help="fsspec option for an s3/gs/az root, repeatable, e.g. endpoint_url=http://minio:9000 "
                             "(credentials: AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    def run() -> Summary:
        return annotate(AnnotateOptions(
            images_dir=image_root(args.images_dir), out_dir=args.out_dir, model=args.model, shape=args.shape,
            settings_file=args.config, overrides=tuple(parse_with(args.overrides).items()),
            sam_checkpoint=args.sam, ls_tasks=args.ls_tasks, ls_root=args.ls_root, batch=args.batch, progress=True,
            ray=args.ray, label_config=args.label_config, ls_video_tasks=args.ls_video_tasks,
            storage_options=tuple(parse_option_pairs(args.storage_options).items())))

    return run_and_report(run, args.strict, (AnnotateError, RootError))


if __name__ == "__main__":
    raise SystemExit(main())
