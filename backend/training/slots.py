"""At most TRAIN_CONCURRENCY training processes per MODEL_ROOT, whichever worker or host got the trigger.

    MODEL_ROOT/.training/slot-<k>.lock   k < TRAIN_CONCURRENCY: held (fcntl.flock) while a job trains
    MODEL_ROOT/.training/waiting.json    jobs waiting for a slot, first come first served, at most
                                         TRAIN_QUEUE_LENGTH; changed under waiting.lock

A waiting job is a thread of the serving worker that queued it (no process yet, so waiting costs no
memory), or an RQ worker's job. It writes a heartbeat into its entry every second; an entry not seen
for a minute (its worker died) leaves the queue. The lock of a slot goes away with the process holding
it, so a killed trainer frees its slot. A local trainer inherits its launcher's slot and dies with the
launcher (Linux: PR_SET_PDEATHSIG), so it can never outlive the slot.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from backend.training.registry import write_atomic

HEARTBEAT_S = 1.0
STALE_S = 60.0
SLOT_HELD_ENV = "BACKEND_TRAINING_SLOT_HELD"  # set for a child that inherited its launcher's slot
PARENT_ENV = "BACKEND_TRAINING_PARENT"
PR_SET_PDEATHSIG = 1


class TrainingSlots:
    def __init__(self, model_root: Path, concurrency: int, queue_length: int) -> None:
        self.directory = Path(model_root) / ".training"
        self.concurrency = concurrency
        self.queue_length = queue_length

    def enqueue(self, job: str, project: str) -> bool:
        """Put the job at the end of the queue; False when TRAIN_QUEUE_LENGTH jobs already wait."""
        with self._waiting() as waiting:
            if any(entry["job"] == job for entry in waiting):
                return True
            if len(waiting) >= self.queue_length:
                return False
            waiting.append(_entry(job, project))
            return True

    def waiting(self) -> list[dict]:
        with self._waiting() as waiting:
            return [dict(entry) for entry in waiting]

    def wait(self, job: str, project: str, give_up: Callable[[], bool] = lambda: False) -> IO | None:
        """Block until the job is among the first TRAIN_CONCURRENCY waiting and a slot is free; the slot's
        open, locked file (closing it frees the slot), or None when `give_up()` said so first."""
        while True:
            with self._waiting() as waiting:
                entry = next((entry for entry in waiting if entry["job"] == job), None)
                if entry is None:  # an RQ job, or one whose heartbeat stopped for a while
                    entry = _entry(job, project)
                    waiting.append(entry)
                entry["seen"] = time.time()
                if waiting.index(entry) < self.concurrency and (slot := self._free_slot()) is not None:
                    waiting.remove(entry)
                    return slot
            if give_up():
                self.leave(job)
                return None
            time.sleep(HEARTBEAT_S)

    def leave(self, job: str) -> None:
        with self._waiting() as waiting:
            waiting[:] = [entry for entry in waiting if entry["job"] != job]

    def _free_slot(self) -> IO | None:
        for index in range(self.concurrency):
            handle = open(self.directory / f"slot-{index}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return handle
        return None

    @contextmanager
    def _waiting(self) -> Iterator[list[dict]]:
        """The queue without stale entries, under its lock; changes are written back."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "waiting.json"
        with open(self.directory / "waiting.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    waiting = json.loads(path.read_text())
                except (OSError, ValueError):
                    waiting = []
                before = json.dumps(waiting)
                waiting = [entry for entry in waiting if isinstance(entry, dict) and time.time() - entry.get("seen", 0) < STALE_S]
                yield waiting
                if json.dumps(waiting) != before:
                    write_atomic(path, json.dumps(waiting).encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _entry(job: str, project: str) -> dict:
    return {"job": job, "project": str(project), "since": time.time(), "seen": time.time()}


def die_with_parent() -> None:
    """In a local training process: be killed when the serving worker (thread) that started it ends, so no
    trainer outlives the worker and the slot it holds. Linux only; elsewhere a no-op."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(parent):  # the launcher died before prctl took effect
        os._exit(1)
