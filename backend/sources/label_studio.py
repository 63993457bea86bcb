"""What the backend knows about the Label Studio server: its URL and token, shared by all workers.

Label Studio sends /setup (with `hostname` and `access_token`) to one process and may send the
next /predict to another gunicorn worker, so /setup's answer is kept on disk, not in memory.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import requests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    hostname: str  # e.g. http://localhost:8080, no trailing slash
    token: str  # legacy API token or personal access token (a JWT refresh token)
    # LABEL_STUDIO_URL, or a /setup from an authenticated or loopback caller: downloads may reach this host's own
    # paths even on a private address. False: the host must pass the URL policy like any other.
    trusted: bool = True


MAX_PROJECT_ID = 2**31 - 1  # Label Studio's project ids are Postgres/SQLite integers


class SetupConflict(Exception):
    """A /setup that would rebind a project to another Label Studio; the message says how to reset."""


def project_uid(project: object) -> str | None:
    """Label Studio's project uid "<id>.<created_at as Unix seconds>" ("12.1700000000"), or None for anything else
    (a bare id, a float, an id out of range)."""
    if not isinstance(project, str):
        return None
    head, dot, stamp = project.partition(".")
    if not (dot and head.isdigit() and stamp.isdigit() and head.isascii() and stamp.isascii() and len(stamp) <= 12):
        return None
    return f"{int(head)}.{int(stamp)}" if 0 < int(head) <= MAX_PROJECT_ID else None


def webhook_project_uid(project: object) -> str:
    """The uid of a webhook's serialized project, built as Label Studio builds it for /setup and /predict:
    `project.id` + "." + int(created_at.timestamp()); ValueError names what is wrong."""
    if not isinstance(project, dict):
        raise ValueError("'project' must be the serialized project object Label Studio sends")
    project_id, created_at = project.get("id"), project.get("created_at")
    if type(project_id) is not int or not 0 < project_id <= MAX_PROJECT_ID:
        raise ValueError(f"'project.id' must be a positive integer below 2^31, not {str(project_id)[:40]!r}")
    if not isinstance(created_at, str):
        raise ValueError("'project.created_at' is missing: Label Studio sends it with every project; it tells "
                         "projects of the same id on different Label Studio servers apart")
    try:
        moment = datetime.fromisoformat(created_at[:64])
    except ValueError:
        raise ValueError(f"'project.created_at' is not an ISO 8601 time: {created_at[:40]!r}") from None
    if moment.tzinfo is None:  # Label Studio serializes aware times; a naive one is taken as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return f"{project_id}.{int(moment.timestamp())}"


SETUP_STORE_MAX_BYTES = 50_000_000


class SetupStore:
    """Per-project `hostname`, `access_token` and labeling config from /setup, in files every worker reads.

    A record belongs to Label Studio's full project uid "<id>.<creation timestamp>", so two Label Studio
    instances (or a test server and a real one) using the same CACHE_DIR do not read each other's state, and
    a bare id finds nothing. Once a uid is bound to a host, a /setup naming another host is refused (a
    trusted /setup may take over a binding an untrusted one made); an empty token never erases a stored one.
    Files are readable by their owner only: they hold tokens.
    """

    def __init__(self, directory: Path, max_projects: int = 1000) -> None:
        self._directory = directory
        self._max_projects = max_projects

    def path(self, project: str) -> Path:
        return self._directory / f"project-{project}.json"

    def save(self, project: str | None, hostname: str, access_token: str, label_config: str | None,
             trusted: bool = True) -> None:
        """Keep /setup's answer for the uid; raises SetupConflict when the uid is bound to another host."""
        uid = project_uid(project)
        if uid is None:
            logger.warning("/setup without a Label Studio project uid (\"<id>.<timestamp>\"): its hostname, token and "
                           "labeling config are not kept")
            return
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._directory, 0o700)
        with open(self._directory / ".lock", "a+") as lock:  # two workers' /setup: one checks and writes at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = self.load(uid)
            bound = stored.get("hostname") or ""
            keeps_binding = stored.get("trusted", True) or not trusted
            if bound and hostname and hostname != bound and keeps_binding:
                raise SetupConflict(f"project {uid} is connected to Label Studio at {bound[:200]}; a /setup naming "
                                    f"{hostname[:200]} is refused. If Label Studio really moved, delete "
                                    f"{self.path(uid)} (or set LABEL_STUDIO_URL) and connect the model again")
            if stored.get("access_token") and (not access_token or (stored.get("trusted", True) and not trusted)):
                access_token = stored["access_token"]  # never erased by an empty token, nor replaced untrusted
            record = {"project": uid, "hostname": hostname or bound, "access_token": access_token,
                      "label_config": label_config, "trusted": trusted or (bool(stored) and keeps_binding and
                                                                           stored.get("trusted", True)),
                      "saved_at": time.time()}
            _write_private_json(self.path(uid), record)
            self._forget_least_recent()

    def _forget_least_recent(self) -> None:
        """At most MAX_SETUP_PROJECTS records and SETUP_STORE_MAX_BYTES together: the least recently set up go."""
        records = []
        for path in self._directory.glob("project-*.json"):
            try:
                stat = path.stat()
            except OSError:
                continue
            records.append((stat.st_mtime, stat.st_size, path))
        total = 0
        for count, (_, size, path) in enumerate(sorted(records, reverse=True)):
            total += size
            if count == 0 or (count < self._max_projects and total <= SETUP_STORE_MAX_BYTES):
                continue
            path.unlink(missing_ok=True)
            logger.warning("forgot the /setup of project %s (MAX_SETUP_PROJECTS=%d, %d bytes together at most): the "
                           "least recently set up; Label Studio sends it again when the project is opened",
                           path.stem.removeprefix("project-"), self._max_projects, SETUP_STORE_MAX_BYTES)

    def load(self, project: str | None) -> dict:
        """What /setup said for this project uid ("<id>.<timestamp>"); {} when nothing (or a bare id)."""
        uid = project_uid(project)
        if uid is None:
            return {}
        try:
            return json.loads(self.path(uid).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable setup state %s: %s", self.path(uid), exc)
            return {}

    def saved_configs(self) -> list[tuple[str, str]]:
        """(project, labeling config) of every project /setup told about."""
        configs = []
        for path in sorted(self._directory.glob("project-*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record.get("label_config"), str):
                configs.append((str(record.get("project")), record["label_config"]))
        return configs


def _write_private_json(path: Path, record: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jwt_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


FAILED_REFRESH_SECONDS = 10.0


class AccessTokens:
    """Turns a personal access token (a JWT refresh token) into short-lived access tokens.

    Label Studio's personal access tokens are refresh tokens: requests must carry an access token
    obtained from `/api/token/refresh/`. Legacy tokens and access tokens are used as they are.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._failures: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def bearer_or_legacy(self, credentials: Credentials) -> str:
        claims = _jwt_claims(credentials.token)
        if not claims or claims.get("token_type") != "refresh":
            return credentials.token
        key = (credentials.hostname, credentials.token)
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[1] > time.time() + 30:
                return cached[0]
            failed = self._failures.get(key)
            if failed and failed[1] > time.time():  # one failure answers the request's other tasks at once
                raise PermissionError(failed[0])
        try:
            response = requests.post(f"{credentials.hostname}/api/token/refresh/", json={"refresh": credentials.token},
                                     timeout=self._timeout)
            if response.status_code != 200:
                raise PermissionError(f"Label Studio refused the personal access token ({response.status_code} from "
                                      "/api/token/refresh/)")
            access = response.json().get("access", "")
        except (requests.RequestException, ValueError, PermissionError) as exc:
            message = str(exc) if isinstance(exc, PermissionError) else \
                f"cannot refresh the personal access token at {credentials.hostname[:200]}: {type(exc).__name__}"
            with self._lock:
                self._failures[key] = (message, time.time() + FAILED_REFRESH_SECONDS)
            raise PermissionError(message) from None

        expires = float((_jwt_claims(access) or {}).get("exp", time.time() + 60))
        with self._lock:
            self._cache[key] = (access, expires)
        return access
