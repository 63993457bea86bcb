"""Label Studio tasks for classification, pose and OBB training, drawn from tools.shapes_tasks' generators
and annotated with the demo configs' labels (label_configs/demo-shapes-{classify,pose,obb}.xml)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from formats.geometry import yolo_obb_to_ls_rect
from tools.shapes_dataset import CLASS_NAMES
from tools.shapes_tasks import OBB_CLASSES, POSE_CLASSES, generate_classify_image, generate_obb_image, generate_pose_image

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {task: (REPO_ROOT / "label_configs" / f"demo-shapes-{name}.xml").read_text()
           for task, name in (("classify", "classify"), ("pose", "pose"), ("obb", "obb"))}
CHOICES = {name: name.capitalize() for name in CLASS_NAMES}  # the classify config's Choice values
POSE_LABELS = {"triangle": ("apex", "base right", "base left"),
               "square": ("top-left", "top-right", "bottom-right", "bottom-left")}


def png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def classify_results(seed: int) -> tuple[bytes, list[dict]]:
    image, class_id = generate_classify_image(seed)
    return png(image), [{"id": f"c{seed}", "from_name": "shape", "to_name": "image", "type": "choices",
                         "value": {"choices": [CHOICES[CLASS_NAMES[class_id]]]}}]


def obb_results(seed: int) -> tuple[bytes, list[dict]]:
    image, instances = generate_obb_image(seed)
    height, width = image.shape[:2]
    results = []
    for index, instance in enumerate(instances):
        value = yolo_obb_to_ls_rect((instance.corners / [width, height]).ravel(), width, height)
        results.append({"id": f"o{seed}-{index}", "from_name": "rotated", "to_name": "image", "type": "rectanglelabels",
                        "original_width": width, "original_height": height,
                        "value": {**value, "rectanglelabels": [OBB_CLASSES[instance.class_id]]}})
    return png(image), results


def pose_results(seed: int, linked: bool = True) -> tuple[bytes, list[dict]]:
    """Each shape's box and its visible corners; `linked`: keypoints carry the box id as parentID (as the
    backend links them), else they are unlinked and grouped by lying inside the box."""
    image, instances = generate_pose_image(seed)
    height, width = image.shape[:2]
    results = []
    for index, instance in enumerate(instances):
        class_name = POSE_CLASSES[instance.class_id]
        seen = instance.keypoints[instance.keypoints[:, 2] > 0]
        (x0, y0), (x1, y1) = seen[:, :2].min(axis=0), seen[:, :2].max(axis=0)
        box_id = f"b{seed}-{index}"
        results.append({"id": box_id, "from_name": "shape", "to_name": "image", "type": "rectanglelabels",
                        "original_width": width, "original_height": height,
                        "value": {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                                  "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [class_name]}})
        for k, (x, y, _) in enumerate(seen):
            point = {"id": f"k{seed}-{index}-{k}", "from_name": "corner", "to_name": "image", "type": "keypointlabels",
                     "original_width": width, "original_height": height,
                     "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 1.0,
                               "keypointlabels": [POSE_LABELS[class_name][k]]}}
            if linked:
                point["parentID"] = box_id
            results.append(point)
    return png(image), results


RESULTS = {"classify": classify_results, "obb": obb_results, "pose": pose_results}


def annotated_tasks(task: str, seeds: range, url_of) -> tuple[dict[str, bytes], list[dict]]:  # noqa: ANN001
    """(file name -> PNG bytes, Label Studio tasks with one annotation each); `url_of(file name)` is the image URL."""
    files, tasks = {}, []
    for number, seed in enumerate(seeds):
        data, results = RESULTS[task](seed)
        name = f"{task}-{seed}.png"
        files[name] = data
        tasks.append({"id": 2000 + number, "data": {"image": url_of(name)},
                      "annotations": [{"id": 20000 + number, "result": results, "was_cancelled": False,
                                       "created_at": "2026-11-28T00:00:00Z"}], "predictions": []})
    return files, tasks


# Labels the demo models do not know: before training the served model answers none (it scores 0), after it
# the project's model answers these.
RENAMES = {"classify": {"Circle": "Round", "Square": "Boxy", "Triangle": "Pointy"},
           "pose": {"triangle": "wedge", "square": "box"}, "obb": {"rectangle": "bar", "ellipse": "oval"}}


def renamed_config(task: str) -> str:
    """The demo config of `task` with the RENAMES labels (still with the demo model as model_path)."""
    config = CONFIGS[task]
    if task == "classify":  # without predicted_values the demo model's classes name no Choice
        config = re.sub(r' predicted_values="[^"]*"', "", config)
    for old, new in RENAMES[task].items():
        config = config.replace(f'"{old}"', f'"{new}"')
    return config


def renamed_results(task: str, results: list[dict]) -> list[dict]:
    """Annotation results with the RENAMES labels (choices and boxes; keypoint labels keep their names)."""
    renamed = []
    for result in results:
        value = dict(result["value"])
        for key in ("choices", "rectanglelabels"):
            if key in value:
                value[key] = [RENAMES[task][label] for label in value[key]]
        renamed.append({**result, "value": value})
    return renamed
