"""Training test data: demo shapes annotated with labels the demo models do not know, and a stand-in for
the two Label Studio API calls a training job makes (project details, JSON export) plus its uploads.

The shapes keep their geometry; only their names change (circle -> disc, square -> box, triangle ->
wedge), so a model that learns them is told apart from the start-up model, which answers none of them.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from formats.geometry import mask_to_polygons
from tests.fake_label_studio import LoopbackServer, QuietHandler
from tools.shapes_dataset import generate_image

TOKEN = "training-stand-in-token"
CREATED_AT = "2023-11-14T22:13:20Z"  # every project's: project 12's uid is 12.1700000000
RENAMED = ("disc", "box", "wedge")  # tools.shapes_dataset.CLASS_NAMES, renamed
TRAINING_CONFIG = ("<View><Image name=\"image\" value=\"$image\"/>"
                   "<PolygonLabels name=\"poly\" toName=\"image\">"
                   + "".join(f"<Label value=\"{name}\"/>" for name in RENAMED) + "</PolygonLabels></View>")


def shapes_png(seed: int) -> bytes:
    ok, encoded = cv2.imencode(".png", generate_image(seed).image)
    assert ok
    return encoded.tobytes()


def polygon_regions(seed: int, from_name: str = "poly") -> list[dict]:
    """The shapes of image `seed` as Label Studio polygon regions (percent coordinates), renamed labels."""
    sample = generate_image(seed)
    height, width = sample.image.shape[:2]
    regions = []
    for index, instance in enumerate(sample.instances):
        for part, polygon in enumerate(mask_to_polygons(instance.mask)):
            points = [[float(x) * 100 / width, float(y) * 100 / height] for x, y in polygon]
            regions.append({"id": f"s{seed}-{index}-{part}", "from_name": from_name, "to_name": "image",
                            "type": "polygonlabels", "original_width": width, "original_height": height,
                            "value": {"points": points, "polygonlabels": [RENAMED[instance.class_id]]}})
    return regions


def annotated_task(task_id: int, seed: int, image_url: str) -> dict:
    return {"id": task_id, "data": {"image": image_url},
            "annotations": [{"id": task_id * 10, "result": polygon_regions(seed), "was_cancelled": False,
                             "created_at": "2026-11-28T00:00:00Z", "updated_at": "2026-11-28T00:00:00Z"}],
            "predictions": []}


def recovered_fraction(results: list[dict], seeds: range) -> float:
    """Share of the held-out shapes found with the right label (box IoU >= 0.5)."""
    found = total = 0
    for result, seed in zip(results, seeds):
        sample = generate_image(seed)
        size = sample.image.shape[0]
        boxes = [(region["value"]["polygonlabels"][0], _box(np.array(region["value"]["points"]) * size / 100))
                 for region in result["result"]]
        for instance in sample.instances:
            ys, xs = np.nonzero(instance.mask)
            if not len(xs):
                continue
            truth = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            total += 1
            found += any(label == RENAMED[instance.class_id] and _iou(box, truth) >= 0.5 for label, box in boxes)
    return found / total


def _box(points: np.ndarray) -> tuple[float, ...]:
    return (*points.min(axis=0), *points.max(axis=0))


def _iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


class TrainingLabelStudio(LoopbackServer):
    """Project `project_id` with one annotated task per seed, images at /data/upload/<project>/shapes-<seed>.png.
    `fail_with` answers every API request with that status (401: a wrong token); `broken_seeds` serve
    bytes that are not an image."""

    def __init__(self, project_id: int, seeds: Sequence[int], label_config: str = TRAINING_CONFIG,
                 token: str = TOKEN, broken_seeds: Sequence[int] = ()) -> None:
        self.project_id = project_id
        self.label_config = label_config
        self.token = token
        self.fail_with: int | None = None
        self.requests: Counter = Counter()
        self._lock = threading.Lock()
        self.files = {f"shapes-{seed}.png": (b"not a png" if seed in broken_seeds else shapes_png(seed)) for seed in seeds}
        self.tasks = [annotated_task(1000 + i, seed, f"/data/upload/{project_id}/shapes-{seed}.png")
                      for i, seed in enumerate(seeds)]
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.handle(self)

        super().__init__(Handler)

    def handle(self, handler: QuietHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests[path] += 1
        if handler.headers.get("Authorization") != f"Token {self.token}":
            return _json(handler, 401, {"detail": "Authentication credentials were not provided."})
        if self.fail_with is not None:
            return _json(handler, self.fail_with, {"detail": "stand-in fault"})
        if project := re.fullmatch(r"/api/projects/(\d+)/", path):  # every project id has the same tasks
            return _json(handler, 200, {"id": int(project.group(1)), "title": "training stand-in",
                                        "created_at": CREATED_AT, "label_config": self.label_config})
        if re.fullmatch(r"/api/projects/\d+/export", path):
            return _json(handler, 200, self.tasks)
        match = re.fullmatch(rf"/data/upload/{self.project_id}/(.+)", path)
        if match and match.group(1) in self.files:
            return handler.reply(200, self.files[match.group(1)])
        return _json(handler, 404, {"detail": "not found"})


def _json(handler: QuietHandler, status: int, body: object) -> None:
    handler.reply(status, json.dumps(body).encode())
