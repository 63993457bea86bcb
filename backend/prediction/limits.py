"""What one /predict may cost: its deadline, whether its client still waits, its decoded pixels, and
which tasks it could not answer (summarised in one warning line, not one line per task).

A task that is not answered gets no prediction: an empty list in its place in `results`, which Label
Studio stores as nothing and asks for again later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("backend.prediction.predictor")

SHOWN_FAILURES = 5  # per-task reasons written out in the summary line; the rest are counted


@dataclass
class RequestLimits:
    """The request's deadline (time.monotonic) and a flag that the client is gone."""

    deadline: float = float("inf")
    time_limit: float = 0.0  # the PREDICT_TIME_LIMIT the deadline came from, for messages
    stopped: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def starting_now(cls, seconds: float) -> RequestLimits:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def why_not(self) -> str | None:
        """Why no more tasks should be started, or None while the request may go on."""
        if self.stopped.is_set():
            return "the client disconnected"
        if self.remaining() <= 0:
            return f"not reached within PREDICT_TIME_LIMIT={self.time_limit:g} s"
        return None


class PixelBudget:
    """Decoded pixels a request holds at once. An image that alone is larger than the budget may be
    taken when nothing else is held, so every image can be predicted."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._changed = threading.Condition()

    def fits(self, pixels: int, already: int) -> bool:
        """Whether a group of `already` pixels may grow by `pixels` (the first image always may)."""
        return already == 0 or already + pixels <= self.total

    def acquire(self, pixels: int, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Wait until `pixels` fit (or nothing is held); False when `give_up()` says so first."""
        with self._changed:
            while self._used and self._used + pixels > self.total:
                if give_up():
                    return False
                self._changed.wait(0.5)
            self._used += pixels
            return True

    def release(self, pixels: int) -> None:
        with self._changed:
            self._used -= pixels
            self._changed.notify_all()


class TaskFailures:
    """Why tasks of one request got no prediction, by task index; logged as one summary line."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reasons: dict[int, tuple[object, str]] = {}
        self._lock = threading.Lock()

    def add(self, index: int, task_id: object, reason: str) -> None:
        with self._lock:
            self.reasons.setdefault(index, (task_id, reason))

    def __contains__(self, index: int) -> bool:
        return index in self.reasons

    def log(self, stop_reason: str | None) -> None:
        """One WARNING for the tasks that failed, and one for the tasks not reached (deadline, disconnect)."""
        failed = [self.reasons[index] for index in sorted(self.reasons) if self.reasons[index][1] != stop_reason]
        if failed:
            shown = "; ".join(f"task {task}: {why}" for task, why in failed[:SHOWN_FAILURES])
            more = f"; and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else ""
            logger.warning("%d of %d tasks got no prediction: %s%s", len(failed), self.total, shown, more)
        skipped = len(self.reasons) - len(failed)
        if skipped:
            logger.warning("%d of %d tasks got no prediction: %s; Label Studio asks for them again later",
                           skipped, self.total, stop_reason)


class TaskNotPredicted(Exception):
    """The request stopped before this task (deadline, disconnected client)."""


class TaskQueue:
    """A request's task indices in order: those not fetched yet, and those fetched but not decoded yet
    (carried to the next group when the pixel budget was full)."""

    def __init__(self, count: int, group_size: int) -> None:
        self._next = 0
        self._count = count
        self._group_size = group_size
        self._fetched: list[tuple[int, dict]] = []  # (task index, {image key: (source, pixels)}), in task order

    @property
    def empty(self) -> bool:
        return self._next >= self._count and not self._fetched

    def take_fresh(self) -> list[int]:
        """The next tasks to fetch, so that a group has at most `group_size` tasks."""
        count = max(0, self._group_size - len(self._fetched))
        fresh = list(range(self._next, min(self._next + count, self._count)))
        self._next += len(fresh)
        return fresh

    def fetched(self, index: int, sources: dict) -> None:
        self._fetched.append((index, sources))

    def group_under(self, budget: PixelBudget) -> tuple[list[tuple[int, dict]], int]:
        """The fetched tasks, in order, whose pixels fit the budget together (at least one), and their pixels."""
        chosen, total = [], 0
        for index, sources in self._fetched:
            need = sum(pixels for _, pixels in sources.values())
            if not budget.fits(need, total):
                break
            chosen.append((index, sources))
            total += need
        self._fetched = self._fetched[len(chosen):]
        return chosen, total

    def drain(self) -> list[int]:
        """Every task not predicted yet; the queue is empty afterwards."""
        left = [index for index, _ in self._fetched] + list(range(self._next, self._count))
        self._fetched, self._next = [], self._count
        return left
