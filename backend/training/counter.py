"""Label Studio annotation events per project, counted across all workers (for TRAIN_EVERY)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from backend.training.registry import project_dir


class AnnotationCounter:
    def __init__(self, model_root: Path) -> None:
        self.model_root = Path(model_root)

    def add(self, project: str) -> int:
        """Count one event; returns the project's total so far."""
        path = project_dir(self.model_root, project) / "annotation-events"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read().strip()
            count = (int(text) if text.isdigit() else 0) + 1
            handle.seek(0)
            handle.truncate()
            handle.write(str(count))
            handle.flush()
            return count
