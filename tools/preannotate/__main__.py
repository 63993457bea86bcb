"""The command line of `python -m tools.preannotate` (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from backend.prediction.clusters import min_images
from backend.settings import Settings, SettingsError
from tools.annotate_options import AnnotateError, load_toml_settings, parse_with
from tools.preannotate.client import RetryPolicy
from tools.preannotate.job import JobOptions, JobSummary, run_local
from tools.preannotate.predicting import JobError
from tools.remote_files import RootError, parse_option_pairs, storage_options_json

EXIT_ERROR = 1
EXIT_TASKS_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.preannotate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict every task of a Label Studio project with the backend's models and write the predictions "
                    "into Label Studio. Tasks that already hold a prediction of the current model version are skipped, "
                    "so a rerun goes on where a stopped run ended.")
    parser.add_argument("--ls_url", default=os.environ.get("LABEL_STUDIO_URL", ""),
                        help="Label Studio URL (default: LABEL_STUDIO_URL)")
    parser.add_argument("--api_key", default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
                        help="legacy API token or personal access token (default: LABEL_STUDIO_API_KEY)")
    parser.add_argument("--project", type=int, required=True, help="project id")
    parser.add_argument("--config", type=Path, default=None, help="TOML file of backend settings (key = value)")
    parser.add_argument("--with", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="backend settings, e.g. --with yolo_det_model=demo-shapes-det.pt device=cuda:0")
    parser.add_argument("--batch", type=int, default=0,
                        help="tasks per prediction call and per bulk import (default: BATCH_SIZE; x4 on GPU actors)")
    parser.add_argument("--page_size", type=int, default=100, help="tasks read per API page (default 100)")
    parser.add_argument("--limit", type=int, default=None, help="only the project's first N tasks (by id)")
    parser.add_argument("--dry_run", action="store_true", help="predict, but write nothing into Label Studio")
    parser.add_argument("--clusters", type=int, default=0, metavar="K",
                        help="give each prediction a cluster (0..K-1, K <= 64) of the project's images by the YOLO "
                             "backbone's features, for uncertainty sampling; the first batch (at least 3K tasks) "
                             "makes the project's centres in MODEL_ROOT (the CLUSTERS setting)")
    parser.add_argument("--retries", type=int, default=8, help="tries per Label Studio request on 429/5xx/no answer (default 8)")
    storage = parser.add_argument_group("cloud storage images (s3://, gs://, azure-blob://)")
    storage.add_argument("--read_storage", choices=("presign", "direct"), default=None,
                         help="presign: Label Studio presigns each image URL (default, STORAGE_READ); direct: read the "
                              "bucket with this job's own credentials through fsspec (pip install -e '.[remote]'), "
                              "e.g. on a Ray cluster in the bucket's cloud")
    storage.add_argument("--storage_option", dest="storage_options", metavar="KEY=VALUE", action="append", default=[],
                         help="fsspec option for direct reads, repeatable, e.g. endpoint_url=http://minio:9000")
    ray = parser.add_argument_group("Ray (pip install -e '.[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run on Ray Data: without ADDRESS a local Ray is started; 'auto' or ray://host:10001 joins a cluster")
    ray.add_argument("--actors", type=int, default=0,
                     help="model actors (default: one per GPU, else one per CPU core of the cluster)")
    ray.add_argument("--gpus_per_actor", type=float, default=None, help="default: 1 when the cluster has GPUs, else 0")
    ray.add_argument("--cpus_per_actor", type=float, default=1.0, help="CPUs per model actor (default 1)")
    ray.add_argument("--max_inflight", type=int, default=2, help="concurrent prediction imports into Label Studio (default 2)")
    return parser


def job_settings(settings_file: Path | None, overrides: list[str], read_storage: str | None = None,
                 storage_options: list[str] | None = None) -> Settings:
    try:
        values: dict[str, object] = load_toml_settings(settings_file) if settings_file else {}
        values.update(parse_with(overrides))
        if storage_options:
            values["storage_options"] = storage_options_json(tuple(parse_option_pairs(storage_options).items()), values,
                                                             dict(os.environ))
        if read_storage:
            values["storage_read"] = read_storage
        return Settings.load(values, environ=dict(os.environ))
    except (AnnotateError, SettingsError, RootError) as exc:
        raise JobError(str(exc)) from None


def run(args: argparse.Namespace) -> JobSummary:
    if not args.ls_url or not args.api_key:
        raise JobError("--ls_url and --api_key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY) are required")
    for name in ("batch", "page_size", "limit", "retries", "actors", "max_inflight"):
        value = getattr(args, name)
        if value is not None and value < (1 if name in ("page_size", "retries", "max_inflight") else 0):
            raise JobError(f"--{name} must be at least {1 if name in ('page_size', 'retries', 'max_inflight') else 0}")
    settings = job_settings(args.config, args.overrides + ([f"clusters={args.clusters}"] if args.clusters else []),
                            args.read_storage, args.storage_options)
    batch = max(args.batch or settings.batch_size, min_images(settings.clusters)) if settings.clusters else args.batch
    options = JobOptions(args.ls_url, args.api_key, args.project, settings,
                         batch=batch, page_size=args.page_size, limit=args.limit, dry_run=args.dry_run,
                         retry=RetryPolicy(attempts=args.retries), progress=True)
    if args.ray is None:
        return run_local(options)
    from tools.preannotate.ray_job import RayOptions, run_on_ray

    return run_on_ray(options, RayOptions(address=args.ray, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                                          cpus_per_actor=args.cpus_per_actor, max_inflight=args.max_inflight))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; predictions written so far are kept, run again to go on", file=sys.stderr)
        return 130
    print(summary.report())
    return 0 if summary.ok else EXIT_TASKS_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
