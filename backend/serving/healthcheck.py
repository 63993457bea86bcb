"""The container's health check: does the backend in this container answer GET /health?

    python -m backend.serving.healthcheck      # exit 0: HTTP 200; 1 otherwise, with one line saying why

It asks HOST:PORT (loopback when the server listens on every address) with the backend's own basic auth
credentials, from the same settings the server reads, so the check keeps working when basic auth is on.
Bounded: one request, TIMEOUT_S seconds; proxies from the environment are never used for it.
"""

from __future__ import annotations

import base64
import os
import sys
import urllib.error
import urllib.request

from backend.settings import Settings, SettingsError

TIMEOUT_S = 8.0  # below the Dockerfile's HEALTHCHECK --timeout


def health_url(host: str, port: str) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/health"


def health_request(settings: Settings, url: str) -> urllib.request.Request:
    request = urllib.request.Request(url)
    if settings.basic_auth_user:
        pair = f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    return request


def check(settings: Settings, url: str) -> str | None:
    """None when `url` answers 200; else why not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(health_request(settings, url), timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main() -> int:
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"unhealthy: {exc}")
        return 1
    url = health_url(os.environ.get("HOST", "0.0.0.0"), os.environ.get("PORT", "9090"))
    problem = check(settings, url)
    print(f"unhealthy: {problem}" if problem else f"healthy: {url}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
