"""Meta's SAM 3 image model (the `sam3` package) built, loaded and run on CUDA or on a CPU-only machine.

`sam3` 0.1.4 as shipped runs on CUDA only. The backend does not edit the installed package; instead:
- While Meta's builder runs, `_DeviceMode` maps tensors created with `device="cuda"` to the target
  device: sam3/model/position_encoding.py (precomputed position encodings) and sam3/model/decoder.py
  (box relative-position coordinates) create them at construction (Meta's issues #550 and #587).
- Where CUDA is not available, `running()` makes `Tensor.pin_memory()` a no-op (the same mode): the
  geometry encoder (sam3/model/geometry_encoders.py, box prompts) and the tracker's temporal position
  encoding pin host memory, which needs an accelerator. No other op is changed.
- The wheel lacks the CLIP BPE vocabulary its tokenizer reads; open_clip_torch ships the same file.
- On CUDA the model runs under bfloat16 autocast, as Meta's examples run it.

A checkpoint is Meta's `sam3.pt` (`{"model": {"detector.*", "tracker.*"}}`), built with
`build_sam3_image_model`. A reduced SAM 3 (tests, benchmarks, demos on CPU) adds `sam3_architecture`:
the same builder then makes Meta's modules with fewer and narrower layers at a lower resolution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from backend.models.sam_checkpoints import CHECKPOINT_SETTING, SamLoadError, read_checkpoint, weights

logger = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[sam3]" (Meta\'s sam3 package, open_clip_torch for its vocabulary, psutil)'
DETECTOR, TRACKER = "detector.", "tracker."
INSTANCE_PREDICTOR = "inst_interactive_predictor.model."
_build_lock = threading.Lock()  # the builder's module attributes are swapped while it runs


class _DeviceMode(TorchFunctionMode):
    """Tensors asked for on "cuda" are made on `device`; with `unpinned`, pin_memory() returns its tensor."""

    def __init__(self, device: str | None, unpinned: bool) -> None:
        super().__init__()
        self.device = device
        self.unpinned = unpinned

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if self.unpinned and func is torch.Tensor.pin_memory:
            return args[0]
        if self.device is not None and "device" in kwargs and kwargs["device"] is not None \
                and torch.device(kwargs["device"]).type == "cuda":
            kwargs = {**kwargs, "device": self.device}
        return func(*args, **kwargs)


def running(device: torch.device) -> contextlib.AbstractContextManager:
    """The context every SAM 3 call runs in: bf16 autocast on CUDA, unpinned memory without CUDA."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if not torch.cuda.is_available():
        return _DeviceMode(None, unpinned=True)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Sam3Architecture:
    """Sizes of a SAM 3 image model; the defaults are Meta's (sam3/model_builder.py), 860 M parameters."""

    resolution: int = 1008
    vit_width: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_window: int = 24
    vit_global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    encoder_layers: int = 6
    decoder_layers: int = 6
    feedforward: int = 2048  # the hidden width of the detector's transformer layers

    @classmethod
    def from_dict(cls, values: dict) -> Sam3Architecture:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown SAM 3 architecture fields {unknown}")
        values = dict(values)
        if "vit_global_blocks" in values:
            values["vit_global_blocks"] = tuple(values["vit_global_blocks"])
        return cls(**values)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "vit_global_blocks": list(self.vit_global_blocks)}

    @property
    def feature_sizes(self) -> list[tuple[int, int]]:
        """The interactive predictor's three feature maps (stride 14 x 4, x 2, x 1)."""
        side = self.resolution // 14
        return [(side * 4, side * 4), (side * 2, side * 2), (side, side)]


def bpe_vocabulary() -> str:
    try:
        import open_clip
    except ImportError as exc:
        raise SamLoadError(f"SAM 3 needs open_clip_torch for its text vocabulary ({exc}): {INSTALL}") from None
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise SamLoadError(f"open_clip_torch has no {path.name} at {path}: {INSTALL}")
    return str(path)


def _override(cls: type, **values: object):  # noqa: ANN202 - a constructor stand-in
    def construct(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return cls(*args, **{**kwargs, **values})
    return construct


def _reduced_constructors(builder: object, arch: Sam3Architecture) -> dict:
    """Meta's classes as sam3/model_builder.py names them, with the sizes of `arch` forced in."""
    return {
        "ViT": _override(builder.ViT, img_size=arch.resolution, embed_dim=arch.vit_width, depth=arch.vit_depth,
                         num_heads=arch.vit_heads, window_size=arch.vit_window,
                         global_att_blocks=arch.vit_global_blocks),
        "VETextEncoder": _override(builder.VETextEncoder, width=arch.text_width, heads=arch.text_heads,
                                   layers=arch.text_layers),
        "TransformerEncoderFusion": _override(builder.TransformerEncoderFusion, num_layers=arch.encoder_layers),
        "TransformerDecoder": _override(builder.TransformerDecoder, num_layers=arch.decoder_layers,
                                        resolution=arch.resolution),
        "TransformerEncoderLayer": _override(builder.TransformerEncoderLayer, dim_feedforward=arch.feedforward),
        "TransformerDecoderLayer": _override(builder.TransformerDecoderLayer, dim_feedforward=arch.feedforward),
        "Sam3TrackerPredictor": _override(builder.Sam3TrackerPredictor, image_size=arch.resolution),
    }


def build_network(arch: Sam3Architecture | None, device: str) -> torch.nn.Module:
    """Meta's Sam3Image with instance interactivity and random weights (`arch` None: Meta's sizes), on `device`."""
    try:
        import sam3.model_builder as builder
    except ImportError as exc:
        raise SamLoadError(f"MODEL_NAME=sam3 / CONCEPT_MODEL need the optional 'sam3' package, which cannot be "
                           f"imported ({exc}): {INSTALL}") from None
    swapped = _reduced_constructors(builder, arch) if arch is not None else {}
    target = torch.device(device)
    with _build_lock:
        saved = {name: getattr(builder, name) for name in swapped}
        try:
            for name, stand_in in swapped.items():
                setattr(builder, name, stand_in)
            with _DeviceMode(str(target), unpinned=False):
                network = builder.build_sam3_image_model(
                    bpe_path=bpe_vocabulary(), device="cpu", eval_mode=True, checkpoint_path=None,
                    load_from_HF=False, enable_segmentation=True, enable_inst_interactivity=True)
        finally:
            for name, original in saved.items():
                setattr(builder, name, original)
    if arch is not None:
        network.inst_interactive_predictor._bb_feat_sizes = arch.feature_sizes
    return network.to(target).eval()


def is_sam3_checkpoint(content: dict) -> bool:
    return any(isinstance(key, str) and key.startswith(DETECTOR + "backbone.vision_backbone.")
               for key in weights(content))


def looks_like_sam3(path: Path) -> bool:
    """Whether a file is a SAM 3 checkpoint, from its weight names only (memory-mapped: no tensor is read)."""
    if not path.is_file() or path.suffix not in (".pt", ".pth"):
        return False
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # Ultralytics' pickled models, and anything else weights_only refuses
        return False
    return isinstance(content, dict) and is_sam3_checkpoint(content)


def load_network(checkpoint: Path, device: str) -> tuple[torch.nn.Module, Sam3Architecture]:
    """The SAM 3 image model of a checkpoint file, on `device`; SamLoadError names what is wrong."""
    content = read_checkpoint(checkpoint)
    if not is_sam3_checkpoint(content):
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' is not a SAM 3 checkpoint (no "
                           f"'{DETECTOR}backbone.vision_backbone.*' weights; Meta's file is sam3.pt)")
    try:
        arch = Sam3Architecture.from_dict(content["sam3_architecture"]) if "sam3_architecture" in content else None
    except (TypeError, ValueError) as exc:
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' has a bad SAM 3 architecture: {exc}") from None
    network = build_network(arch, device)
    state = {}
    for key, value in weights(content).items():  # sam3.model_builder._load_checkpoint's renaming
        if key.startswith(DETECTOR):
            state[key[len(DETECTOR):]] = value
        elif key.startswith(TRACKER):
            state[INSTANCE_PREDICTOR + key[len(TRACKER):]] = value
    try:
        missing, _ = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{checkpoint}' does not fit SAM 3 "
                           f"{'(reduced)' if arch else ''}: {str(exc).splitlines()[1][:200]}") from None
    if missing:  # Meta's loader reports these and goes on; so does the backend, in one line
        logger.warning("%s: %d SAM 3 weights missing (first '%s'), left as built", checkpoint.name, len(missing),
                       missing[0])
    return network, arch or Sam3Architecture()


def save_reduced_checkpoint(path: Path, arch: Sam3Architecture, seed: int = 0) -> Path:
    """A reduced SAM 3 with random weights (fixed by `seed`) in Meta's checkpoint layout, plus its sizes."""
    torch.manual_seed(seed)
    network = build_network(arch, "cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    text = network.backbone.language_backbone.encoder
    with torch.no_grad():  # sam3's builder leaves these as torch.empty; its checkpoints fill them
        for parameter, scale in ((text.positional_embedding, 0.01), (text.text_projection, text.width ** -0.5)):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    state = {}
    for key, value in network.state_dict().items():
        state[TRACKER + key[len(INSTANCE_PREDICTOR):] if key.startswith(INSTANCE_PREDICTOR) else DETECTOR + key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "sam3_architecture": arch.as_dict()}, path)
    return path
