"""SAM 2 click-to-track through a real Label Studio 1.23.2: a box drawn on a video frame, sent as the labeling
editor sends it (`/api/ml/{id}/interactive-annotating` with the VideoRectangle region), comes back as the
same region with a `sequence` of the tracked frames, equal to the backend's own answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import LabelStudio, StartBackend
from tests.test_sam2_video import BOX_PERCENT, CONFIG, PROMPT_FRAME, video_region
from tools.shapes_tasks import write_video

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRACK_FRAMES = 4


def test_a_box_on_a_video_frame_comes_back_as_a_sequence(label_studio: LabelStudio, start_backend: StartBackend,
                                                         tmp_path: Path) -> None:
    build_sam = pytest.importorskip("sam2.build_sam")
    torch.manual_seed(0)
    network = build_sam.build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": network.state_dict()}, checkpoint)
    backend = start_backend(("model_name=sam2", f"sam_checkpoint_file={checkpoint}", f"sam2_track_frames={TRACK_FRAMES}"),
                            env={"LABEL_STUDIO_URL": label_studio.url,
                                 "LABEL_STUDIO_API_KEY": label_studio.personal_access_token()})
    video = write_video(tmp_path / "sam2-track.mp4", seconds=0.4)
    client = label_studio.client
    project_id = client.create_project("e2e sam2 video", CONFIG)
    (task_id,) = client.import_files(project_id, {"sam2-track.mp4": video.read_bytes()}, "video/mp4")
    state = client.connect_model(project_id, backend.url, "e2e sam2 video model", interactive=True)
    assert state.readable_state == "Connected"
    drawn = video_region("drawnBox01", BOX_PERCENT, label="triangle")

    answer = client.interactive_annotating(state.id, task_id, {"result": [drawn]})
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert (region["id"], region["type"], region["value"]["labels"]) == ("drawnBox01", "videorectangle", ["triangle"])
    sequence = region["value"]["sequence"]
    assert [keyframe["frame"] for keyframe in sequence] == list(range(PROMPT_FRAME, PROMPT_FRAME + TRACK_FRAMES + 1))
    assert {key: sequence[0][key] for key in BOX_PERCENT} == BOX_PERCENT
    direct = backend.predict({"tasks": [client.task(task_id)], "label_config": CONFIG, "project": str(project_id),
                              "params": {"context": {"result": [drawn]}}})
    assert direct["results"][0]["result"] == [region]
