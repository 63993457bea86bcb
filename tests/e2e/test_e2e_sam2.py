"""SAM 2.1 through a real Label Studio: a smart click and a smart box on an image come back from
`/api/ml/{id}/interactive-annotating` as the backend's own masks (a random-weight SAM 2.1 tiny built
by Meta's build_sam2 and saved as Meta publishes it; the backend reads its size from the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.e2e.conftest import Backend, LabelStudio, MakeProject, Project, StartBackend
from tests.e2e.test_e2e_sam import SAM_LABEL_CONFIG, SAM_SEED, box_context, brush_masks, click_context, largest_shape

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def sam2_backend(label_studio: LabelStudio, start_backend: StartBackend,
                 tmp_path_factory: pytest.TempPathFactory) -> Backend:
    build_sam = pytest.importorskip("sam2.build_sam")
    torch.manual_seed(0)
    network = build_sam.build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    checkpoint: Path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": network.state_dict()}, checkpoint)
    return start_backend(("model_name=sam2", f"sam_checkpoint_file={checkpoint}", "out_mask=true"),
                         env={"LABEL_STUDIO_URL": label_studio.url,
                              "LABEL_STUDIO_API_KEY": label_studio.personal_access_token()})


@pytest.fixture(scope="module")
def sam2_project(sam2_backend: Backend, make_project: MakeProject) -> Project:
    return make_project(sam2_backend, "e2e sam2", seeds=(SAM_SEED,), label_config=SAM_LABEL_CONFIG,
                        interactive=True, retrieve=False)


@pytest.mark.parametrize("make_context", [click_context, box_context], ids=["click", "box"])
def test_sam2_interactive_annotating_returns_the_backends_mask(label_studio: LabelStudio, sam2_backend: Backend,
                                                               sam2_project: Project, make_context) -> None:  # noqa: ANN001
    label, shape_mask = largest_shape()
    context = make_context(label, shape_mask)
    (task_id,) = sam2_project.task_seeds
    answer = label_studio.client.interactive_annotating(sam2_project.ml_id, task_id, context)
    assert "errors" not in answer, answer
    via_label_studio = brush_masks(answer["data"]["result"])
    direct = sam2_backend.predict({"tasks": [label_studio.client.task(task_id)], "label_config": SAM_LABEL_CONFIG,
                                   "project": f"{sam2_project.id}", "params": {"context": context}})
    own = brush_masks(direct["results"][0]["result"])
    assert [name for name, _ in via_label_studio] == [label] == [name for name, _ in own]
    ((_, mask),), ((_, own_mask),) = via_label_studio, own
    assert mask.shape == shape_mask.shape and mask.any() and np.array_equal(mask, own_mask)
