"""What a serving worker does about training: answer Label Studio's webhooks, start jobs, report their state.

A trigger is recorded on the job board (shared by all workers through MODEL_ROOT); only the trigger that
queues a job dispatches it: to a local child process (lower priority, TRAIN_THREADS), or to the RQ
queue of TRAIN_QUEUE. The webhook is answered at once; training never runs in a serving process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from backend.sources.label_studio import Credentials, webhook_project_uid
from backend.settings import Settings
from backend.training.counter import AnnotationCounter
from backend.training.jobs import JobBoard
from backend.training.slots import PARENT_ENV, SLOT_HELD_ENV, TrainingSlots
from backend.training.registry import ProjectModels, adopt_legacy
from backend.training.run import JobSpec

logger = logging.getLogger("backend.training")

STATES = ("queued", "running", "promoted", "rejected", "refused", "failed")
CARD_SUMMARY = ("version", "status", "map_new", "map_previous", "images", "annotations", "epochs", "base_model",
                "classes", "finished_at")
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_CREATED",
                     "ANNOTATIONS_DELETED")


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: dict


class TrainingService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.board = JobBoard(settings.model_root_path)
        self.counter = AnnotationCounter(settings.model_root_path)
        self.slots = TrainingSlots(settings.model_root_path, settings.train_concurrency, settings.train_queue_length)

    # ------------------------------------------------------------ webhooks

    def webhook(self, payload: dict, credentials_for: Callable[[str], Credentials | None]) -> WebhookAnswer:
        """`credentials_for(project uid)`: the backend's Label Studio URL and token for that project, if any.
        Only what the backend acts on touches the disk: other actions, and projects it cannot reach, are ignored."""
        action = payload.get("action")
        if not isinstance(action, str) or not action:
            return WebhookAnswer(400, {"error": "'action' must be a non-empty string (a Label Studio webhook event)"})
        if action != "START_TRAINING" and not (action in ANNOTATION_EVENTS and self.settings.train_every):
            return WebhookAnswer(200, {"status": "ignored", "action": action[:100]})
        try:
            project = webhook_project_uid(payload.get("project"))
        except ValueError as exc:
            return WebhookAnswer(400, {"error": f"{action}: {exc}"})
        credentials = credentials_for(project)
        if credentials is None or not (credentials.hostname and credentials.token):
            logger.info("%s for project %s ignored: no /setup for it, and no LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                        "to read it with", action, project)
            return WebhookAnswer(200, {"status": "ignored: unknown project", "action": action, "project": project})
        if action == "START_TRAINING":
            result = self.trigger(project, "START_TRAINING webhook", credentials)
            if result == "refused":
                return WebhookAnswer(503, {"error": self.board.state(project)["message"], "action": action,
                                           "project": project})
            return WebhookAnswer(201, {"status": result, "action": action, "project": project,
                                       "job": self.board.state(project)})
        count = self.counter.add(project)
        if count % self.settings.train_every == 0:
            result = self.trigger(project, f"{count} annotation events (TRAIN_EVERY={self.settings.train_every})",
                                  credentials)
            return WebhookAnswer(201, {"status": result, "action": action, "project": project,
                                       "annotation_events": count})
        return WebhookAnswer(201, {"status": "counted", "action": action, "project": project,
                                   "annotation_events": count})

    def adopt_legacy(self, project: str) -> None:
        """An earlier version's MODEL_ROOT/projects/<id>/ becomes this project uid's (on a trusted /setup)."""
        if adopt_legacy(self.settings.model_root_path, project):
            logger.info("trained models of project %s from an earlier version (MODEL_ROOT/projects/%s/) now belong to "
                        "project %s", project.partition(".")[0], project.partition(".")[0], project)

    def trigger(self, project: str, reason: str, credentials: Credentials | None) -> str:
        """Queue a job for the project uid (or fold the trigger into the active one); returns what happened."""
        result = self.board.request(project, reason, self._queue_job_gone if self.settings.train_queue else None)
        state = self.board.state(project)
        if result == "queued" and not self.settings.train_queue and not self.slots.enqueue(state["job_id"], project):
            message = (f"refused: {self.settings.train_queue_length} training jobs already wait for a free slot "
                       f"(TRAIN_CONCURRENCY={self.settings.train_concurrency}, TRAIN_QUEUE_LENGTH="
                       f"{self.settings.train_queue_length}); start the training again later")
            self.board.finish(project, state["job_id"], "refused", message)
            logger.warning("training project %s %s", project, message)
            return "refused"
        if result == "queued":
            spec = JobSpec(project, state["job_id"], credentials.hostname if credentials else "",
                           credentials.token if credentials else "", credentials.trusted if credentials else True)
            self._dispatch(spec)
            logger.info("training project %s queued (%s)", project, reason)
        else:
            logger.info("training project %s: %s %s into the %s job", project, reason, result, state.get("state"))
        return result

    def _dispatch(self, spec: JobSpec) -> None:
        if self.settings.train_queue:
            from backend.training.rq import enqueue

            try:
                self.board.note(spec.project, spec.job_id, rq_job=enqueue(self.settings.train_queue, spec))
            except Exception as exc:  # redis down: the job must not stay queued forever
                message = f"cannot reach the training queue TRAIN_QUEUE={self.settings.train_queue}: {exc}"
                self.board.fail_if_unfinished(spec.project, spec.job_id, message)  # logs it as an ERROR
            return
        threading.Thread(target=self._run_child, args=(spec,), name=f"train-p{spec.project}", daemon=True).start()

    def _queue_job_gone(self, rq_job: str) -> bool:
        from backend.training.rq import job_gone

        return job_gone(self.settings.train_queue, rq_job)

    def _run_child(self, spec: JobSpec) -> None:
        """The job in its own process; when the process dies without recording an end, the job fails
        with the reason, and a trigger that came in meanwhile starts the job again."""
        slot = self.slots.wait(spec.job_id, spec.project, give_up=lambda: not self._still_queued(spec))
        if slot is None:
            return
        # the child inherits the slot's lock and dies with this thread (backend/training/slots.py)
        env = {**os.environ, **self.settings.as_environ(), SLOT_HELD_ENV: "1", PARENT_ENV: str(os.getpid())}
        with slot:
            self._run_children(spec, env, slot)

    def _still_queued(self, spec: JobSpec) -> bool:
        state = self.board.state(spec.project)
        return state.get("job_id") == spec.job_id and state.get("state") == "queued"

    def _run_children(self, spec: JobSpec, env: dict, slot: IO) -> None:
        while True:
            try:
                process = subprocess.Popen([sys.executable, "-m", "backend.training.run"], stdin=subprocess.PIPE,
                                           env=env, cwd=Path(__file__).resolve().parents[2], pass_fds=(slot.fileno(),))
                process.communicate(spec.to_json().encode())
                code = process.returncode
                how = f"was killed by signal {-code} ({_signal_name(-code)})" if code < 0 else f"exited with code {code}"
            except OSError as exc:
                how = f"could not be started ({exc})"
            follow_up = self.board.fail_if_unfinished(
                spec.project, spec.job_id, f"the training process {how} before it finished (out of memory?); "
                                           "the previous model keeps serving")
            if follow_up is None:
                return
            spec = JobSpec(spec.project, follow_up, spec.hostname, spec.token, spec.trusted)

    # ------------------------------------------------------------ status

    def status(self) -> list[dict]:
        """Job state and promoted version of every project that has trained."""
        self.board.fail_abandoned()
        projects = []
        for state in self.board.all_states():
            project = str(state["project"])
            promoted = ProjectModels(self.settings.model_root_path, project).promoted()
            projects.append({key: state.get(key) for key in ("project", "state", "phase", "epoch", "epochs", "message",
                                                             "version", "map_new", "map_previous", "seconds", "rerun")
                             if state.get(key) is not None}
                            | {"promoted_version": promoted.name if promoted else None})
        return projects

    def versions(self) -> dict[str, list[dict]]:
        """Every trained version of each project (promoted, rejected), from the model cards."""
        answer = {}
        for state in self.board.all_states():
            project = str(state["project"])
            models = ProjectModels(self.settings.model_root_path, project)
            promoted = models.promoted()
            answer[str(project)] = [{key: card.get(key) for key in CARD_SUMMARY}
                                    | {"name": models.model_path(card["version"]).stem,
                                       "served": bool(promoted and promoted.version == card["version"])}
                                    for card in models.cards() if isinstance(card.get("version"), int)]
        return answer

    def metrics_text(self) -> str:
        """Prometheus text for the training state of every project (read from MODEL_ROOT: the same in every worker)."""
        lines = ["# HELP backend_training_job_state Training job state per project (1 for the current state)",
                 "# TYPE backend_training_job_state gauge"]
        numbers = []
        for item in self.status():
            project = item["project"]
            for state in STATES:
                lines.append(f'backend_training_job_state{{project="{project}",state="{state}"}} '
                             f'{int(item.get("state") == state)}')
            numbers += [("backend_training_epoch", project, item.get("epoch")),
                        ("backend_training_epochs", project, item.get("epochs")),
                        ("backend_training_promoted_version", project,
                         int(item["promoted_version"].rsplit("-v", 1)[1]) if item.get("promoted_version") else 0),
                        ("backend_training_val_map_new", project, item.get("map_new")),
                        ("backend_training_val_map_previous", project, item.get("map_previous"))]
        for name in dict.fromkeys(name for name, _, _ in numbers):
            lines.append(f"# TYPE {name} gauge")
            lines += [f'{name}{{project="{project}"}} {value}' for metric, project, value in numbers
                      if metric == name and value is not None]
        return "\n".join(lines) + "\n"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
