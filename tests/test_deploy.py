"""Deployment files: docker-compose.yml runs on any host (CPU) and docker-compose.gpu.yml adds the GPU
reservation; both are valid Compose files (Compose's JSON schema, and `docker compose config` where a
Compose CLI is installed), wired so the two services connect with basic auth. The Dockerfile builds from
files that exist, with one headless OpenCV, runs as a non-root user, checks its health with the backend's
own credentials and, when a model cannot load, stays up without serving instead of exiting (a restart
policy would loop). The image itself is built and run by deploy/smoke.sh, which needs a Docker daemon
and minutes: not part of the test suite."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from backend.settings import Settings
from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_FILE = REPO_ROOT / "docker-compose.gpu.yml"
SMOKE_FILE = REPO_ROOT / "deploy" / "docker-compose.smoke.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
CONTAINER_START = REPO_ROOT / "deploy" / "container-start.sh"
# The Compose Specification schema shipped with docker-compose 1.29.2 (Debian bookworm), Apache-2.0.
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "data" / "compose_spec.json"
# Read by gunicorn.conf.py, _wsgi.py or Ultralytics rather than by the settings object.
SERVER_VARIABLES = {"HOST", "PORT", "GUNICORN_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR"}
SETTING_VARIABLES = {f.name.upper() for f in dataclasses.fields(Settings)}
# What `docker compose config` needs to interpolate the files (the smoke test's ports, tokens and image).
COMPOSE_ENV = {"BASIC_AUTH_PASS": "a-password", "SMOKE_LS_PORT": "18080", "SMOKE_BACKEND_PORT": "19090",
               "SMOKE_LS_PASSWORD": "pw", "SMOKE_LS_TOKEN": "token", "SMOKE_IMAGE": "ls-yolo-sam-backend:smoke"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE_FILE)


def backend_service(compose: dict) -> dict:
    (service,) = [s for s in compose["services"].values() if "build" in s]
    return service


def label_studio_service(compose: dict) -> tuple[str, dict]:
    (item,) = [(name, s) for name, s in compose["services"].items() if str(s.get("image", "")).startswith("heartexlabs/label-studio:")]
    return item


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf'^ARG {name}="([^"]*)"', DOCKERFILE.read_text(), re.MULTILINE)
    return value


@pytest.mark.parametrize("path", [COMPOSE_FILE, GPU_FILE, SMOKE_FILE], ids=lambda p: p.name)
def test_compose_files_match_the_compose_schema(path: Path) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(load(path), schema, cls=jsonschema.Draft201909Validator)


def test_the_schema_check_catches_a_broken_file() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = load(GPU_FILE)
    broken["services"]["ml-backend"]["deploy"]["resources"]["reservations"]["devices"][0]["gpus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft201909Validator)


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def run_compose_config(tmp_path: Path, files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (apt-get install docker-compose, or the docker compose plugin); schema checked above")
    arguments = [argument for path in files for argument in ("-f", str(path))]
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV and not k.startswith(("BASIC_AUTH", "COMPOSE_"))}
    return subprocess.run([*cli, *arguments, "config", "-q"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**clean, **env})


@pytest.mark.parametrize("overrides", [[], [GPU_FILE], [SMOKE_FILE]], ids=["cpu", "gpu", "smoke"])
def test_compose_cli_accepts_the_files(tmp_path: Path, overrides: list[Path]) -> None:
    done = run_compose_config(tmp_path, [COMPOSE_FILE, *overrides], COMPOSE_ENV)
    assert done.returncode == 0, done.stderr


def test_compose_without_a_backend_password_stops_with_what_to_set(tmp_path: Path) -> None:
    done = run_compose_config(tmp_path, [COMPOSE_FILE], {})
    assert done.returncode != 0 and "set BASIC_AUTH_PASS in .env" in done.stderr, done.stderr


def test_label_studio_accepts_a_backend_on_the_compose_network(compose: dict) -> None:
    _, service = label_studio_service(compose)
    env = service["environment"]
    assert (env["ML_BLOCK_LOCAL_IP"], env["SSRF_PROTECTION_ENABLED"]) == ("false", "false")
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert any(volume.endswith(":/label-studio/data") for volume in service["volumes"])


def test_backend_reaches_label_studio_by_service_name(compose: dict) -> None:
    name, label_studio = label_studio_service(compose)
    container_port = label_studio["ports"][0].rsplit(":", 1)[1]
    backend = backend_service(compose)
    assert backend["environment"]["LABEL_STUDIO_URL"] == f"http://{name}:{container_port}"
    assert name in backend["depends_on"]


@pytest.mark.parametrize("path", [COMPOSE_FILE, SMOKE_FILE], ids=lambda p: p.name)
def test_backend_environment_names_only_known_settings(path: Path) -> None:
    unknown = set(load(path)["services"]["ml-backend"]["environment"]) - SETTING_VARIABLES - SERVER_VARIABLES
    assert not unknown, f"not settings of this backend: {sorted(unknown)}"


def test_the_base_file_runs_on_any_host_and_the_gpu_file_adds_the_gpu(compose: dict) -> None:
    for service in compose["services"].values():
        assert not {"deploy", "runtime", "devices"} & set(service), "needs a GPU host"
    gpu = load(GPU_FILE)
    assert set(gpu["services"]) == {"ml-backend"} and set(gpu["services"]["ml-backend"]) == {"deploy"}
    (device,) = gpu["services"]["ml-backend"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"


def test_basic_auth_is_on_with_a_password_the_user_sets(compose: dict) -> None:
    env = backend_service(compose)["environment"]
    assert re.fullmatch(r"\$\{BASIC_AUTH_USER:-\w+\}", env["BASIC_AUTH_USER"])
    assert env["BASIC_AUTH_PASS"].startswith("${BASIC_AUTH_PASS:?")  # required: compose stops without it


def test_models_and_sam_are_the_backends_defaults_unless_set(compose: dict) -> None:
    env = backend_service(compose)["environment"]
    # No value: passed on from .env or the shell when set, else absent (the backend's own default).
    for name in ("YOLO_DET_MODEL", "YOLO_SEG_MODEL", "MODEL_NAME", "SAM_CONFIG", "SAM_CHECKPOINT_FILE"):
        assert env[name] is None, name


def test_extras_are_a_build_argument_with_none_by_default(compose: dict) -> None:
    assert dockerfile_arg("EXTRAS") == "" and backend_service(compose)["build"]["args"]["EXTRAS"] == "${EXTRAS:-}"
    assert '-e ".${EXTRAS:+[$EXTRAS]}"' in DOCKERFILE.read_text()
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"sam2", "sam-hq"} <= set(extras)  # what the Dockerfile's and compose's comments name


def test_persistent_models_and_caches(compose: dict) -> None:
    backend = backend_service(compose)
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in backend["volumes"]}
    assert set(mounts) == {"/models", "/cache"} and set(mounts.values()) <= set(compose["volumes"])
    dockerfile_env = dict(re.findall(r"^\s+(MODEL_ROOT|CACHE_DIR)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert dockerfile_env["MODEL_ROOT"] == "/models" and dockerfile_env["CACHE_DIR"].startswith("/cache/")
    assert backend["environment"]["SAM_DISK_CACHE_DIR"].startswith("/cache/")
    # A fresh named volume takes the image folder's owner: the non-root user must own them.
    assert "chown backend:backend /models /cache" in DOCKERFILE.read_text()


def test_the_image_health_check_asks_the_backend_it_serves(compose: dict) -> None:
    text = DOCKERFILE.read_text()
    backend = backend_service(compose)
    port = backend["ports"][0].rsplit(":", 1)[1]
    assert re.search(rf"^\s+PORT={port}\b", text, re.MULTILINE) and f"EXPOSE {port}" in text
    assert 'CMD ["python", "-m", "backend.serving.healthcheck"]' in text
    assert "healthcheck" not in backend  # the image's, which reads PORT and the basic auth settings


def test_only_the_smoke_override_uses_the_host_network(compose: dict) -> None:
    for service in [*compose["services"].values(), *load(GPU_FILE)["services"].values()]:
        assert "network_mode" not in service
    smoke = load(SMOKE_FILE)["services"]
    assert {name: service["network_mode"] for name, service in smoke.items()} == {
        "label-studio": "host", "ml-backend": "host"}


def test_dockerfile_uses_a_cuda_pytorch_base_one_headless_opencv_and_a_user() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert "apt-get" not in text  # no system packages: no libgl1 (headless OpenCV), no curl (the health check)
    assert "pip uninstall -y opencv-python opencv-python-headless" in text
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("opencv-python-headless") for d in dependencies)
    assert not any(re.match(r"opencv-python\b(?!-)", d) for d in dependencies)
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user not in {"root", "0"} and f"useradd --uid 1000 --user-group --create-home {user}" in text
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        for source in [part for part in line.split()[:-1] if not part.startswith("--")]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert 'CMD ["sh", "deploy/container-start.sh"]' in text
    start = CONTAINER_START.read_text()
    assert "python backend/_wsgi.py --check" in start
    assert "exec gunicorn -c backend/gunicorn.conf.py backend._wsgi:app" in start


def fake_commands(folder: Path, check_status: int) -> dict[str, str]:
    """`python` whose --check exits with check_status, `gunicorn` that prints its arguments."""
    folder.mkdir()
    (folder / "python").write_text(f"#!/bin/sh\necho \"check $*\"\nexit {check_status}\n")
    (folder / "gunicorn").write_text("#!/bin/sh\necho \"gunicorn $*\"\n")
    for name in ("python", "gunicorn"):
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_container_start_serves_after_a_passing_check(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(CONTAINER_START)], env=fake_commands(tmp_path / "bin", 0), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["check backend/_wsgi.py --check",
                                        "gunicorn -c backend/gunicorn.conf.py backend._wsgi:app"]


def test_container_start_stays_up_without_serving_after_a_failed_check(tmp_path: Path) -> None:
    process = subprocess.Popen(["sh", str(CONTAINER_START)], env=fake_commands(tmp_path / "bin", 1),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(2)
        assert process.poll() is None, "exited: a restart policy would start it again, and again"
        process.send_signal(signal.SIGTERM)  # docker stop
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    assert "gunicorn" not in stdout and stderr.startswith("not serving: fix the setting named above")
