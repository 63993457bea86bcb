"""SAM 2 click-to-track in video: Meta's SAM2VideoPredictor on a window of frames read lazily from the file.

Meta's `init_state` decodes the whole video into memory (12 MB of float32 per frame at 1024x1024) and
re-runs the image encoder on every frame of every propagation. Here the predictor's inference state
gets a `WindowFrames` instead: the frames of the tracking window only, decoded in order from the file
when the encoder first needs them, and each frame's encoder output is kept in a `FrameFeatures` LRU
keyed by the video file and frame number, so a second prompt on the same frames does not encode them
again. Everything else (prompting, memory, propagation, mask post-processing) is Meta's own code, run
on the same weights as the image model (its tensors are shared, not copied).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2.sam2_video_predictor import SAM2VideoPredictor

from backend.models.sam2 import Sam2Model, autocast_dtype
from backend.models.yolo_track import VideoError, VideoInfo

logger = logging.getLogger(__name__)

IMAGE_MEAN = (0.485, 0.456, 0.406)  # Meta's load_video_frames normalization
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on the window's first frame, in pixels of the video: a box or a click."""

    key: int
    box: np.ndarray | None = None  # (4,) x1, y1, x2, y2
    point: np.ndarray | None = None  # (2,) x, y: a positive click


class FrameFeatures:
    """Image encoder outputs by (video identity, frame index), least recently used dropped first.

    Each frame's three feature maps take about 17 MB (float32, any SAM 2 size at 1024 px); the
    position encodings depend on the input size only, so one copy serves every frame."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._position: list[torch.Tensor] | None = None
        self._lock = threading.Lock()
        self.encoded = 0  # encoder runs, for tests and benchmarks

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            levels = self._items.get(key)
            if levels is None:
                return None
            self._items.move_to_end(key)
            return {"backbone_fpn": list(levels), "vision_pos_enc": list(self._position)}

    def put(self, key: tuple, backbone_out: dict) -> None:
        with self._lock:
            self.encoded += 1
            self._position = list(backbone_out["vision_pos_enc"])
            if self._capacity < 1:
                return
            self._items[key] = list(backbone_out["backbone_fpn"])
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


class VideoEnded(VideoError):
    """The file has fewer frames than its header said."""


class WindowFrames(Sequence):
    """Frames [start, start + length) of a video as SAM 2's inference state reads them (`images`),
    decoded from the file only when the encoder needs a frame whose features are not cached."""

    def __init__(self, video: Path, info: VideoInfo, start: int, length: int, image_size: int,
                 features: FrameFeatures) -> None:
        stat = video.stat()
        self.identity = (str(video), stat.st_mtime_ns, stat.st_size)
        self.video, self.info, self.start, self.length = video, info, start, length
        self.image_size = image_size
        self.features = features
        self._capture = None
        self._next_index = 0  # the frame the open capture decodes next

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        """The window's frame `index` as Meta's loader makes it: resized to a square, /255, normalized."""
        pixels = self.rgb(self.start + index)
        resized = np.array(Image.fromarray(pixels).resize((self.image_size, self.image_size)))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
        image -= torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
        image /= torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
        return image

    def rgb(self, frame: int) -> np.ndarray:
        """Decoded frame `frame` of the video (0-based), HxWx3 uint8 RGB; reads on from the last one."""
        import cv2

        if self._capture is None or frame < self._next_index:
            self.close()
            self._capture = cv2.VideoCapture(str(self.video))
            if frame > 0:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
            self._next_index = frame
        while self._next_index < frame:
            if not self._capture.grab():
                raise VideoEnded(f"'{self.video.name}' ends before frame {frame + 1}")
            self._next_index += 1
        ok, bgr = self._capture.read()
        if not ok:
            raise VideoEnded(f"'{self.video.name}' ends before frame {frame + 1}")
        self._next_index += 1
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def backbone(self, index: int, encode) -> dict:  # noqa: ANN001 - SAM2Base.forward_image
        key = (*self.identity, self.start + index)
        found = self.features.get(key)
        if found is None:
            found = encode(self[index].unsqueeze(0))
            self.features.put(key, found)
        return found

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FrameCachePredictor(SAM2VideoPredictor):
    """SAM2VideoPredictor whose frame features come from the state's WindowFrames (and their cache)."""

    def _get_image_feature(self, inference_state: dict, frame_idx: int, batch_size: int) -> tuple:
        device = inference_state["device"]
        backbone_out = inference_state["images"].backbone(frame_idx, lambda image: self.forward_image(image.to(device)))
        expanded = {name: [level.expand(batch_size, -1, -1, -1) for level in backbone_out[name]]
                    for name in ("backbone_fpn", "vision_pos_enc")}
        # Meta's callers discard the first item (the input image), so it is not kept for them.
        return (None, *self._prepare_backbone_features(expanded))


def new_state(frames: WindowFrames, device: torch.device) -> dict:
    """SAM2VideoPredictor.init_state's inference state, on `frames` instead of a loaded video."""
    return {
        "images": frames, "num_frames": len(frames), "offload_video_to_cpu": False, "offload_state_to_cpu": False,
        "video_height": frames.info.height, "video_width": frames.info.width, "device": device,
        "storage_device": device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {},
        "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
        "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
    }


def presence(state: dict, frame_idx: int) -> np.ndarray:
    """Each object's predicted probability of being in the frame (SAM 2's object score, through a sigmoid)."""
    scores = []
    for outputs in state["output_dict_per_obj"].values():
        found = outputs["cond_frame_outputs"].get(frame_idx) or outputs["non_cond_frame_outputs"][frame_idx]
        scores.append(torch.sigmoid(found["object_score_logits"].float()).item())
    return np.array(scores)


class Sam2VideoTracker:
    """Prompts on one frame propagated forwards by SAM 2's video predictor; one tracking at a time."""

    def __init__(self, image_model: Sam2Model, cache_frames: int) -> None:
        from sam2.build_sam import build_sam2_video_predictor

        network = image_model.network
        # Meta's builder with its video settings (multimask fallback, binarized memory masks, hole filling)
        predictor = build_sam2_video_predictor(image_model.config_file, ckpt_path=None, device="cpu",
                                               hydra_overrides_extra=[f"++model._target_={__name__}.FrameCachePredictor"])
        predictor.load_state_dict(network.state_dict(), strict=True, assign=True)  # the image model's tensors
        self.predictor = predictor.to(image_model.device).eval()
        self.device = image_model.device
        self.features = FrameFeatures(cache_frames)
        self._autocast = autocast_dtype(self.device)
        self._torch_threads = torch.get_num_threads()
        self._lock = threading.Lock()

    def _running(self) -> contextlib.AbstractContextManager:
        torch.set_num_threads(self._torch_threads)
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    def propagate(self, video: Path, info: VideoInfo, start: int, length: int,
                  prompts: Sequence[ObjectPrompt]) -> Iterator[tuple[int, list[int], np.ndarray, np.ndarray]]:
        """(frame index, object keys, masks (N, H, W) bool, object presence (N,) in 0-1) for frames start ..
        start + length - 1, prompts on frame `start`; stops early, with a warning, where the file ends
        before its header said. Close the iterator when stopping early (it holds the tracker)."""
        frames = WindowFrames(video, info, start, length, self.predictor.image_size, self.features)
        with self._lock, self._running():
            try:
                state = new_state(frames, self.device)
                for prompt in prompts:
                    points = None if prompt.point is None else np.asarray(prompt.point, dtype=np.float32).reshape(1, 2)
                    self.predictor.add_new_points_or_box(state, frame_idx=0, obj_id=prompt.key, box=prompt.box,
                                                         points=points, labels=None if points is None else np.ones(1, np.int32))
                for index, keys, logits in self.predictor.propagate_in_video(state, start_frame_idx=0,
                                                                            max_frame_num_to_track=length - 1):
                    yield start + index, list(keys), (logits[:, 0] > 0.0).cpu().numpy(), presence(state, index)
            except VideoEnded as exc:
                logger.warning("%s; tracked the frames before it", exc)
            finally:
                frames.close()
