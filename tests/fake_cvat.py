"""A stand-in for the few CVAT REST endpoints that `cvat-cli task auto-annotate` calls, on 127.0.0.1.

It serves one image task (server version, task, labels, frame metadata, the frames as one
"imageset" chunk, a zip of PNGs) to requests carrying `Authorization: Bearer <token>`, and records
the annotations the client uploads (PATCH ...?action=create, or PUT with --clear-existing), the
native functions `cvat-cli function create-native` registers (POST /api/functions), and hands the
annotation requests in `pending` to `cvat-cli function run-agent`, recording what it answers.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np

from tests.fake_label_studio import LoopbackServer, QuietHandler

SERVER_VERSION = "2.80.0"  # the cvat-sdk release the tests install: no version warning
UPDATED = "2026-01-01T00:00:00.000000Z"


@dataclass
class FakeTask:
    task_id: int
    frames: list[tuple[str, np.ndarray]]  # (file name, BGR pixels)
    labels: list[dict]  # CVAT labels: {"name": ..., "type": "rectangle" | "polygon" | "mask" | "any"}
    uploads: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, action, body)

    def task_json(self) -> dict:
        return {
            "id": self.task_id, "name": f"task {self.task_id}", "size": len(self.frames), "mode": "annotation",
            "data_chunk_size": len(self.frames), "data_compressed_chunk_type": "imageset",
            "data_original_chunk_type": "imageset", "dimension": "2d", "status": "annotation",
            "created_date": UPDATED, "updated_date": UPDATED, "image_quality": 95, "data": 1, "project_id": None, "organization": None,
            "jobs": {"count": 1, "completed": 0, "validation": 0, "url": "/api/jobs?task_id=1"},
            "labels": {"url": f"/api/labels?task_id={self.task_id}"},
        }

    def labels_json(self) -> dict:
        results = [{"id": 100 + index, "color": "#ff0000", "attributes": [], "sublabels": [], "has_parent": False,
                    "task_id": self.task_id, **label} for index, label in enumerate(self.labels)]
        return {"count": len(results), "next": None, "previous": None, "results": results}

    def meta_json(self) -> dict:
        frames = [{"name": name, "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "related_files": 0}
                  for name, pixels in self.frames]
        return {"chunks_updated_date": UPDATED, "chunk_size": len(self.frames), "size": len(self.frames),
                "image_quality": 95, "start_frame": 0, "stop_frame": len(self.frames) - 1, "frame_filter": "",
                "frames": frames, "deleted_frames": [], "included_frames": None}

    def chunk_zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index, (_, pixels) in enumerate(self.frames):
                archive.writestr(f"{index:06d}.png", cv2.imencode(".png", pixels)[1].tobytes())
        return buffer.getvalue()

    def label_name(self, label_id: int) -> str:
        return self.labels[label_id - 100]["name"]


class FakeCvat(LoopbackServer):
    def __init__(self, task: FakeTask, token: str) -> None:
        self.task = task
        self.requests: list[str] = []  # "METHOD path?query", in order
        self.functions: list[dict] = []  # bodies of POST /api/functions; function i has id i + 1
        self.pending: list[dict] = []  # annotation requests ({"ar_id": ..., "ar_params": ...}) for agents
        self.answers: dict[str, tuple[str, dict]] = {}  # ar_id -> ("complete" | "fail", body)
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.answer(self, "GET")

            def do_PATCH(self) -> None:  # noqa: N802
                fake.answer(self, "PATCH")

            def do_PUT(self) -> None:  # noqa: N802
                fake.answer(self, "PUT")

            def do_POST(self) -> None:  # noqa: N802
                fake.answer(self, "POST")

        super().__init__(Handler)
        self.token = token

    def answer(self, handler: QuietHandler, method: str) -> None:
        url = urlparse(handler.path)._replace(path=urlparse(handler.path).path.rstrip("/"))
        query = parse_qs(url.query)
        self.requests.append(f"{method} {handler.path}")
        task, prefix = self.task, f"/api/tasks/{self.task.task_id}"
        if url.path == "/api/server/about":
            return self._json(handler, {"name": "Computer Vision Annotation Tool", "description": "", "version": SERVER_VERSION,
                                       "logo_url": "", "subtitle": ""})
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(handler, {"detail": "Authentication credentials were not provided."}, 401)
        if method == "GET" and url.path == prefix:
            return self._json(handler, task.task_json())
        if method == "GET" and url.path == "/api/labels" and query.get("task_id") == [str(task.task_id)]:
            return self._json(handler, task.labels_json())
        if method == "GET" and url.path == f"{prefix}/data/meta":
            return self._json(handler, task.meta_json())
        if method == "GET" and url.path == f"{prefix}/data" and query.get("type") == ["chunk"] and query.get("number") == ["0"]:
            body = task.chunk_zip()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/zip")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return None
        if method in ("PATCH", "PUT") and url.path == f"{prefix}/annotations":
            body = self._body(handler)
            task.uploads.append((method, (query.get("action") or [""])[0], body))
            return self._json(handler, {"version": 1, "tags": [], "shapes": body.get("shapes", []), "tracks": []})
        if method == "POST" and url.path == "/api/functions":
            self.functions.append(self._body(handler))
            return self._json(handler, {**self.functions[-1], "id": len(self.functions)}, 201)
        if method == "GET" and url.path.startswith("/api/functions/") and url.path.split("/")[-1].isdigit():
            function_id = int(url.path.split("/")[-1])
            return self._json(handler, {**self.functions[function_id - 1], "id": function_id})
        if method == "POST" and url.path.startswith("/api/functions/queues/"):
            return self._agent_call(handler, unquote(url.path).split("/")[5:])
        return self._json(handler, {"detail": "Not found."}, 404)

    def _agent_call(self, handler: QuietHandler, path: list[str]) -> None:
        """requests/acquire: the next pending request (batch ones only); requests/<id>/update|complete|fail."""
        body = self._body(handler)
        if path == ["requests", "acquire"]:
            batch = body.get("request_category") == "batch" and self.pending
            return self._json(handler, {"ar_assignment": self.pending.pop(0) if batch else None})
        if len(path) == 3 and path[0] == "requests" and path[2] in ("complete", "fail"):
            self.answers[path[1]] = (path[2], body)
        return self._json(handler, {})

    @staticmethod
    def _body(handler: QuietHandler) -> dict:
        return json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) or b"{}")

    @staticmethod
    def _json(handler: QuietHandler, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
