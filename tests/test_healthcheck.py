"""The container's health check (`python -m backend.serving.healthcheck`, the Dockerfile's HEALTHCHECK) against
the backend's app served on loopback with basic auth on, as compose runs it."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from backend.serving import healthcheck
from backend.serving.app import build_services, create_app
from backend.settings import Settings
from tests.conftest import demo_settings
from tests.e2e.servers import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    root = tmp_path_factory.mktemp("healthcheck")
    settings = demo_settings(root, root / "cache", basic_auth_user="label-studio", basic_auth_pass="s3cret:pass")
    services = build_services(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the app did not start"
    try:
        yield settings, str(port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        for choice in services.default_choices():  # the start-up loading thread: done before the interpreter exits
            services.yolo.get(choice)


def test_healthy_with_the_backends_own_basic_auth(served: tuple[Settings, str]) -> None:
    settings, port = served
    assert healthcheck.check(settings, f"http://127.0.0.1:{port}/health") is None


def test_wrong_credentials_are_unhealthy(served: tuple[Settings, str]) -> None:
    settings, port = served
    url = f"http://127.0.0.1:{port}/health"
    assert healthcheck.check(dataclasses.replace(settings, basic_auth_pass="wrong"), url) == f"{url}: HTTP 401"


def test_nothing_listening_is_unhealthy_with_the_reason(served: tuple[Settings, str]) -> None:
    settings, _ = served
    url = f"http://127.0.0.1:{free_port()}/health"
    problem = healthcheck.check(settings, url)
    assert problem is not None and problem.startswith(f"{url}: ") and "refused" in problem.lower()


def test_main_asks_port_with_the_settings_credentials_and_never_a_proxy(
        served: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _, port = served
    for name, value in {"HOST": "0.0.0.0", "PORT": port, "BASIC_AUTH_USER": "label-studio",
                        "BASIC_AUTH_PASS": "s3cret:pass", "HTTP_PROXY": "http://127.0.0.1:9",
                        "http_proxy": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert healthcheck.main() == 0
    assert capsys.readouterr().out == f"healthy: http://127.0.0.1:{port}/health\n"
    monkeypatch.setenv("BASIC_AUTH_PASS", "wrong")
    assert healthcheck.main() == 1
    assert capsys.readouterr().out == f"unhealthy: http://127.0.0.1:{port}/health: HTTP 401\n"


def test_a_bad_setting_is_unhealthy_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("BATCH_SIZE", "many")
    assert healthcheck.main() == 1
    assert capsys.readouterr().out.startswith("unhealthy: setting BATCH_SIZE")


@pytest.mark.parametrize("host,url", [
    ("0.0.0.0", "http://127.0.0.1:9090/health"),
    ("", "http://127.0.0.1:9090/health"),
    ("::", "http://[::1]:9090/health"),
    ("127.0.0.1", "http://127.0.0.1:9090/health"),
    ("10.1.2.3", "http://10.1.2.3:9090/health"),
    ("fd00::5", "http://[fd00::5]:9090/health"),
])
def test_the_url_is_where_the_server_listens(host: str, url: str) -> None:
    assert healthcheck.health_url(host, "9090") == url


def test_the_check_is_the_images_health_check() -> None:
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    (timeout,) = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK")]
    assert f"--timeout={int(healthcheck.TIMEOUT_S) + 2}s" in timeout
