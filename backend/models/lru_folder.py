"""A folder kept under a byte budget: its least recently used files are deleted first.

SAM_DISK_CACHE_DIR (image embeddings) and CACHE_DIR/images (downloaded task images) use it. Recency is a
file's mtime: writers set it, readers touch it on a hit. Workers prune one at a time (an exclusive lock on
`root/.prune.lock`; a worker that finds it taken leaves the pruning to its holder). Files vanishing meanwhile
are fine: readers treat them as a miss. Temporary files (`*.tmp`) of writers that died are removed once they
are an hour old; younger ones are being written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from stat import S_ISREG

logger = logging.getLogger(__name__)

STALE_TEMPORARY_SECONDS = 3600
LOCK_NAME = ".prune.lock"


def prune(root: Path, max_bytes: int, what: str, suffix: str = "", depth: int = 0) -> int:
    """Delete the least recently used files `depth` folders below `root` (only `suffix` ones, when given) until
    the rest fit in `max_bytes`; returns how many. Other files are never counted nor deleted, so a cache
    folder pointed at by mistake at a folder of other files (models, say) loses at most what a cache would
    hold there. `what` names the folder in the log."""
    try:
        with (root / LOCK_NAME).open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            return _prune_locked(root, max_bytes, what, suffix, depth)
    except OSError as exc:
        logger.warning("cannot prune the %s %s: %s", what, root, exc)
        return 0


def _prune_locked(root: Path, max_bytes: int, what: str, suffix: str, depth: int) -> int:
    entries: list[tuple[float, int, Path]] = []
    stale_before = time.time() - STALE_TEMPORARY_SECONDS
    folders = [root]
    for _ in range(depth):
        folders = [entry for folder in folders for entry in folder.iterdir() if entry.is_dir()]
    for folder in folders:
        for path in folder.iterdir():
            name = path.name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if not S_ISREG(stat.st_mode):
                continue
            if name.endswith(".tmp"):
                if stat.st_mtime < stale_before:
                    path.unlink(missing_ok=True)
            elif not name.startswith(".") and name.endswith(suffix):
                entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed += 1
    if removed:
        logger.info("%s %s: removed the %d least recently used, %.1f MB left", what, root, removed, total / 1e6)
    return removed


class FolderBudget:
    """Keeps a cache folder under `max_bytes` (0: no limit) as files are added to it or read from it.

    Scanning a folder of many files takes a while, so it is pruned when the bytes added since the last scan
    pass a step (2% of the budget, at least 1 MB), and on the first addition of a process.
    """

    def __init__(self, root: Path, max_bytes: int, what: str) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.what = what
        self._step = max(max_bytes // 50, 1 << 20)
        self._added_since_scan: int | None = None  # None: not scanned yet in this process
        self._lock = threading.Lock()

    def used(self, path: Path, since: float) -> None:
        """`path` was just returned from the folder: a file written after `since` (time.time()) is counted
        as added, an older one is touched as recently used. Files outside the folder are left alone."""
        if not self.max_bytes or not path.is_relative_to(self.root):
            return
        try:
            stat = path.stat()
            os.utime(path)
        except OSError:
            return
        if stat.st_mtime < since - 1:  # a hit (file systems with coarse timestamps: a new file may look 1 s older)
            return
        with self._lock:
            added = (self._added_since_scan or 0) + stat.st_size
            due = self._added_since_scan is None or added >= self._step
            self._added_since_scan = 0 if due else added
        if due:
            prune(self.root, self.max_bytes, self.what)
