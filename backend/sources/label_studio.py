"""What the backend knows about the Label Studio server: its URL and token, shared by all workers.

Label Studio sends /setup (with `hostname` and `access_token`) to one process and may send the
next /predict to another gunicorn worker, so /setup's answer is kept on disk, not in memory.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    hostname: str  # e.g. http://localhost:8080, no trailing slash
    token: str  # legacy API token or personal access token (a JWT refresh token)


class SetupStore:
    """Per-project `hostname`, `access_token` and labeling config from /setup, in files every worker reads.

    Label Studio names a project "<id>.<creation timestamp>" in /setup and /predict, so two Label Studio
    instances (or a test server and a real one) using the same CACHE_DIR do not read each other's state.
    Files are readable by their owner only: they hold tokens.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def save(self, project: str | None, hostname: str, access_token: str, label_config: str | None) -> None:
        key = _project_key(project)
        if key is None:
            logger.warning("/setup without a project: its hostname, token and labeling config are not kept")
            return
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._directory, 0o700)
        record = {"project": str(project), "hostname": hostname, "access_token": access_token,
                  "label_config": label_config, "saved_at": time.time()}
        _write_private_json(self._directory / f"{key}.json", record)

    def load(self, project: str | None) -> dict:
        """What /setup said for this project ("<id>.<timestamp>"; a bare id finds its latest); {} when nothing."""
        key = _project_key(project)
        if key is None:
            return {}
        if "." in str(project):
            candidates = [self._directory / f"{key}.json"]
        else:
            candidates = sorted(self._directory.glob(f"{key}.*.json"), key=_mtime, reverse=True)
        for path in candidates:
            try:
                return json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable setup state %s: %s", path, exc)
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


def _project_key(project: str | None) -> str | None:
    """`project-<id>.<timestamp>` for Label Studio's project string, `project-<id>` for a bare id."""
    head, dot, stamp = str(project or "").partition(".")
    if not head.isdigit() or (dot and not stamp.isdigit()):
        return None
    return f"project-{head}.{stamp}" if dot else f"project-{head}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
