"""All-or-nothing output folders: a conversion writes into a hidden staging folder inside the
output folder and its files move into place only when it finishes, so a failure (malformed JSON
halfway through a large export, Ctrl-C) leaves no partial dataset behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Staging:
    publish: Path  # mirrors the output folder: what is here moves into it on success
    work: Path  # scratch space, discarded


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Staging]:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output folder '{out_dir}' is a file")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    staging = Staging(root / "publish", root / "work")
    staging.publish.mkdir()
    staging.work.mkdir()
    try:
        yield staging
        _move_tree(staging.publish, out_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _move_tree(source: Path, target: Path) -> None:
    for directory, _, files in os.walk(source):
        relative = Path(directory).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(directory) / name, target / relative / name)
