"""Deployment files (issue 5): docker-compose.yml is valid (Compose's JSON schema, and `docker compose
config` where a Compose CLI is installed) and wired so the two services connect; the Dockerfile serves
with the gunicorn configuration and builds from files that exist."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from backend.settings import Settings
from tests.conftest import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# The Compose Specification schema shipped with docker-compose 1.29.2 (Debian bookworm), Apache-2.0.
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "data" / "compose_spec.json"
# Read by gunicorn.conf.py, _wsgi.py or Ultralytics rather than by the settings object.
SERVER_VARIABLES = {"HOST", "PORT", "GUNICORN_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR"}
SETTING_VARIABLES = {f.name.upper() for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def backend_service(compose: dict) -> dict:
    (service,) = [s for s in compose["services"].values() if "build" in s]
    return service


def label_studio_service(compose: dict) -> tuple[str, dict]:
    (item,) = [(name, s) for name, s in compose["services"].items() if str(s.get("image", "")).startswith("heartexlabs/label-studio:")]
    return item


def test_compose_file_matches_the_compose_schema(compose: dict) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft201909Validator)


def test_the_schema_check_catches_a_broken_file(compose: dict) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    backend_service(broken)["deploy"]["resources"]["reservations"]["devices"][0]["gpus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft201909Validator)


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file(tmp_path: Path) -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI (apt-get install docker-compose, or the docker compose plugin); schema checked above")
    done = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr


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


def test_backend_environment_names_only_known_settings(compose: dict) -> None:
    unknown = set(backend_service(compose)["environment"]) - SETTING_VARIABLES - SERVER_VARIABLES
    assert not unknown, f"not settings of this backend: {sorted(unknown)}"


def test_backend_has_a_gpu_and_persistent_models_and_caches(compose: dict) -> None:
    backend = backend_service(compose)
    (device,) = backend["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in backend["volumes"]}
    assert set(mounts) == {"/models", "/cache"} and set(mounts.values()) <= set(compose["volumes"])
    dockerfile_env = dict(re.findall(r"^\s+(MODEL_ROOT|CACHE_DIR)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert dockerfile_env["MODEL_ROOT"] == "/models" and dockerfile_env["CACHE_DIR"].startswith("/cache/")
    assert backend["environment"]["SAM_DISK_CACHE_DIR"].startswith("/cache/")


def test_health_checks_ask_the_port_the_backend_serves(compose: dict) -> None:
    backend = backend_service(compose)
    port = backend["ports"][0].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/health" in backend["healthcheck"]["test"]
    assert re.search(rf"^\s+PORT={port}\b", DOCKERFILE.read_text(), re.MULTILINE)
    assert f"EXPOSE {port}" in DOCKERFILE.read_text()


def test_dockerfile_uses_a_cuda_pytorch_base_and_the_gunicorn_config() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert "gunicorn -c backend/gunicorn.conf.py backend._wsgi:app" in text
    assert "backend/_wsgi.py --check" in text
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repository"
