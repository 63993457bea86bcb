"""The pre-annotation job on Ray Data: the same predictions as the single-process job, spread
over the machines of a Ray cluster.

    pages of tasks (read tasks)  ->  model actors (one model instance each, num_gpus / num_cpus)
      ->  writer actors (at most --max_inflight imports at a time)  ->  the driver counts outcomes

Tasks are read page by page in parallel and streamed; Ray Data's back-pressure keeps only a few
batches in flight, so memory does not grow with the project. An actor that dies is restarted and
its batch retried (a batch that kills its actor again and again stops the job after a few tries).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.sources.label_studio import Credentials
from backend.settings import Settings
from tools.preannotate.client import LabelStudioAPIError, ProjectClient, prediction_versions
from tools.preannotate.job import JobOptions, JobSummary, progress_bar, read_project, write_outcomes
from tools.preannotate.predicting import (SKIPPED, JobError, Outcome, TaskPredictor, build_backend,
                                          model_version, parse_config)

BATCH_RETRIES = 3  # tries of a batch whose actor died, before the job stops
GPU_BATCH_FACTOR = 4  # default batch on a GPU actor: this many times BATCH_SIZE
COLUMNS = ("task_id", "status", "reason", "detail", "prediction", "worker")


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": start Ray in this process; else ray.init(address) ("auto", "ray://host:10001")
    actors: int = 0  # 0: one per GPU of the cluster, else one per CPU core
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    max_inflight: int = 2  # writer actors: concurrent imports into Label Studio


def read_page(row: dict, client: ProjectClient, page_size: int, limit: int | None, version: str) -> list[dict]:
    """One page of tasks as rows: pending ones with their data, the others marked skipped."""
    page = int(row["id"]) + 1
    tasks, _ = client.task_page(page, page_size)
    if limit is not None:
        tasks = tasks[:max(0, limit - (page - 1) * page_size)]
    rows = []
    for task in tasks:
        skipped = version in prediction_versions(task)
        rows.append({"task_id": int(task["id"]), "data": "" if skipped else json.dumps(task.get("data") or {}),
                     "status": SKIPPED if skipped else ""})
    return rows


def _rows(outcomes: list[Outcome]) -> dict[str, np.ndarray]:
    pid = os.getpid()
    return {"task_id": np.array([o.task_id for o in outcomes], dtype=np.int64),
            "status": np.array([o.status for o in outcomes], dtype=object),
            "reason": np.array([o.reason for o in outcomes], dtype=object),
            "detail": np.array([o.detail for o in outcomes], dtype=object),
            "prediction": np.array([json.dumps(o.prediction) if o.prediction else "" for o in outcomes], dtype=object),
            "worker": np.full(len(outcomes), pid, dtype=np.int64)}


def _outcomes(batch: dict[str, np.ndarray]) -> list[Outcome]:
    return [Outcome(int(task_id), str(status), str(reason), str(detail), json.loads(prediction) if prediction else None)
            for task_id, status, reason, detail, prediction
            in zip(batch["task_id"], batch["status"], batch["reason"], batch["detail"], batch["prediction"])]


class PredictActor:
    """Holds one instance of the backend's models; predicts the pending tasks of each batch."""

    def __init__(self, settings: Settings, label_config: str, credentials: Credentials, version: str,
                 threads: int, project: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self._predictor = TaskPredictor(settings, label_config, credentials, project)
        if self._predictor.version != version:
            raise JobError(f"this Ray node's models give version {self._predictor.version}, the driver's {version}: "
                           "every node needs the same model files in MODEL_ROOT")
        self._predictor.check_models()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pending = [{"id": int(task_id), "data": json.loads(data)}
                   for task_id, data, status in zip(batch["task_id"], batch["data"], batch["status"]) if status != SKIPPED]
        predicted = {outcome.task_id: outcome for outcome in self._predictor.predict(pending)} if pending else {}
        return _rows([predicted.get(int(task_id)) or Outcome(int(task_id), SKIPPED) for task_id in batch["task_id"]])


class WriteActor:
    """Imports each batch's predictions into Label Studio (one request at a time per writer)."""

    def __init__(self, client: ProjectClient, dry_run: bool) -> None:
        self._client = None if dry_run else client

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = write_outcomes(self._client, _outcomes(batch))
        rows = _rows(outcomes)
        rows["worker"] = batch["worker"]
        rows["prediction"] = np.array([""] * len(outcomes), dtype=object)  # the driver needs no regions
        return rows


def _start_ray(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        # address="local": a new Ray even where a stale cluster address file is left in /tmp/ray
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def _actor_resources(ray_options: RayOptions) -> tuple[int, float, float]:
    import ray

    resources = ray.cluster_resources()
    gpus = ray_options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    cpus = ray_options.cpus_per_actor
    if ray_options.actors:
        return ray_options.actors, gpus, cpus
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus)), gpus, cpus
    return max(1, int(resources.get("CPU", 1) // max(cpus, 1e-3))), gpus, cpus


def run_on_ray(options: JobOptions, ray_options: RayOptions,
               on_outcome: Callable[[Outcome, int], None] | None = None) -> JobSummary:
    """The job on Ray; `on_outcome(outcome, worker pid)` sees each task's outcome on the driver."""
    try:
        import ray
    except ImportError:
        raise JobError("--ray needs Ray: pip install -e '.[ray]'") from None
    started = time.monotonic()
    client = options.client()
    label_config, total = read_project(client)
    config = parse_config(label_config)
    services = build_backend(options.settings)
    version = model_version(services, config, client.project_uid)
    del services
    _start_ray(ray_options.address)
    n_actors, gpus, cpus = _actor_resources(ray_options)
    batch = options.batch or options.settings.batch_size * (GPU_BATCH_FACTOR if gpus > 0 else 1)
    n_tasks = min(total, options.limit) if options.limit is not None else total
    n_pages = math.ceil(n_tasks / options.page_size)
    summary = JobSummary(version, options.dry_run)
    workers: set[int] = set()
    ray.data.DataContext.get_current().enable_progress_bars = False
    with progress_bar(n_tasks, options.progress) as bar:
        if n_pages:
            # Page numbers come from the driver (a range read would need a CPU the model actors may all hold).
            dataset = (ray.data.from_items([{"id": page} for page in range(n_pages)], override_num_blocks=n_pages)
                       .flat_map(read_page, fn_kwargs={"client": client, "page_size": options.page_size,
                                                       "limit": options.limit, "version": version}, num_cpus=0)
                       .map_batches(PredictActor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=n_actors),
                                    num_cpus=cpus, num_gpus=gpus,
                                    fn_constructor_kwargs={"settings": options.settings, "label_config": label_config,
                                                           "credentials": options.credentials, "version": version,
                                                           "threads": max(1, int(cpus)), "project": client.project_uid},
                                    max_restarts=-1, max_task_retries=BATCH_RETRIES)
                       .map_batches(WriteActor, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=ray_options.max_inflight),
                                    num_cpus=0,
                                    fn_constructor_kwargs={"client": client, "dry_run": options.dry_run}))
            try:
                for row in dataset.iter_rows():
                    outcome = Outcome(int(row["task_id"]), str(row["status"]), str(row["reason"]), str(row["detail"]))
                    summary.count(outcome)
                    if outcome.status != SKIPPED:
                        workers.add(int(row["worker"]))
                    if on_outcome is not None:
                        on_outcome(outcome, int(row["worker"]))
                    bar.update(1)
            except Exception as exc:  # noqa: BLE001 - Ray wraps what stopped the job (Label Studio gone, a batch crashing its actor)
                summary.aborted = _reason(exc)
    summary.seconds = time.monotonic() - started
    summary.workers = len(workers)
    return summary


def _reason(exc: Exception) -> str:
    for cause in (exc, exc.__cause__, getattr(exc, "cause", None)):
        if isinstance(cause, (LabelStudioAPIError, JobError)):
            return str(cause)
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]
