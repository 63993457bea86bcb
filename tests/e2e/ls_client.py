"""A Label Studio 1.23 API client for the end-to-end tests, logged in the way the browser is.

It uses a session cookie (plus Django's CSRF header), like the Data Manager, so it needs no token: the
organization keeps a new organization's token settings (legacy tokens off).
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

TIMEOUT_S = 120  # Label Studio calls the backend synchronously inside some of these requests


class LabelStudioError(RuntimeError):
    pass


@dataclass(frozen=True)
class MLBackendState:
    id: int
    state: str  # CO (Connected), DI (Disconnected), ER (Error), ...
    readable_state: str
    model_version: str | None
    error_message: str | None


class LabelStudioClient:
    def __init__(self, url: str, email: str, password: str) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._login(email, password)

    def _login(self, email: str, password: str) -> None:
        self._session.get(f"{self.url}/user/login/", timeout=TIMEOUT_S).raise_for_status()
        response = self._session.post(
            f"{self.url}/user/login/", allow_redirects=False, timeout=TIMEOUT_S,
            data={"email": email, "password": password, "csrfmiddlewaretoken": self._session.cookies["csrftoken"]})
        if response.status_code != 302 or "sessionid" not in self._session.cookies:
            raise LabelStudioError(f"login as {email} failed: HTTP {response.status_code}")

    def request(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs: object) -> requests.Response:
        headers = {"X-CSRFToken": self._session.cookies.get("csrftoken", ""), "Referer": self.url + "/"}
        response = self._session.request(method, self.url + path, headers=headers, timeout=TIMEOUT_S, **kwargs)
        if response.status_code not in expect:
            raise LabelStudioError(f"{method} {path}: HTTP {response.status_code}: {response.text[:2000]}")
        return response

    # ---------------------------------------------------------------- organization and tokens

    def legacy_tokens_enabled(self) -> bool:
        """Organization setting (off by default in 1.23): accept `Authorization: Token <legacy token>`."""
        return bool(self.request("GET", "/api/jwt/settings").json()["legacy_api_tokens_enabled"])

    def create_personal_access_token(self) -> str:
        """A personal access token (a JWT refresh token): Account & Settings -> Personal Access Token -> Create New
        Token. Label Studio allows one per user."""
        return self.request("POST", "/api/token/").json()["token"]

    # ---------------------------------------------------------------- projects and tasks

    def create_project(self, title: str, label_config: str) -> int:
        return int(self.request("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"])

    def import_files(self, project_id: int, files: dict[str, bytes], content_type: str) -> list[int]:
        """Upload files as the import dialog does (one task per file); returns the new task ids."""
        before = set(self.task_ids(project_id))
        multipart = {f"file{i}": (name, data, content_type) for i, (name, data) in enumerate(files.items())}
        imported = self.request("POST", f"/api/projects/{project_id}/import", files=multipart).json()
        if imported.get("task_count") != len(files):
            raise LabelStudioError(f"import made {imported.get('task_count')} tasks from {len(files)} files: {imported}")
        return sorted(set(self.task_ids(project_id)) - before)

    def task_ids(self, project_id: int) -> list[int]:
        tasks = self.request("GET", "/api/tasks", params={"project": project_id, "page_size": 1000}).json()["tasks"]
        return [int(task["id"]) for task in tasks]

    def task(self, task_id: int) -> dict:
        return self.request("GET", f"/api/tasks/{task_id}").json()

    def predictions(self, task_id: int) -> list[dict]:
        return self.request("GET", "/api/predictions", params={"task": task_id}).json()

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        body = {"result": result, "was_cancelled": False, "ground_truth": False}
        return int(self.request("POST", f"/api/tasks/{task_id}/annotations", json=body).json()["id"])

    def export_json(self, project_id: int) -> bytes:
        return self.request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"}).content

    # ---------------------------------------------------------------- ML backends

    def connect_model(self, project_id: int, url: str, title: str, interactive: bool = False,
                      basic_auth: tuple[str, str] | None = None) -> MLBackendState:
        """Add Model in the project's settings: Label Studio checks /health, then sends /setup."""
        created = self.request("POST", "/api/ml", json=_model_body(project_id, url, title, interactive, basic_auth)).json()
        return self.model_state(int(created["id"]))

    def try_connect_model(self, project_id: int, url: str, title: str,
                          basic_auth: tuple[str, str] | None = None) -> requests.Response:
        return self.request("POST", "/api/ml", expect=tuple(range(200, 600)),
                            json=_model_body(project_id, url, title, False, basic_auth))

    def model_state(self, ml_id: int) -> MLBackendState:
        """GET /api/ml/{id} re-checks the backend (health and setup) like the project settings page."""
        body = self.request("GET", f"/api/ml/{ml_id}").json()
        return MLBackendState(int(body["id"]), body["state"], body["readable_state"], body.get("model_version"),
                              body.get("error_message"))

    def retrieve_predictions(self, project_id: int, task_ids: list[int]) -> dict:
        """The Data Manager action "Retrieve Predictions" on the selected tasks."""
        return self.request("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project_id},
                            json={"selectedItems": {"all": False, "included": task_ids}}).json()

    def interactive_annotating(self, ml_id: int, task_id: int, context: dict) -> dict:
        """What the labeling editor sends for a smart region; Label Studio answers with the backend's first result."""
        return self.request("POST", f"/api/ml/{ml_id}/interactive-annotating",
                            json={"task": task_id, "context": context}).json()


def _model_body(project_id: int, url: str, title: str, interactive: bool, basic_auth: tuple[str, str] | None) -> dict:
    body: dict = {"url": url, "project": project_id, "title": title, "is_interactive": interactive}
    if basic_auth is not None:
        body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    return body
