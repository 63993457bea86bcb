"""Who may call the backend (backend/serving/access.py): protected mode, basic auth, open; secrets from files."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.serving import cli
from backend.serving.app import build_services, create_app
from backend.settings import Settings, SettingsError
from tests.conftest import demo_settings

REMOTE = ("10.1.2.3", 40000)
ENDPOINTS = [("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("GET", "/versions"),
             ("GET", "/metrics"), ("GET", "/"), ("GET", "/health"), ("GET", "/nope")]


def app_for(image_root: Path, tmp_path: Path, **overrides: object):  # noqa: ANN201 - a FastAPI app
    settings = demo_settings(image_root, tmp_path / "cache", model_root=str(tmp_path / "models"), **overrides)
    return create_app(settings, build_services(settings))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_protected_mode_refuses_callers_on_other_machines_naming_the_two_ways_out(
        image_root: Path, tmp_path: Path, method: str, path: str) -> None:
    client = TestClient(app_for(image_root, tmp_path), client=REMOTE)
    response = client.request(method, path, json={"project": "1.1", "schema": "<View/>"})
    assert response.status_code == 403
    message = response.json()["error"]
    assert "protected mode" in message and "10.1.2.3" in message
    assert "BASIC_AUTH_USER" in message and "ALLOW_UNAUTHENTICATED=true" in message
    assert "Basic Authentication" in message  # the field to choose in Label Studio's Connect Model dialog


def test_protected_mode_answers_loopback_callers_without_any_setting(image_root: Path, tmp_path: Path) -> None:
    app = app_for(image_root, tmp_path)
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        response = TestClient(app, client=(address, 1)).get("/versions")
        assert response.status_code == 200, address
    assert TestClient(app, client=("127.0.0.1", 1)).get("/health").json()["model_class"] == "YoloSamBackend"


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_a_proxy_on_this_machine_does_not_make_remote_callers_local(image_root: Path, tmp_path: Path,
                                                                     header: str) -> None:
    client = TestClient(app_for(image_root, tmp_path), client=("127.0.0.1", 1))
    assert client.get("/versions", headers={header: "127.0.0.1"}).status_code == 403


def test_refusals_are_logged_once_per_address(image_root: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    app = app_for(image_root, tmp_path)
    caplog.set_level(logging.WARNING, logger="backend.serving.access")
    for _ in range(3):
        TestClient(app, client=REMOTE).post("/setup", json={})
    TestClient(app, client=("10.9.9.9", 1)).get("/versions")
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.serving.access"]
    assert len(lines) == 2
    assert "10.1.2.3" in lines[0] and "403" in lines[0] and "10.9.9.9" in lines[1]


def test_health_is_protected_like_everything_else(image_root: Path, tmp_path: Path) -> None:
    """Docker's HEALTHCHECK asks from inside the container: loopback (with basic auth, it sends the credentials)."""
    app = app_for(image_root, tmp_path)
    assert TestClient(app, client=REMOTE).get("/health").status_code == 403
    assert TestClient(app, client=("127.0.0.1", 1)).get("/health").json()["status"] == "UP"


def test_allow_unauthenticated_opens_every_endpoint_and_says_so_at_start(
        image_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = app_for(image_root, tmp_path, allow_unauthenticated=True)
    caplog.set_level(logging.INFO, logger="backend.serving.app")
    with TestClient(app, client=REMOTE) as client:  # runs the start-up, as a gunicorn worker does
        assert client.get("/versions").status_code == 200
        assert client.get("/health").json()["model_class"] == "YoloSamBackend"
    started = [r for r in caplog.records if r.getMessage().startswith("access:")]
    assert started[0].levelno == logging.WARNING and "ALLOW_UNAUTHENTICATED=true" in started[0].getMessage()


def test_the_start_up_log_names_protected_mode(image_root: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend.serving.app")
    with TestClient(app_for(image_root, tmp_path)):
        pass
    assert any(r.getMessage().startswith("access: protected mode") for r in caplog.records)


def test_basic_auth_is_required_of_every_caller_local_or_not(image_root: Path, tmp_path: Path) -> None:
    app = app_for(image_root, tmp_path, basic_auth_user="ls", basic_auth_pass="sécret")
    for address in (REMOTE, ("127.0.0.1", 1)):
        client = TestClient(app, client=address)
        refused = client.get("/versions")
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
        assert "Basic Authentication" in refused.json()["error"]
        assert client.get("/versions", headers=basic("ls", "wrong")).status_code == 401
        assert client.get("/versions", headers=basic("ls", "sécret")).status_code == 200


def test_secrets_come_from_files_with_the_trailing_newline_dropped(tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("s3cret\n")
    (tmp_path / "key").write_text("operator-key\r\n")
    settings = Settings.load(environ={"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS_FILE": str(tmp_path / "pass"),
                                      "LABEL_STUDIO_URL": "http://ls:8080",
                                      "LABEL_STUDIO_API_KEY_FILE": str(tmp_path / "key")})
    assert settings.basic_auth_pass == "s3cret" and settings.label_studio_api_key == "operator-key"
    assert "s3cret" not in repr(settings) and "operator-key" not in repr(settings)
    child = settings.as_environ()  # a training process reads the secrets as read, not the files again
    assert Settings.load(environ=child).basic_auth_pass == "s3cret"


@pytest.mark.parametrize(("environ", "expected"), [
    ({"BASIC_AUTH_PASS": "a", "BASIC_AUTH_PASS_FILE": "{dir}/pass"}, "not both"),
    ({"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS_FILE": "{dir}/missing"}, "cannot be read"),
    ({"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS_FILE": "{dir}/empty"}, "is empty"),
    ({"LABEL_STUDIO_API_KEY": "k"}, "without LABEL_STUDIO_URL"),
])
def test_unusable_secret_settings_are_one_sentence(tmp_path: Path, environ: dict, expected: str) -> None:
    (tmp_path / "pass").write_text("p")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match=expected):
        Settings.load(environ={key: value.format(dir=tmp_path) for key, value in environ.items()})


def test_the_key_without_its_url_stops_the_backend_with_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "operator-key")
    assert cli.main(["--port", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "LABEL_STUDIO_URL" in error and "operator-key" not in error


def test_a_password_on_the_command_line_works_but_warns(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    seen = []
    monkeypatch.setattr(cli, "serve", lambda args, settings: seen.append(settings) or 0)
    monkeypatch.setattr(cli, "configure_logging", lambda level: None)
    caplog.set_level(logging.WARNING, logger="backend")
    assert cli.main(["--basic-auth-user", "ls", "--basic-auth-pass", "pw"]) == 0
    assert seen[0].basic_auth_pass == "pw"
    assert any("--basic-auth-pass" in r.getMessage() and "ps" in r.getMessage() for r in caplog.records)


def test_the_key_without_its_url_stops_gunicorn_with_exit_2_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "LABEL_STUDIO_API_KEY": "operator-key"}
    process = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "-c", "backend/gunicorn.conf.py",
                              "backend._wsgi:app"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") == 0 and "LABEL_STUDIO_URL" in process.stderr
