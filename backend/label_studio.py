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
    """Per-project `hostname`, `access_token` and labeling config from /setup, in files every worker reads."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def save(self, project: str | None, hostname: str, access_token: str, label_config: str | None) -> None:
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {"hostname": hostname, "access_token": access_token, "label_config": label_config, "saved_at": time.time()}
        for name in {_project_key(project), "latest"}:
            _write_private_json(self._directory / f"{name}.json", record)

    def load(self, project: str | None) -> dict:
        """What /setup said for this project, else for the latest project set up; {} when nothing."""
        for name in (_project_key(project), "latest"):
            path = self._directory / f"{name}.json"
            try:
                return json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable setup state %s: %s", path, exc)
        return {}


def _project_key(project: str | None) -> str:
    # Label Studio sends "<project id>.<timestamp>"; the id is stable across re-connects.
    head = str(project or "").split(".", 1)[0]
    return f"project-{head}" if head.isdigit() else "latest"


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


class AccessTokens:
    """Turns a personal access token (a JWT refresh token) into short-lived access tokens.

    Label Studio's personal access tokens are refresh tokens: requests must carry an access token
    obtained from `/api/token/refresh/`. Legacy tokens and access tokens are used as they are.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
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
        response = requests.post(f"{credentials.hostname}/api/token/refresh/", json={"refresh": credentials.token},
                                 timeout=self._timeout)
        if response.status_code != 200:
            raise PermissionError(f"Label Studio refused the personal access token ({response.status_code} from /api/token/refresh/)")
        access = response.json().get("access", "")
        expires = float((_jwt_claims(access) or {}).get("exp", time.time() + 60))
        with self._lock:
            self._cache[key] = (access, expires)
        return access
