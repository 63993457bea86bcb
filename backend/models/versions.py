"""Model versions: which model files answer a labeling config, named so Label Studio can tell them apart.

Label Studio keys predictions by `model_version`: it does not predict again a task that already holds a
prediction of the current version. So the version names every model file a config's controls resolve to,
with a short hash of its content: `demo-shapes-seg@3f2a9c1,sam_vit_b_01ec64@9e8d7c6`. The same files give
the same version in every worker and after a restart; another `model_path`, a replaced file or a newly
promoted model gives a new one.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

DIGEST_CHARS = 7
_CHUNK = 1 << 20

_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_fingerprint(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, or of a model directory's files (OpenVINO exports); None if missing."""
    try:
        if path.is_dir():
            stats = [entry.stat() for entry in sorted(path.rglob("*")) if entry.is_file()]
            return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def file_digest(path: Path) -> str | None:
    """Short content hash, computed once per (path, size, mtime); None when the file does not exist."""
    fingerprint = file_fingerprint(path)
    if fingerprint is None:
        return None
    key = (str(path), *fingerprint)
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    try:
        for file in files:
            digest.update(os.fsencode(file.relative_to(path)) if file != path else b"")
            with file.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
    except OSError:
        return None
    short = digest.hexdigest()[:DIGEST_CHARS]
    with _digests_lock:
        _digests[key] = short
    return short


def model_tag(path: Path) -> str:
    """`stem@digest` for a model file (`stem` alone while the file is missing)."""
    stem = path.name if path.is_dir() else path.stem
    digest = file_digest(path)
    return f"{stem}@{digest}" if digest else stem


def join_tags(tags: Iterable[str]) -> str:
    """Tags in first-seen order without repeats; `none` when no model answers."""
    return ",".join(dict.fromkeys(tags)) or "none"
