"""Does Label Studio accept the token the backend downloads with? Asked once per host and token, right
after /setup, so that a refused token is an ERROR with its fix before the first task goes without predictions.

Label Studio 1.23 turns legacy tokens off for a new organization, yet sends the project creator's legacy
token in /setup: every `/data/upload/...` download then fails with 401. The check is one
`GET /api/current-user/whoami`, the cheapest call that needs a valid token. What it found is kept in
CACHE_DIR (one small file, no tokens in it: a hash of host and token) so /health in every worker says it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from backend.sources.label_studio import AccessTokens, Credentials

logger = logging.getLogger(__name__)

REFUSED_AGAIN_AFTER_S = 60.0  # a refused token is asked about again after this: the user may have fixed it
CHECK_TIMEOUT_S = 10.0


def token_fix(host: str) -> str:
    return ("create a personal access token in Label Studio (Account & Settings -> Personal Access Token) and start "
            f"the backend with LABEL_STUDIO_URL={host or '<Label Studio URL>'} LABEL_STUDIO_API_KEY=<that token>, or turn "
            "legacy tokens on for the organization (Organization -> API Tokens Settings -> Legacy Tokens)")


def refused_download_hint(host: str) -> str:
    """What a 401 from Label Studio during an image download means and what fixes it."""
    return f"Label Studio refused the backend's token. Fix: {token_fix(host)}"


@dataclass(frozen=True)
class TokenVerdict:
    accepted: bool | None  # None: Label Studio could not be asked (unreachable, an error of its own)
    message: str


class TokenCheck:
    """`check(credentials, source)` asks Label Studio once per (host, token); `problems()` for /health."""

    def __init__(self, tokens: AccessTokens, state_file: Path, timeout: float) -> None:
        self._tokens = tokens
        self._state_file = state_file
        self._timeout = min(timeout, CHECK_TIMEOUT_S)
        self._accepted: set[str] = set()
        self._lock = threading.Lock()

    def check_in_background(self, credentials: Credentials | None, source: str) -> None:
        if credentials and credentials.hostname and credentials.token:
            threading.Thread(target=self.check, args=(credentials, source), name="token-check", daemon=True).start()

    def check(self, credentials: Credentials, source: str) -> TokenVerdict:
        """`source` names where the token came from in messages: "LABEL_STUDIO_API_KEY", "the token sent in /setup"."""
        key = _key(credentials)
        with self._lock:
            if key in self._accepted:
                return TokenVerdict(True, "accepted")
            recorded = self._read().get(key)
            if recorded and recorded["checked_at"] > time.time() - REFUSED_AGAIN_AFTER_S:
                return TokenVerdict(False, recorded["message"])
        verdict = self._ask(credentials, source)
        with self._lock:
            states = self._read()
            if verdict.accepted:
                self._accepted.add(key)
                states.pop(key, None)
            elif verdict.accepted is False:
                states[key] = {"hostname": credentials.hostname, "message": verdict.message, "checked_at": time.time()}
            self._write(states)
        if verdict.accepted is False:
            logger.error("%s", verdict.message)
        elif verdict.accepted is None:
            logger.warning("%s", verdict.message)
        else:
            logger.info("Label Studio at %s accepts %s", credentials.hostname, source)
        return verdict

    def problems(self) -> dict[str, str]:
        """Label Studio host -> why its token is refused, for /health."""
        with self._lock:
            return {state["hostname"]: state["message"] for state in self._read().values()}

    def _ask(self, credentials: Credentials, source: str) -> TokenVerdict:
        host = credentials.hostname
        try:
            token = self._tokens.bearer_or_legacy(credentials)
        except PermissionError as exc:  # a personal access token that /api/token/refresh/ refused, or no answer
            refused = "refused" in str(exc)
            return TokenVerdict(False if refused else None, f"Label Studio at {host} {'refused' if refused else 'could not check'} "
                                f"{source}: {exc}. " + (f"Fix: {token_fix(host)}" if refused else _unreachable_hint(host)))
        scheme = "Bearer" if token.count(".") == 2 else "Token"  # as label_studio_sdk sends it with downloads
        try:
            response = requests.get(f"{host}/api/current-user/whoami", headers={"Authorization": f"{scheme} {token}"},
                                    timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            return TokenVerdict(None, f"cannot reach Label Studio at {host} to check {source}: {type(exc).__name__}. "
                                + _unreachable_hint(host))
        if response.status_code in (401, 403):
            return TokenVerdict(False, f"Label Studio at {host} refuses {source} (HTTP {response.status_code}: "
                                f"{_detail(response)}), so every image uploaded to it fails to download. Fix: {token_fix(host)}")
        if response.status_code != 200:
            return TokenVerdict(None, f"cannot check {source} at {host}: /api/current-user/whoami answered "
                                f"HTTP {response.status_code}")
        return TokenVerdict(True, "accepted")

    def _read(self) -> dict:
        try:
            states = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}
        return states if isinstance(states, dict) else {}

    def _write(self, states: dict) -> None:
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._state_file.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as handle:
                json.dump(states, handle)
            os.replace(tmp, self._state_file)
        except OSError as exc:
            logger.warning("cannot record the token check in %s: %s", self._state_file, exc)


def _key(credentials: Credentials) -> str:
    return hashlib.sha256(f"{credentials.hostname}\n{credentials.token}".encode()).hexdigest()[:32]


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    return str(detail)[:300] or response.reason or "refused"


def _unreachable_hint(host: str) -> str:
    if "localhost" in host or "127.0.0.1" in host:
        return ("Image downloads from it will fail the same way; in Docker, Label Studio's `localhost` is not the "
                "backend's: set LABEL_STUDIO_URL to an address the backend reaches (http://label-studio:8080 in compose)")
    return "Image downloads from it will fail the same way; set LABEL_STUDIO_URL to an address the backend reaches"
