"""End-to-end fixtures: one real Label Studio 1.23.2 per test session, backends started with the
user's command (`label-studio-ml start backend --port P --with ...`), and projects built through
Label Studio's API the way a user builds them in the browser.

Label Studio runs as a new user gets it: legacy tokens off (1.23's default for a new organization), so
backends get what the Quick start tells users to give them, LABEL_STUDIO_URL and a personal access token
made through Label Studio's API (`POST /api/token/`, the "Create New Token" button).

Label Studio comes from its own venv: $LS_VENV, else `.ls-venv` in the repository (`.ci/run` makes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from backend.settings import Settings
from tests.conftest import ALL_CONTROLS_CONFIG, DEMO_DET, DEMO_SEG, MODELS_DIR, REPO_ROOT
from tests.e2e.ls_client import LabelStudioClient
from tests.e2e.servers import ServerProcess, free_port, start_server
from tools.shapes_dataset import generate_image

LS_VERSION = "1.23.2"
LS_EMAIL = "e2e@example.com"
LS_PASSWORD = "e2e-password-1234"
LS_LEGACY_TOKEN = "e2e0legacy0token0for0setup"  # the user's legacy token, which /setup carries and 1.23 refuses
BASIC_AUTH = ("label-studio", "e2e-basic-auth-pass")
# First start runs every migration; on 2 busy cores that has taken over a minute.
LS_STARTUP_TIMEOUT_S = 420
BACKEND_STARTUP_TIMEOUT_S = 180
SCORE_THRESHOLD = 0.25  # the demo models are small; this keeps regions of every type on the test images
E2E_SEEDS = (5000, 5001, 5002, 5003)  # held out from the demo models' training seeds
DEMO_WITH = (f"model_root={MODELS_DIR}", f"yolo_det_model={DEMO_DET}", f"yolo_seg_model={DEMO_SEG}",
             f"model_score_threshold={SCORE_THRESHOLD}", "device=cpu")
SETTING_ENV_NAMES = {f.name.upper() for f in dataclasses.fields(Settings)}


def label_studio_executable() -> Path | None:
    candidates = [Path(os.environ["LS_VENV"])] if os.environ.get("LS_VENV") else []
    candidates.append(REPO_ROOT / ".ls-venv")
    for venv in candidates:
        executable = venv / "bin" / "label-studio"
        if executable.is_file():
            return executable
    return None


@dataclass
class LabelStudio:
    server: ServerProcess
    client: LabelStudioClient
    data_dir: Path
    port: int
    _personal_access_token: str = ""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def setup_hostname(self) -> str:
        """The `hostname` Label Studio puts in /setup: http://localhost:<its port>."""
        return f"http://localhost:{self.port}"

    def personal_access_token(self) -> str:
        if not self._personal_access_token:
            self._personal_access_token = self.client.create_personal_access_token()
        return self._personal_access_token


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    executable = label_studio_executable()
    if executable is None:
        pytest.skip("no Label Studio venv: set LS_VENV or create .ls-venv with "
                    "`python3 -m venv .ls-venv && .ls-venv/bin/pip install -c tests/e2e/label-studio-constraints.txt "
                    f"label-studio=={LS_VERSION}` (.ci/run does)")
    root = tmp_path_factory.mktemp("label-studio")
    data_dir = root / "data"
    data_dir.mkdir()
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("LABEL_STUDIO_", "DJANGO_", "ML_", "SSRF_"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # The backend runs on loopback, which Label Studio refuses by default (see tests/data/ls-protocol/README.md).
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "COLLECT_ANALYTICS": "false",
    })
    command = [str(executable), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1",
               "--username", LS_EMAIL, "--password", LS_PASSWORD, "--user-token", LS_LEGACY_TOKEN]
    server = start_server("Label Studio", command, cwd=root, env=env, log_path=root / "label-studio.log",
                          url=f"http://127.0.0.1:{port}", ready_path="/health", timeout_s=LS_STARTUP_TIMEOUT_S)
    try:
        yield LabelStudio(server, LabelStudioClient(server.url, LS_EMAIL, LS_PASSWORD), data_dir, port)
    finally:
        server.stop()


# ---------------------------------------------------------------- backends


@dataclass
class Backend:
    server: ServerProcess
    cache_dir: Path
    basic_auth: tuple[str, str] | None = None  # BASIC_AUTH_USER, BASIC_AUTH_PASS it was started with

    @property
    def url(self) -> str:
        return self.server.url

    def health(self) -> dict:
        return requests.get(f"{self.url}/health", auth=self.basic_auth, timeout=30).json()

    def setup_record(self, project_id: int) -> dict:
        """What the last /setup for this project told the backend (hostname, access_token, config)."""
        (path,) = (self.cache_dir / "setup").glob(f"project-{project_id}.*.json")  # "<id>.<created>"
        return json.loads(path.read_text())

    def predict(self, body: dict) -> dict:
        response = requests.post(f"{self.url}/predict", json=body, auth=self.basic_auth, timeout=300)
        response.raise_for_status()
        return response.json()


StartBackend = Callable[..., Backend]


@pytest.fixture(scope="session")
def start_backend(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartBackend]:
    """`start_backend(extra_with=[...], env={...})`: the backend as `label-studio-ml start backend --port P
    --with <demo models> <extra_with>` runs it, from the repository root; the same arguments give the
    same running backend. Settings variables of this process's environment are not passed on.

    As the Quick start says, it gets LABEL_STUDIO_URL and a personal access token as LABEL_STUDIO_API_KEY
    (`personal_access_token=False`: only what /setup sends); `basic_auth=(user, password)` also sets
    BASIC_AUTH_USER and BASIC_AUTH_PASS, which make_project then gives Label Studio's Connect Model."""
    started: dict[tuple, Backend] = {}
    bin_dir = Path(sys.executable).parent

    def start(extra_with: Sequence[str] = (), env: Mapping[str, str] | None = None, *,
              personal_access_token: bool = True, basic_auth: tuple[str, str] | None = None) -> Backend:
        env = dict(env or {})
        if personal_access_token:
            env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.personal_access_token(),
                   **env}
        if basic_auth is not None:
            env.update(BASIC_AUTH_USER=basic_auth[0], BASIC_AUTH_PASS=basic_auth[1])
        key = (tuple(extra_with), tuple(sorted(env.items())))
        if key not in started:
            root = tmp_path_factory.mktemp("backend")
            port = free_port()
            process_env = {name: value for name, value in os.environ.items() if name not in SETTING_ENV_NAMES}
            process_env.update(env)
            process_env["PATH"] = f"{bin_dir}{os.pathsep}{process_env.get('PATH', '')}"
            process_env["HOST"] = "127.0.0.1"  # _wsgi.py's default host; label-studio-ml passes none
            command = [str(bin_dir / "label-studio-ml"), "start", "backend", "--port", str(port),
                       "--with", *DEMO_WITH, f"cache_dir={root / 'cache'}", *extra_with]
            server = start_server("backend", command, cwd=REPO_ROOT, env=process_env, log_path=root / "backend.log",
                                  url=f"http://127.0.0.1:{port}", ready_path="/health",
                                  timeout_s=BACKEND_STARTUP_TIMEOUT_S)
            started[key] = Backend(server, root / "cache", basic_auth)
        return started[key]

    try:
        yield start
    finally:
        for backend in started.values():
            backend.server.stop()


@pytest.fixture(scope="session")
def yolo_backend(start_backend: StartBackend) -> Backend:
    """Demo YOLO models started as the Quick start says (LABEL_STUDIO_URL, a personal access token), behind
    basic auth that Label Studio's Connect Model is given."""
    return start_backend(basic_auth=BASIC_AUTH)


# ---------------------------------------------------------------- projects


def shapes_png(seed: int) -> bytes:
    ok, encoded = cv2.imencode(".png", generate_image(seed).image)
    assert ok
    return encoded.tobytes()


def shapes_rgb(seed: int) -> np.ndarray:
    return np.ascontiguousarray(generate_image(seed).image[:, :, ::-1])


@dataclass
class Project:
    id: int
    ml_id: int
    label_config: str
    task_seeds: dict[int, int]  # task id -> shapes seed of its image
    connected_state: str
    retrieve_answer: dict = field(default_factory=dict)


MakeProject = Callable[..., Project]


@pytest.fixture(scope="session")
def make_project(label_studio: LabelStudio) -> MakeProject:
    """`make_project(backend, title, ...)`: create a project, upload shapes PNGs (one task each), connect
    `backend` (with `basic_auth` credentials, by default the backend's own) and, unless `retrieve=False`, run
    "Retrieve Predictions" on every task. Legacy tokens stay off, as in a new organization."""

    def make(backend: Backend, title: str, seeds: Sequence[int] = E2E_SEEDS, label_config: str = ALL_CONTROLS_CONFIG,
             interactive: bool = False, retrieve: bool = True,
             basic_auth: tuple[str, str] | None = None) -> Project:
        client = label_studio.client
        basic_auth = basic_auth or backend.basic_auth
        project_id = client.create_project(title, label_config)
        files = {f"shapes-{seed}.png": shapes_png(seed) for seed in seeds}
        task_ids = client.import_files(project_id, files, "image/png")
        task_seeds = {}
        for task_id in task_ids:
            name = client.task(task_id)["data"]["image"].rsplit("/", 1)[-1]
            task_seeds[task_id] = next(seed for seed in seeds if name.endswith(f"shapes-{seed}.png"))
        state = client.connect_model(project_id, backend.url, f"{title} model", interactive, basic_auth)
        project = Project(project_id, state.id, label_config, task_seeds, state.readable_state)
        if retrieve:
            project.retrieve_answer = client.retrieve_predictions(project_id, sorted(task_seeds))
        return project

    return make


@pytest.fixture(scope="session")
def shapes_project(yolo_backend: Backend, make_project: MakeProject) -> Project:
    """Predictions retrieved through a backend with a personal access token and basic auth."""
    return make_project(yolo_backend, "e2e shapes")


@dataclass(frozen=True)
class LabelStudioExport:
    path: Path  # Label Studio's JSON export
    label_config: Path
    ls_data_dir: Path  # uploads are under <dir>/media/upload
    project: Project


@pytest.fixture(scope="session")
def ls_export(label_studio: LabelStudio, shapes_project: Project,
              tmp_path_factory: pytest.TempPathFactory) -> LabelStudioExport:
    """A real JSON export: each task annotated with a copy of its prediction's regions."""
    client = label_studio.client
    for task_id in shapes_project.task_seeds:
        (stored,) = client.predictions(task_id)
        client.create_annotation(task_id, [{k: v for k, v in region.items() if k != "score"} for region in stored["result"]])
    directory = tmp_path_factory.mktemp("ls-export")
    path = directory / "export.json"
    path.write_bytes(client.export_json(shapes_project.id))
    config = directory / "label_config.xml"
    config.write_text(shapes_project.label_config)
    return LabelStudioExport(path, config, label_studio.data_dir, shapes_project)
