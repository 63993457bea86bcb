"""One training job from start to end, in the process that trains (a local child process or an RQ worker).

    read the project from Label Studio -> YOLO dataset -> fine-tune -> score new and served model on
    the val split -> promote when not worse, else keep as a rejected candidate

Every step is recorded on the job board (the state /health and /metrics show); an error ends the job
as `failed` with the reason and the served model stays as it was. Work files live in a folder under
the project's model folder and are removed at the end; the model files only appear by atomic rename.

`python -m backend.training.run` is the local child process: the job (project, job id, Label Studio
credentials) arrives as JSON on stdin, the settings in the environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from formats.label_config import LabelConfig, parse_label_config
from backend.sources.label_studio import AccessTokens, Credentials
from backend.sources.object_storage import direct_storage
from backend.sources.url_policy import AddressPolicy, AddressRefused
from backend.settings import Settings
from backend.training import dataset as datasets
from backend.training import trainer
from backend.training.jobs import JobBoard
from backend.training.retention import keep_versions
from backend.training.slots import SLOT_HELD_ENV, TrainingSlots, die_with_parent
from backend.training.registry import ProjectModels
from backend.training.tasks import METRICS, base_model_problem, task_controls

logger = logging.getLogger("backend.training")
RUN_FILE_SUFFIXES = (".png", ".jpg", ".csv")
RUN_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class JobSpec:
    project: str  # Label Studio's project uid, "<id>.<timestamp>"
    job_id: str
    hostname: str = ""
    token: str = ""
    trusted: bool = True  # Credentials.trusted: LABEL_STUDIO_URL, or a /setup from an authenticated or loopback caller

    @property
    def credentials(self) -> Credentials | None:
        return Credentials(self.hostname.rstrip("/"), self.token, self.trusted) if self.hostname or self.token else None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class _Refused(Exception):
    pass


def run_jobs(settings: Settings, spec: JobSpec) -> None:
    """Run the job, then the coalesced follow-up jobs triggers asked for meanwhile."""
    board = JobBoard(settings.model_root_path)
    job_id: str | None = spec.job_id
    slot = None
    if not os.environ.get(SLOT_HELD_ENV):  # an RQ worker; a local child inherited its launcher's slot
        slot = TrainingSlots(settings.model_root_path, settings.train_concurrency,
                             settings.train_queue_length).wait(spec.job_id, spec.project)
    try:
        _run_coalesced(settings, spec, board, job_id)
    finally:
        if slot is not None:
            slot.close()


def _run_coalesced(settings: Settings, spec: JobSpec, board: JobBoard, job_id: str | None) -> None:
    while job_id is not None:
        job_id = run_job(settings, JobSpec(spec.project, job_id, spec.hostname, spec.token, spec.trusted), board)


def run_job(settings: Settings, spec: JobSpec, board: JobBoard) -> str | None:
    """One job; returns the follow-up job id when another trigger came in while it ran."""
    if not board.start(spec.project, spec.job_id):
        logger.info("training job %s of project %s is no longer queued; skipped", spec.job_id, spec.project)
        return None
    models = ProjectModels(settings.model_root_path, spec.project)
    work = models.directory / f".work-{spec.job_id}"
    _remove_old_work(models.directory, keep=work)
    started = time.monotonic()
    try:
        outcome, message, details = _train_and_publish(settings, spec, board, models, work)
    except _Refused as exc:
        outcome, message, details = "refused", str(exc), {}
    except (datasets.DatasetError, trainer.OutOfMemory) as exc:
        outcome, message, details = "failed", str(exc), {}
    except Exception as exc:  # a job must end with a reason, whatever broke
        logger.exception("training job of project %s failed", spec.project)
        outcome, message, details = "failed", f"{type(exc).__name__}: {str(exc)[:300]}", {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log = {"promoted": logger.info, "rejected": logger.info, "failed": logger.error}.get(outcome, logger.warning)
    log("training project %s: %s: %s (%.0f s)", spec.project, outcome, message, time.monotonic() - started)
    return board.finish(spec.project, spec.job_id, outcome, message, seconds=round(time.monotonic() - started, 1),
                        **details)


def _train_and_publish(settings: Settings, spec: JobSpec, board: JobBoard, models: ProjectModels,
                       work: Path) -> tuple[str, str, dict]:
    from backend.sources.images import ImageFetcher, image_cache_budget
    from backend.models.cache import select_device

    started = time.monotonic()
    threads = trainer.limit_resources(settings.train_threads)
    device = settings.train_device or select_device(settings.device)
    options = trainer.TrainOptions(settings.train_epochs, settings.train_imgsz, settings.train_batch, device, threads)
    board.progress(spec.project, spec.job_id, "reading tasks")
    if spec.credentials is not None and not spec.credentials.trusted:  # named by an unauthenticated remote /setup
        try:
            AddressPolicy.from_settings(settings.allow_private_urls, settings.allowed_url_hosts).guard(None) \
                .check_url(spec.credentials.hostname)
        except (AddressRefused, OSError) as exc:
            raise _Refused(f"the Label Studio host an unauthenticated caller named in /setup is refused: {exc}") from None
    project = datasets.read_project(spec.credentials, spec.project, work, settings.download_timeout)
    config = parse_label_config(project.label_config)
    task = datasets.trainable_task(config)
    served = served_weights(settings, config, spec.project, task)
    if problem := base_model_problem(_model_task(served), task, served.name):
        raise _Refused(problem)
    fetcher = ImageFetcher(settings.cache_path / "images", settings.local_files_document_root, settings.download_timeout,
                           settings.max_image_pixels, AccessTokens(timeout=settings.download_timeout),
                           settings.max_download_bytes, storage=direct_storage(settings),
                           cache_budget=image_cache_budget(settings))
    board.progress(spec.project, spec.job_id, "building dataset")
    try:
        data = datasets.build_dataset(project, fetcher, spec.credentials, work / "dataset", settings.train_min_images,
                                      settings.polygon_tolerance)
    except datasets.TooFewImages as exc:
        raise _Refused(str(exc)) from None
    logger.info("training project %s: %d images, %d annotations, classes %s, %s from %s, %d epochs at %d on %s",
                spec.project, data.images, data.annotations, ", ".join(data.classes), data.task, served.name,
                options.epochs, options.imgsz, device)
    label_of = _label_mapper(config, data.task, data.classes)
    data_path = data.yaml_path.parent if data.task == "classify" else data.yaml_path
    board.progress(spec.project, spec.job_id, "training", metric=METRICS[data.task], images=data.images)
    split = trainer.fine_tune(served, data_path, work, options, _epoch_reporter(board, spec, "training", options.epochs),
                              data.task, label_of)
    board.progress(spec.project, spec.job_id, "validating")
    new = trainer.score(split.weights, data.yaml_path, data.task, lambda name: name if name in data.classes else None,
                        work, options)
    previous = trainer.score(served, data.yaml_path, data.task, label_of, work, options)
    promote = new.map50_95 >= previous.map50_95
    weights = split.weights
    if promote and settings.train_final_on_all:  # the val split judged the schedule; now learn from every picture
        # The same schedule, not fewer epochs: Ultralytics warms the learning rate up over at least 100 batches, so
        # on a few dozen pictures a shorter run ends before it learned (measured: bench/bench_train_quality.py).
        final = trainer.fine_tune(served, trainer.all_pictures(data_path, data.task, work / "all"), work, options,
                                  _epoch_reporter(board, spec, "training on all pictures", options.epochs),
                                  data.task, label_of, validate=False, name="final")
        weights = final.weights
    version = models.next_version()
    card = {"version": version, "project": spec.project, "project_title": project.title, "status":
            "promoted" if promote else "rejected", "task": data.task, "base_model": served.name,
            "classes": list(data.classes), "images": data.images, "annotations": data.annotations,
            "images_failed": data.images_failed, "epochs": options.epochs, "best_epoch": split.best_epoch,
            "trained_on": "all pictures" if weights != split.weights else "train split", "imgsz": options.imgsz,
            "device": device, "map_new": round(new.map50_95, 4), "map_previous": round(previous.map50_95, 4),
            "map_previous_note": previous.note, "metric": METRICS[data.task], "per_class_new": new.per_class,
            "per_class_previous": previous.per_class, "history": split.history,
            "seconds": round(time.monotonic() - started, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    keep_run_files(split.run_dir, models.run_dir(version))
    path = models.publish(version, weights, card, promote)
    keep_versions(models, settings.train_keep_versions)
    figures = f"val {METRICS[data.task]} new {new.map50_95:.4f} vs served {previous.map50_95:.4f} ({served.name}; {previous.note})"
    details = {"version": version, "map_new": card["map_new"], "map_previous": card["map_previous"]}
    if promote:
        return "promoted", f"{path.stem} serves project {spec.project}: {figures}", details
    return "rejected", f"{path.stem} kept as a rejected candidate, not served: {figures}", details


def _epoch_reporter(board: JobBoard, spec: JobSpec, phase: str, epochs: int):  # noqa: ANN202
    """Logs each epoch and puts it on the job board: epoch of N, when the phase began, its figures so far."""
    history: list[dict] = []
    key = "history" if phase == "training" else "final_history"  # the val split's curves stay on the board
    board.progress(spec.project, spec.job_id, phase, epoch=0, epochs=epochs, phase_started_at=time.time(),
                   **{key: history})

    def on_epoch(epoch: int, epochs: int, row: dict) -> None:
        logger.info("training project %s: %s: epoch %d of %d", spec.project, phase, epoch, epochs)
        history.append(row)
        board.progress(spec.project, spec.job_id, phase, epoch=epoch, epochs=epochs, **{key: history})

    return on_epoch


def keep_run_files(run_dir: Path, into: Path) -> None:
    """Ultralytics' plots and per-epoch figures of the val-split run (what the status page shows), each
    at most RUN_FILE_BYTES; the rest of the work folder goes."""
    into.mkdir(parents=True, exist_ok=True)
    for entry in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if entry.suffix in RUN_FILE_SUFFIXES and entry.is_file() and entry.stat().st_size <= RUN_FILE_BYTES:
            shutil.copyfile(entry, into / entry.name)


def served_weights(settings: Settings, config: LabelConfig, project: int, task: str) -> Path:
    """The weights the project's trainable controls of the trained kind use today (the promoted model, else
    the control's model_path, else YOLO_SEG_MODEL / YOLO_DET_MODEL): the starting point and the baseline."""
    from backend.models.cache import resolve_model_path
    from backend.training.model_choice import model_choice

    controls = task_controls(config, task)
    control = next((c for c in controls if c.wants_masks == (task == "segment")), controls[0])
    choice = model_choice(control, settings, project)
    return resolve_model_path(settings.model_root_path, choice.path_value, choice.setting, choice.trained)


def _model_task(weights: Path) -> str:
    from ultralytics import YOLO

    return str(YOLO(str(weights)).task)


def _label_mapper(config: LabelConfig, task: str, classes: tuple[str, ...]):  # noqa: ANN202
    """Model class -> dataset class, as serving maps it: through the task's controls (a pose model's
    class through the RectangleLabels of its boxes), else a class of the same name."""
    controls = task_controls(config, task)
    if task == "pose":  # a keypoint Label's predicted_values name its object's class, not the class's label
        controls = tuple(box for control in controls for box in control.options.box_controls)
    by_lower = {name.lower(): name for name in classes}

    def label_of(class_name: str) -> str | None:
        return next((label for control in controls if (label := control.label_for(class_name))),
                    by_lower.get(class_name.lower()))

    return label_of


def _remove_old_work(directory: Path, keep: Path) -> None:
    """Work folders of jobs that were killed (only one job of a project runs at a time)."""
    if directory.is_dir():
        for entry in directory.glob(".work-*"):
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
        for entry in directory.glob(".tmp-*"):
            entry.unlink(missing_ok=True)


def main() -> int:
    die_with_parent()
    spec = JobSpec(**json.loads(sys.stdin.read()))
    settings = Settings.load()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s [training] %(message)s")
    logging.getLogger("label_studio_sdk").setLevel(logging.WARNING)  # a line per downloaded image otherwise
    run_jobs(settings, spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
