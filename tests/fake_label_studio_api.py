"""A stand-in for the parts of Label Studio's REST API that `tools.preannotate` uses, on 127.0.0.1:
one project, its tasks generated on demand (so 100,000 tasks cost no memory), predictions kept in
memory, and faults on request. Also runnable as a process for the benchmark:

    python -m tests.fake_label_studio_api --tasks 10000 --image_url /data/local-files/?d=shapes.png
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse

from tests.fake_label_studio import LoopbackServer, QuietHandler

TOKEN = "stand-in-token"
PROJECT_ID = 7
CREATED_AT = "2023-11-14T22:13:20Z"  # the project uid is 7.1700000000

TaskData = Callable[[int], dict]  # task index (0-based) -> the task's data


class FakeLabelStudioAPI(LoopbackServer):
    """`n_tasks` tasks with ids 1001.., data from `task_data(index)`. `faults[kind]` lists HTTP
    statuses to answer, in order, before answering normally (0: answer this one normally); kinds: project, tasks (the task list),
    task (one task), import (prediction import), import-commit (the import is stored, then answered
    with that status, as a proxy timing out after Label Studio committed would)."""

    FIRST_TASK_ID = 1001

    def __init__(self, label_config: str, n_tasks: int, task_data: TaskData, token: str = TOKEN) -> None:
        self.label_config = label_config
        self.n_tasks = n_tasks
        self.task_data = task_data
        self.token = token
        self.predictions: dict[int, list[dict]] = defaultdict(list)
        self.faults: dict[str, list[int]] = defaultdict(list)
        self.requests: Counter = Counter()  # kind -> count, faults included
        self.imported_batches: list[int] = []  # size of each accepted import
        self.max_concurrent_imports = 0
        self._active_imports = 0
        self._lock = threading.Lock()
        self._next_prediction_id = 1
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake.handle(self, "POST")

        super().__init__(Handler)

    # ------------------------------------------------------------ state

    def task_ids(self) -> range:
        return range(self.FIRST_TASK_ID, self.FIRST_TASK_ID + self.n_tasks)

    def task(self, task_id: int) -> dict:
        return {"id": task_id, "data": self.task_data(task_id - self.FIRST_TASK_ID), "annotations": [],
                "predictions": list(self.predictions.get(task_id, [])), "project": PROJECT_ID,
                "is_labeled": False, "meta": {}, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}

    def store(self, items: list[dict]) -> int:
        with self._lock:
            for item in items:
                prediction = {"id": self._next_prediction_id, "task": item["task"], "result": item.get("result", []),
                              "score": item.get("score"), "model_version": item.get("model_version"), "project": PROJECT_ID,
                              "cluster": item.get("cluster")}
                self._next_prediction_id += 1
                self.predictions[int(item["task"])].append(prediction)
            self.imported_batches.append(len(items))
        return len(items)

    # ------------------------------------------------------------ HTTP

    def _fault(self, kind: str) -> int | None:
        with self._lock:
            self.requests[kind] += 1
            return (self.faults[kind].pop(0) or None) if self.faults[kind] else None

    def handle(self, handler: QuietHandler, method: str) -> None:
        parsed = urlparse(handler.path)
        path = parsed.path.rstrip("/")
        query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        if handler.headers.get("Authorization") != f"Token {self.token}":
            self._json(handler, 401, {"detail": "Authentication credentials were not provided."})
            return
        if method == "GET" and path == f"/api/projects/{PROJECT_ID}":
            self._answer(handler, "project", lambda: (200, {"id": PROJECT_ID, "title": "stand-in",
                                                            "created_at": CREATED_AT, "label_config": self.label_config}))
        elif method == "GET" and path == "/api/tasks":
            self._answer(handler, "tasks", lambda: self._task_page(query))
        elif method == "GET" and (match := re.fullmatch(r"/api/tasks/(\d+)", path)):
            task_id = int(match.group(1))
            self._answer(handler, "task", lambda: (200, self.task(task_id)) if task_id in self.task_ids()
                         else (404, {"detail": "Not found."}))
        elif method == "POST" and path == f"/api/projects/{PROJECT_ID}/import/predictions":
            body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) or b"[]")
            self._import(handler, body)
        else:
            self._json(handler, 404, {"detail": "Not found."})

    def _answer(self, handler: QuietHandler, kind: str, answer: Callable[[], tuple[int, object]]) -> None:
        status = self._fault(kind)
        if status is not None:
            self._json(handler, status, {"detail": f"stand-in fault {status}"})
            return
        self._json(handler, *answer())

    def _task_page(self, query: dict[str, str]) -> tuple[int, dict]:
        if query.get("project") != str(PROJECT_ID):
            return 404, {"detail": "Not found."}
        page, page_size = int(query.get("page", 1)), int(query.get("page_size", 30))
        start = (page - 1) * page_size
        if page < 1 or (start >= self.n_tasks and page > 1):
            return 404, {"detail": "Invalid page."}
        ids = self.task_ids()[start:start + page_size]
        tasks = [self.task(task_id) for task_id in ids]
        if query.get("fields") != "all":
            for task in tasks:
                task.pop("predictions"), task.pop("annotations")
        return 200, {"tasks": tasks, "total": self.n_tasks, "total_annotations": 0,
                     "total_predictions": sum(len(p) for p in self.predictions.values())}

    def _import(self, handler: QuietHandler, body: list[dict]) -> None:
        with self._lock:
            self._active_imports += 1
            self.max_concurrent_imports = max(self.max_concurrent_imports, self._active_imports)
        try:
            status = self._fault("import")
            if status is not None:
                self._json(handler, status, {"detail": f"stand-in fault {status}"})
                return
            unknown = [item.get("task") for item in body if item.get("task") not in self.task_ids()]
            if unknown:
                self._json(handler, 400, {"detail": f"task ID {unknown[0]} not found in project"})
                return
            time.sleep(0.005)  # let concurrent imports overlap, as a real database write would
            created = self.store(body)
            status = self._fault("import-commit")
            self._json(handler, status or 201, {"created": created} if status is None else {"detail": "gateway"})
        finally:
            with self._lock:
                self._active_imports -= 1

    @staticmethod
    def _json(handler: QuietHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        if status == 429:
            handler.send_header("Retry-After", "0")
        handler.end_headers()
        handler.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the stand-in Label Studio API until killed")
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--image_url", required=True, help="the image URL of every task")
    parser.add_argument("--label_config", required=True, help="path of the labeling config XML")
    args = parser.parse_args()
    with open(args.label_config, encoding="utf-8") as handle:
        config = handle.read()
    with FakeLabelStudioAPI(config, args.tasks, lambda index: {"image": args.image_url}) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
