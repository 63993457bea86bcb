"""A pre-annotation job in one process: read the project's tasks page by page, skip the tasks that
already hold a prediction of the current model version, predict the rest in batches with the
backend's predictor, write each batch's predictions back in one bulk import.

Memory holds one page of tasks and one batch of images at a time, whatever the project's size.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from backend.sources.label_studio import Credentials
from backend.settings import Settings
from tools.preannotate.client import LabelStudioAPIError, ProjectClient, RetryPolicy, prediction_versions
from tools.preannotate.predicting import (FAILED, FAILED_WRITE, PREDICTED, SKIPPED, JobError, Outcome, TaskPredictor,
                                          task_for_prediction)

MAX_EXAMPLES = 20


@dataclass(frozen=True)
class JobOptions:
    ls_url: str
    api_key: str
    project: int
    settings: Settings
    batch: int = 0  # tasks per predictor call and per import; 0: the settings' BATCH_SIZE
    page_size: int = 100
    limit: int | None = None  # only the project's first N tasks (by id)
    dry_run: bool = False  # predict, write nothing
    retry: RetryPolicy = RetryPolicy()
    progress: bool = False

    @property
    def tasks_per_batch(self) -> int:
        return self.batch or self.settings.batch_size

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.ls_url.rstrip("/"), self.api_key)

    def client(self) -> ProjectClient:
        return ProjectClient(self.ls_url, self.api_key, self.project, self.retry)


@dataclass
class JobSummary:
    """What a job did: tasks predicted (and written), skipped as already done, failed with reasons."""

    model_version: str = ""
    dry_run: bool = False
    tasks_read: int = 0
    predicted: int = 0
    skipped: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    aborted: str = ""  # why the job stopped before reading every task
    workers: int = 0  # Ray: model actor processes that predicted

    @property
    def ok(self) -> bool:
        return not self.failed and not self.aborted

    def count(self, outcome: Outcome) -> None:
        self.tasks_read += 1
        if outcome.status == PREDICTED:
            self.predicted += 1
        elif outcome.status == SKIPPED:
            self.skipped += 1
        else:
            self.failed[outcome.reason] += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"task {outcome.task_id}: {outcome.reason}: {outcome.detail}")

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def report(self) -> str:
        rate = self.tasks_read / self.seconds if self.seconds > 0 else 0.0
        verb = "predicted (dry run, nothing written)" if self.dry_run else "predicted and written"
        lines = [f"model version: {self.model_version}",
                 f"tasks read: {self.tasks_read} in {self.seconds:.1f} s ({rate:.1f} tasks/s); {verb}: {self.predicted}; "
                 f"skipped (already predicted by this version): {self.skipped}; failed: {self.n_failed}"]
        if self.workers:
            lines.append(f"model actor processes used: {self.workers}")
        if self.failed:
            lines.append("failed: " + ", ".join(f"{reason}: {count}" for reason, count in self.failed.most_common()))
            lines.extend(f"  {example}" for example in self.examples)
        if self.aborted:
            lines.append(f"stopped early: {self.aborted}; run again to go on where it stopped")
        return "\n".join(lines)


def limited(pages: Iterable[list[dict]], limit: int | None) -> Iterator[dict]:
    """Tasks of the pages, the first `limit` of them when a limit is given."""
    seen = 0
    for page in pages:
        for task in page:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield task


def skipped_or_pending(tasks: Iterable[dict], version: str) -> Iterator[tuple[dict, Outcome | None]]:
    for task in tasks:
        done = version in prediction_versions(task)
        yield task_for_prediction(task), Outcome(int(task["id"]), SKIPPED) if done else None


def write_outcomes(client: ProjectClient | None, outcomes: list[Outcome]) -> list[Outcome]:
    """Import the predicted outcomes' predictions in one request; a batch Label Studio refuses is
    tried task by task, so one bad prediction fails only its task. `client` None: a dry run."""
    predicted = [outcome for outcome in outcomes if outcome.status == PREDICTED]
    if client is None or not predicted:
        return outcomes
    failed_ids: dict[int, str] = {}
    try:
        client.import_predictions([(outcome.task_id, outcome.prediction) for outcome in predicted])
    except LabelStudioAPIError as exc:
        if len(predicted) == 1 or not exc.refused:
            failed_ids = {outcome.task_id: str(exc) for outcome in predicted}
        else:
            for outcome in predicted:
                failed_ids.update(_write_one(client, outcome))
    return [Outcome(o.task_id, FAILED, FAILED_WRITE, failed_ids[o.task_id]) if o.task_id in failed_ids else o
            for o in outcomes]


def _write_one(client: ProjectClient, outcome: Outcome) -> dict[int, str]:
    try:
        client.import_predictions([(outcome.task_id, outcome.prediction)])
    except LabelStudioAPIError as exc:
        return {outcome.task_id: str(exc)}
    return {}


def progress_bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="task", desc="pre-annotating", disable=not enabled or None, smoothing=0.05)


def read_project(client: ProjectClient) -> tuple[str, int]:
    """The project's labeling config and task count; JobError when Label Studio cannot tell them."""
    try:
        return client.label_config(), client.task_count()
    except LabelStudioAPIError as exc:
        raise JobError(str(exc)) from None


def run_local(options: JobOptions, on_outcome: Callable[[Outcome], None] | None = None) -> JobSummary:
    """The job in this process; raises JobError when it cannot start. Label Studio going away for
    longer than the retries wait stops the job with `aborted` set in the summary."""
    started = time.monotonic()
    client = options.client()
    label_config, total = read_project(client)
    predictor = TaskPredictor(options.settings, label_config, options.credentials, client.project_uid)
    predictor.check_models()
    summary = JobSummary(predictor.version, options.dry_run)
    writer = None if options.dry_run else client
    with progress_bar(min(total, options.limit) if options.limit is not None else total, options.progress) as bar:
        def finish(outcomes: list[Outcome]) -> None:
            for outcome in outcomes:
                summary.count(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            bar.update(len(outcomes))

        pending: list[dict] = []
        try:
            tasks = limited(client.pages(options.page_size), options.limit)
            for task, skipped in skipped_or_pending(tasks, predictor.version):
                if skipped is not None:
                    finish([skipped])
                    continue
                pending.append(task)
                if len(pending) == options.tasks_per_batch:
                    finish(write_outcomes(writer, predictor.predict(pending)))
                    pending = []
            if pending:
                finish(write_outcomes(writer, predictor.predict(pending)))
        except LabelStudioAPIError as exc:
            summary.aborted = str(exc)
    summary.seconds = time.monotonic() - started
    return summary
