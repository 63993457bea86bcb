"""Trained models of each Label Studio project: versions, their cards, and which one is served.

    MODEL_ROOT/projects/<uid>/p<id>-v<k>.pt     the model of version k (promoted or rejected)
    MODEL_ROOT/projects/<uid>/p<id>-v<k>.json   its card: classes, counts, epochs, val mAP of new and previous
    MODEL_ROOT/projects/<uid>/promoted.json     {"version": k, ...}: the version every worker serves

<uid> is Label Studio's project uid "<id>.<created_at in Unix seconds>" (backend.sources.label_studio):
a project of the same id on another Label Studio server (or one that claims to be) has another folder,
so it can neither train into, read, nor replace what this project is served. Folders of earlier
versions (MODEL_ROOT/projects/<id>/) are renamed to their uid by `adopt_legacy` (see docs/security.md).

Every file is written to a temporary name in the same folder and renamed into place, the pointer
last, so a job killed at any moment leaves either the old or the new version served, never half a
file. Rolling back is pointing `promoted.json` at an earlier version (`python -m backend.training.registry`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.settings import Settings
from backend.sources.label_studio import project_uid

PROMOTED_FILE = "promoted.json"
_VERSION_FILE = re.compile(r"^p(\d+)-v(\d+)\.(pt|json)$")


@dataclass(frozen=True)
class PromotedVersion:
    project: str  # the uid
    version: int
    path: Path  # the model file
    relative_path: str  # the same, relative to MODEL_ROOT (how a control's model_path names a file)
    task: str  # detect | segment
    classes: tuple[str, ...]

    @property
    def name(self) -> str:
        """`p12-v3`: the file stem, which model versions are derived from."""
        return self.path.stem


def checked_uid(project: str) -> str:
    uid = project_uid(project)
    if uid is None:
        raise ValueError(f"'{str(project)[:60]}' is not a Label Studio project uid (\"<id>.<timestamp>\")")
    return uid


def project_dir(model_root: Path, project: str) -> Path:
    return Path(model_root) / "projects" / checked_uid(project)


def version_stem(project: str, version: int) -> str:
    """`p12-v3`: the model file's stem (model versions are derived from it), named by the project's id."""
    return f"p{checked_uid(project).partition('.')[0]}-v{int(version)}"


def adopt_legacy(model_root: Path, project: str) -> bool:
    """Give an earlier version's MODEL_ROOT/projects/<id>/ to the project uid: renamed to projects/<uid>/ when
    no folder of that id has a uid yet. Called on a /setup from a trusted caller (Label Studio itself)."""
    uid = checked_uid(project)
    legacy = Path(model_root) / "projects" / uid.partition(".")[0]
    if not legacy.is_dir() or any(legacy.parent.glob(f"{legacy.name}.*")):
        return False
    try:
        os.rename(legacy, project_dir(model_root, uid))
    except OSError:  # another worker adopted it at the same moment
        return False
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())


class ProjectModels:
    """The versions of one project's models; safe for several processes when one job writes at a time
    (the job board's lock guarantees that)."""

    def __init__(self, model_root: Path, project: str) -> None:
        self.model_root = Path(model_root)
        self.project = checked_uid(project)
        self.project_id = int(self.project.partition(".")[0])
        self.directory = project_dir(self.model_root, self.project)

    def versions(self) -> list[int]:
        """Every version number in use (model files and cards, promoted or not), ascending."""
        if not self.directory.is_dir():
            return []
        found = set()
        for entry in self.directory.iterdir():
            match = _VERSION_FILE.match(entry.name)
            if match and int(match.group(1)) == self.project_id:
                found.add(int(match.group(2)))
        return sorted(found)

    def next_version(self) -> int:
        return max(self.versions(), default=0) + 1

    def model_path(self, version: int) -> Path:
        return self.directory / f"{version_stem(self.project, version)}.pt"

    def card_path(self, version: int) -> Path:
        return self.directory / f"{version_stem(self.project, version)}.json"

    def run_dir(self, version: int) -> Path:
        """Ultralytics' plots and results.csv of the version's training run (the status page shows them)."""
        return self.directory / "runs" / version_stem(self.project, version)

    def card(self, version: int) -> dict | None:
        try:
            return json.loads(self.card_path(version).read_text())
        except (OSError, ValueError):
            return None

    def cards(self) -> list[dict]:
        return [card for version in self.versions() if (card := self.card(version)) is not None]

    def publish(self, version: int, weights: Path, card: dict, promote: bool) -> Path:
        """Copy the trained weights in as `version` with its card; point `promoted.json` at it if `promote`."""
        target = self.model_path(version)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            shutil.copyfile(weights, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        write_json_atomic(self.card_path(version), card)
        if promote:
            self.promote(version)
        return target

    def promote(self, version: int) -> None:
        """Serve `version` from the next request on (also how a rollback is done)."""
        card = self.card(version)
        if card is None or not self.model_path(version).is_file():
            raise ValueError(f"project {self.project} has no version {version} (no model file or card in {self.directory})")
        write_json_atomic(self.directory / PROMOTED_FILE, {
            "project": self.project, "version": version, "file": self.model_path(version).name,
            "task": card.get("task", "segment"), "classes": card.get("classes", [])})

    def promoted(self) -> PromotedVersion | None:
        return promoted_version_at(self.model_root, self.project)


_promoted_cache: dict[Path, tuple[tuple[int, int], PromotedVersion | None]] = {}
_promoted_lock = threading.Lock()


def promoted_version_at(model_root: Path, project: str) -> PromotedVersion | None:
    """The promoted version of a project, re-read only when `promoted.json` changes (one stat per call)."""
    pointer = project_dir(model_root, project) / PROMOTED_FILE
    try:
        stat = pointer.stat()
    except OSError:
        return None
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _promoted_lock:
        cached = _promoted_cache.get(pointer)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = _read_pointer(Path(model_root), checked_uid(project), pointer)
    with _promoted_lock:
        _promoted_cache[pointer] = (stamp, found)
    return found


def promoted_version(settings: Settings, project: object) -> PromotedVersion | None:
    """The model version serving a Label Studio project uid ("12.1700000000"), or None when the configured
    models serve it (also for a bare id: it names no project). Cheap: one stat of its promoted.json per call."""
    uid = project_uid(project)
    return None if uid is None else promoted_version_at(settings.model_root_path, uid)


def _read_pointer(model_root: Path, project: str, pointer: Path) -> PromotedVersion | None:
    try:
        record = json.loads(pointer.read_text())
        version = int(record["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = project_dir(model_root, project) / f"{version_stem(project, version)}.pt"
    if not path.is_file():
        return None
    relative = path.resolve().relative_to(model_root.resolve()).as_posix()
    return PromotedVersion(project, version, path, relative, str(record.get("task") or "segment"),
                           tuple(str(name) for name in record.get("classes") or ()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.training.registry",
                                     description="List a project's trained versions or serve another one (roll back).")
    parser.add_argument("--model_root", type=Path, default=Path(os.environ.get("MODEL_ROOT", "./models")))
    parser.add_argument("--project", required=True, help="Label Studio project uid (<id>.<timestamp>: the folder's "
                                                          "name under MODEL_ROOT/projects/)")
    parser.add_argument("--promote", type=int, metavar="VERSION", help="serve this version from the next request on")
    args = parser.parse_args(argv)
    if project_uid(args.project) is None:
        print(f"error: --project {args.project[:60]} is not a project uid; the projects that have trained: "
              f"{', '.join(sorted(p.name for p in (args.model_root / 'projects').glob('*.*'))) or 'none'}",
              file=sys.stderr)
        return 2
    models = ProjectModels(args.model_root, args.project)
    if args.promote is not None:
        try:
            models.promote(args.promote)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    current = models.promoted()
    for card in models.cards():
        marker = "*" if current and card.get("version") == current.version else " "
        print(f"{marker} v{card.get('version')}  {card.get('status', '?'):9}  {card.get('metric', 'mAP50-95')} new {card.get('map_new')} "
              f"previous {card.get('map_previous')}  images {card.get('images')}  {card.get('finished_at', '')}")
    if current is None:
        print(f"project {args.project}: no promoted version (the configured models serve it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
