"""Interactive SAM through a real Label Studio: `/api/ml/{id}/interactive-annotating` with a smart
click and a smart box returns brush regions equal to the backend's own answer for the same prompt."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.conftest import MODELS_DIR, SHAPE_LABELS, config_xml
from tests.e2e.conftest import Backend, LabelStudio, MakeProject, Project, StartBackend
from tools.shapes_dataset import CLASS_NAMES, generate_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAM_CHECKPOINT = "demo-tiny-sam.pt"
SAM_WITH = ("model_name=sam", "sam_config=demo", f"sam_checkpoint_file={SAM_CHECKPOINT}", "out_mask=true")
SAM_LABEL_CONFIG = config_xml(
    f"<KeyPointLabels name=\"keypoint\" toName=\"image\" smart=\"true\">{SHAPE_LABELS}</KeyPointLabels>",
    f"<RectangleLabels name=\"rect\" toName=\"image\" smart=\"true\">{SHAPE_LABELS}</RectangleLabels>",
    f"<BrushLabels name=\"brush\" toName=\"image\">{SHAPE_LABELS}</BrushLabels>",
)
SAM_SEED = 5001


@pytest.fixture(scope="module")
def sam_backend(label_studio: LabelStudio, start_backend: StartBackend) -> Backend:
    if not (MODELS_DIR / SAM_CHECKPOINT).is_file():
        pytest.skip(f"models/{SAM_CHECKPOINT} not found (python -m tools.make_demo_models --only sam)")
    return start_backend(SAM_WITH, env={"LABEL_STUDIO_URL": label_studio.url,
                                            "LABEL_STUDIO_API_KEY": label_studio.personal_access_token()})


@pytest.fixture(scope="module")
def sam_project(sam_backend: Backend, make_project: MakeProject) -> Project:
    return make_project(sam_backend, "e2e sam", seeds=(SAM_SEED,), label_config=SAM_LABEL_CONFIG,
                        interactive=True, retrieve=False)


def largest_shape() -> tuple[str, np.ndarray]:
    instance = max(generate_image(SAM_SEED).instances, key=lambda inst: int(inst.mask.sum()))
    return CLASS_NAMES[instance.class_id], instance.mask


def innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its outline: a click that is surely on the object."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def prompt_region(region_type: str, from_name: str, label: str, value: dict, height: int, width: int) -> dict:
    return {"id": f"prompt-{region_type}", "from_name": from_name, "to_name": "image", "type": region_type,
            "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
            "value": {**value, region_type: [label]}}


def click_context(label: str, mask: np.ndarray) -> dict:
    height, width = mask.shape
    x, y = innermost_pixel(mask)
    value = {"x": (x + 0.5) * 100 / width, "y": (y + 0.5) * 100 / height, "width": 0.6}
    return {"result": [{**prompt_region("keypointlabels", "keypoint", label, value, height, width), "is_positive": True}]}


def box_context(label: str, mask: np.ndarray) -> dict:
    height, width = mask.shape
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    value = {"x": x * 100 / width, "y": y * 100 / height, "width": w * 100 / width, "height": h * 100 / height,
             "rotation": 0}
    return {"result": [prompt_region("rectanglelabels", "rect", label, value, height, width)]}


def brush_masks(result: list[dict]) -> list[tuple[str, np.ndarray]]:
    masks = []
    for region in result:
        if region["type"] == "brushlabels":
            width, height = region["original_width"], region["original_height"]
            values = np.asarray(decode_rle(region["value"]["rle"]))
            assert values.size == width * height * 4
            masks.append((region["value"]["brushlabels"][0], values.reshape(height, width, 4)[:, :, 3] > 0))
    return masks


def test_sam_model_connects_as_interactive(label_studio: LabelStudio, sam_project: Project) -> None:
    state = label_studio.client.model_state(sam_project.ml_id)
    assert (sam_project.connected_state, state.readable_state) == ("Connected", "Connected")


@pytest.mark.parametrize("make_context", [click_context, box_context], ids=["click", "box"])
def test_interactive_annotating_returns_the_backends_mask(label_studio: LabelStudio, sam_backend: Backend,
                                                          sam_project: Project, make_context) -> None:  # noqa: ANN001
    label, shape_mask = largest_shape()
    context = make_context(label, shape_mask)
    (task_id,) = sam_project.task_seeds
    answer = label_studio.client.interactive_annotating(sam_project.ml_id, task_id, context)
    assert "errors" not in answer, answer
    via_label_studio = brush_masks(answer["data"]["result"])

    task = label_studio.client.task(task_id)
    direct = sam_backend.predict({"tasks": [task], "label_config": SAM_LABEL_CONFIG, "project": f"{sam_project.id}",
                                  "params": {"context": context}})
    own = brush_masks(direct["results"][0]["result"])

    assert [name for name, _ in via_label_studio] == [label] == [name for name, _ in own]
    ((_, mask),), ((_, own_mask),) = via_label_studio, own
    # How well the mask fits the shape is the checkpoint's business (tests/test_sam_tiny_quality.py);
    # here Label Studio must hand over exactly what the backend segments for this prompt.
    assert mask.shape == shape_mask.shape and mask.any() and np.array_equal(mask, own_mask)
