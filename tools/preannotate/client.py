"""The Label Studio API calls of a pre-annotation job, through label-studio-sdk, with retries.

Reads are retried on 429, 5xx and connection errors with exponential backoff (Retry-After when
Label Studio sends it). Writes (the bulk prediction import) are retried the same way, but after a
5xx or a lost connection the tasks are read again first and those that already hold the
prediction are not sent twice: the import may have been committed before the answer was lost.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
from label_studio_sdk import LabelStudio, PredictionRequest
from label_studio_sdk.core.api_error import ApiError

logger = logging.getLogger(__name__)

T = TypeVar("T")
NO_SDK_RETRIES = {"max_retries": 0}  # the SDK would resend imports blindly; retries happen here


class LabelStudioAPIError(Exception):
    """Label Studio refused a request or stayed unreachable after every retry; the message says which."""

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused  # a 4xx that no retry changes (bad request, unknown task, no permission)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8  # tries per request, the first one included
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    timeout_s: float = 120.0  # one request

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.max_delay_s)
            except ValueError:
                pass
        return min(self.base_delay_s * 2 ** attempt, self.max_delay_s) * random.uniform(0.8, 1.2)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ApiError):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code in (408, 409, 429))
    return isinstance(exc, httpx.TransportError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
        return f"HTTP {exc.status_code}: {str(body)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def prediction_versions(task: dict) -> set[str]:
    return {str(p.get("model_version")) for p in task.get("predictions") or [] if isinstance(p, dict)}


def _as_dict(item: object) -> dict:
    if isinstance(item, dict):
        return item
    return item.model_dump(mode="json")  # type: ignore[attr-defined] - the SDK's pydantic models


class ProjectClient:
    """One Label Studio project: its labeling config, its tasks page by page, and prediction imports."""

    def __init__(self, url: str, api_key: str, project_id: int, retry: RetryPolicy = RetryPolicy()) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.project_id = project_id
        self.project_uid: str | None = None  # "<id>.<created_at>", known once label_config() has read the project
        self.retry = retry
        self._sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=retry.timeout_s, max_retries=0)
        self._options = {**NO_SDK_RETRIES, "timeout_in_seconds": int(retry.timeout_s)}

    def __getstate__(self) -> dict:  # sent to Ray workers: the SDK client is rebuilt there
        return {"url": self.url, "api_key": self.api_key, "project_id": self.project_id, "retry": self.retry}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["api_key"], state["project_id"], state["retry"])  # type: ignore[misc]

    def _call(self, what: str, call: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
        for attempt in range(self.retry.attempts):
            try:
                return call()
            except (ApiError, httpx.TransportError) as exc:
                if not _retryable(exc) or attempt == self.retry.attempts - 1:
                    raise LabelStudioAPIError(f"{what}: {_describe(exc)}", refused=not _retryable(exc)) from None
                headers = exc.headers if isinstance(exc, ApiError) else None
                wait = self.retry.delay(attempt, (headers or {}).get("retry-after") or (headers or {}).get("Retry-After"))
                logger.warning("%s: %s; retrying in %.1f s", what, _describe(exc), wait)
                time.sleep(wait)
                if before_retry is not None and not (isinstance(exc, ApiError) and exc.status_code == 429):
                    before_retry()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ reading

    def label_config(self) -> str:
        project = self._call(f"reading project {self.project_id}",
                             lambda: self._sdk.projects.get(self.project_id, request_options=self._options))
        if project.created_at is not None:  # the uid the backend keeps the project's trained models under
            self.project_uid = f"{self.project_id}.{int(project.created_at.timestamp())}"
        return str(project.label_config or "")

    def task_page(self, page: int, page_size: int) -> tuple[list[dict], int]:
        """Tasks of page `page` (1-based, ordered by id) with their predictions, and the project's task count."""
        def read() -> tuple[list[dict], int]:
            try:
                pager = self._sdk.tasks.list(project=self.project_id, page=page, page_size=page_size, fields="all",
                                             resolve_uri=False, query=json.dumps({"ordering": ["tasks:id"]}),
                                             request_options=self._options)
            except ApiError as exc:
                if exc.status_code == 404 and page > 1:  # past the last page
                    return [], 0
                raise
            return [_as_dict(task) for task in pager.items or []], int(pager.response.total)

        return self._call(f"reading tasks page {page} of project {self.project_id}", read)

    def pages(self, page_size: int, first_page: int = 1, step: int = 1) -> Iterator[list[dict]]:
        """Every `step`-th page of tasks from `first_page`, one page in memory at a time."""
        page = first_page
        while True:
            tasks, _ = self.task_page(page, page_size)
            if not tasks:
                return
            yield tasks
            if len(tasks) < page_size:
                return
            page += step

    def task_count(self) -> int:
        return self.task_page(1, 1)[1]

    def versions_of(self, task_id: int) -> set[str]:
        task = self._call(f"reading task {task_id}", lambda: self._sdk.tasks.get(str(task_id), request_options=self._options))
        return prediction_versions(_as_dict(task))

    # ------------------------------------------------------------ writing

    def import_predictions(self, predictions: list[tuple[int, dict]]) -> None:
        """Create one prediction per (task id, prediction dict), each exactly once."""
        pending = list(predictions)

        def drop_committed() -> None:
            pending[:] = [(task_id, prediction) for task_id, prediction in pending
                          if prediction["model_version"] not in self.versions_of(task_id)]

        def send() -> None:
            if pending:
                request = [PredictionRequest(task=task_id, result=prediction["result"], score=prediction.get("score"),
                                             model_version=prediction["model_version"], cluster=prediction.get("cluster"))
                           for task_id, prediction in pending]
                self._sdk.projects.import_predictions(self.project_id, request=request, request_options=self._options)

        self._call(f"importing {len(predictions)} predictions into project {self.project_id}", send, drop_committed)
