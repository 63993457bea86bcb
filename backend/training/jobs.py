"""Training job state per project, shared by every gunicorn worker, the training processes and RQ workers.

One JSON file per project uid (MODEL_ROOT/projects/<uid>/job.json) changed only under an exclusive
`fcntl` lock on its neighbour `job.lock`, so triggers that reach different workers at the same time
see one another: the first queues a job, the next ones while it is queued or running ask for one
more run after it (`rerun`), and any further ones are absorbed by that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.sources.label_studio import project_uid
from backend.training.registry import project_dir, write_json_atomic

logger = logging.getLogger("backend.training")

ACTIVE = ("queued", "running")
FINISHED = ("promoted", "rejected", "refused", "failed")
JOB_FILE = "job.json"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class JobBoard:
    """Reads and changes the job state of projects under MODEL_ROOT."""

    def __init__(self, model_root: Path) -> None:
        self.model_root = Path(model_root)

    def _paths(self, project: int) -> tuple[Path, Path]:
        directory = project_dir(self.model_root, project)
        return directory / JOB_FILE, directory / "job.lock"

    @contextmanager
    def locked(self, project: int) -> Iterator[dict]:
        """The project's state under the lock; changes to the yielded dict are written back."""
        state_path, lock_path = self._paths(project)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._read(state_path) or {"project": str(project), "state": "idle"}
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    state["updated_at"] = time.time()
                    write_json_atomic(state_path, state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def state(self, project: int) -> dict:
        return self._read(self._paths(project)[0]) or {"project": str(project), "state": "idle"}

    def all_states(self) -> list[dict]:
        root = self.model_root / "projects"
        if not root.is_dir():
            return []
        states = []
        for entry in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
            if project_uid(entry.name) == entry.name and (state := self._read(entry / JOB_FILE)) is not None:
                states.append(state | {"project": entry.name})  # an adopted folder's job.json has the bare id
        return states

    # ------------------------------------------------------------ transitions

    def request(self, project: int, reason: str, queue_job_gone: Callable[[str], bool] | None = None) -> str:
        """A trigger: `queued` (the caller dispatches the job), `coalesced` (one more run after the active
        job) or `absorbed` (a run after it is already asked for). `queue_job_gone(rq job id)` says whether a
        job on the RQ queue has ended without recording it (its worker was killed)."""
        with self.locked(project) as state:
            if state.get("state") in ACTIVE and self._stale(state, queue_job_gone):
                _fail(state, "the training process ended without a result (killed or crashed); "
                             "the previous model keeps serving")
            if state.get("state") in ACTIVE:
                if state.get("rerun"):
                    return "absorbed"
                state["rerun"] = True
                return "coalesced"
            state.clear()
            state.update({"project": str(project), "state": "queued", "phase": "queued", "job_id": uuid.uuid4().hex,
                          "reason": reason, "queued_at": time.time(), "rerun": False, "launcher": this_process()})
            return "queued"

    def start(self, project: int, job_id: str) -> bool:
        """The job process takes the queued job; False when it is not the queued one any more."""
        with self.locked(project) as state:
            if state.get("state") != "queued" or state.get("job_id") != job_id:
                return False
            state.update({"state": "running", "phase": "starting", "runner": this_process(), "started_at": time.time()})
            return True

    def progress(self, project: int, job_id: str, phase: str, **details: object) -> None:
        with self.locked(project) as state:
            if state.get("job_id") == job_id and state.get("state") == "running":
                state["phase"] = phase
                state.update(details)

    def finish(self, project: int, job_id: str, outcome: str, message: str, **details: object) -> str | None:
        """Record the job's end; returns the id of the follow-up job when a trigger came in meanwhile."""
        with self.locked(project) as state:
            if state.get("job_id") != job_id:
                return None
            _finish(state, outcome, message)
            state.update(details)
            if not state.pop("rerun", False):
                return None
            return _requeue(state)

    def fail_if_unfinished(self, project: int, job_id: str, message: str) -> str | None:
        """After a job process exited: mark its job failed unless it recorded an end; returns a follow-up job id."""
        with self.locked(project) as state:
            if state.get("job_id") != job_id or state.get("state") not in ACTIVE:
                return None
            _fail(state, message)
            if not state.pop("rerun", False):
                return None
            return _requeue(state)

    def fail_abandoned(self) -> None:
        """Fail (at ERROR) the active jobs whose process on this host is gone: a trainer dies with the serving
        worker that started it, and a queued job's waiting thread with its worker."""
        for found in self.all_states():
            if found.get("state") in ACTIVE and self._stale(found, None):
                with self.locked(found["project"]) as state:
                    if state.get("state") in ACTIVE and self._stale(state, None):
                        _fail(state, "the training process ended without a result: the serving worker that started it "
                                     "stopped (killed or restarted) and took it along; the previous model keeps serving")

    def note(self, project: int, job_id: str, **details: object) -> None:
        """Add details to the job's state (e.g. its RQ job id), whatever state it is in."""
        with self.locked(project) as state:
            if state.get("job_id") == job_id:
                state.update(details)

    def _stale(self, state: dict, queue_job_gone: Callable[[str], bool] | None) -> bool:
        """An active job whose process on this host is gone (a queued job: its launcher is gone), or whose
        RQ job has ended."""
        if state.get("rq_job"):
            return queue_job_gone is not None and queue_job_gone(str(state["rq_job"]))
        owner = state.get("runner") if state.get("state") == "running" else state.get("launcher")
        if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
            return False  # an RQ worker elsewhere: trust its state
        pid = owner.get("pid")
        return isinstance(pid, int) and not _process_alive(pid)


def _finish(state: dict, outcome: str, message: str) -> None:
    state.update({"state": outcome, "phase": outcome, "message": message, "finished_at": time.time()})


def _fail(state: dict, message: str) -> None:
    """A job whose process ended without recording its end (killed, crashed, never started): an ERROR with the
    reason in the log of the process that finds out, not only a line in /health and job.json."""
    logger.error("training project %s failed: %s", state.get("project"), message)
    _finish(state, "failed", message)


def _requeue(state: dict) -> str:
    job_id = uuid.uuid4().hex
    previous = {key: state[key] for key in ("state", "message", "version") if key in state}
    project, rq_job = state.get("project"), state.get("rq_job")
    state.clear()
    state.update({"project": project, "state": "queued", "phase": "queued", "job_id": job_id,
                  "reason": "coalesced trigger", "queued_at": time.time(), "rerun": False,
                  "launcher": this_process(), "previous_job": previous}
                 | ({"rq_job": rq_job} if rq_job else {}))
    return job_id
