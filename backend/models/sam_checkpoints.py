"""Which Segment Anything a checkpoint holds, found from its tensors, and load errors in one sentence.

A checkpoint's weight names and shapes tell its family and size apart: SAM's ViT image encoder
(`image_encoder.blocks.N`, 768/1024/1280 wide for vit_b/l/h), MobileSAM's and light SAM-HQ's
TinyViT (`image_encoder.layers.N`), SAM-HQ's extra output token (`mask_decoder.hf_token`), SAM 2's
Hiera trunk (`image_encoder.trunk.blocks.N`: 12/16/24/48 blocks for tiny/small/base+/large; SAM 2.1
adds `no_obj_embed_spatial`) and the demo SAM's stored architecture. So SAM_CONFIG can be left
empty, and a wrong one is named with the right one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.models.cache import ModelPathError

CHECKPOINT_SETTING = "SAM_CHECKPOINT_FILE (sam_checkpoint_file)"
DEMO_CONFIG = "demo"
VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}  # ViT embedding width of each SAM size
VIT_DEPTHS = {"vit_b": 12, "vit_l": 24, "vit_h": 32}
HIERA_DEPTHS = {12: "hiera_t", 16: "hiera_s", 24: "hiera_b+", 48: "hiera_l"}  # Hiera blocks of each SAM 2 size
FAMILY_TITLES = {"sam": "SAM", "mobile_sam": "MobileSAM", "sam_hq": "SAM-HQ", "sam2": "SAM 2"}


class SamLoadError(ModelPathError):
    """The SAM model cannot be loaded; the message names the setting to change."""


@dataclass(frozen=True)
class CheckpointKind:
    """What a checkpoint holds: the MODEL_NAME family, the SAM_CONFIG size, and for SAM 2 its version."""

    model_name: str
    config: str
    version: str = ""  # "2" or "2.1" for SAM 2 checkpoints

    def describe(self) -> str:
        title = FAMILY_TITLES[self.model_name] if not self.version else f"SAM {self.version}"
        return f"a {title} {self.config} checkpoint"


def resolve_checkpoint(value: str, model_root: Path, model_name: str = "", config: str = "",
                       device: str = "cpu") -> Path:
    """SAM_CHECKPOINT_FILE as given: absolute, else relative to the working directory, then to MODEL_ROOT;
    empty with SAM 2: the default size's checkpoint in MODEL_ROOT, under Meta's or Ultralytics' name.

    Unlike label-config `model_path` values, this comes from the operator, so any path is allowed.
    """
    if not value and model_name in MODEL_NAMES and family(model_name) == "sam2":
        return _default_sam2_checkpoint(model_root, config, device)
    if not value:
        raise SamLoadError(f"{CHECKPOINT_SETTING} is empty: set it to a SAM checkpoint, e.g. ./sam_vit_b_01ec64.pth")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, model_root / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = " and ".join(str(c) for c in candidates)
    raise SamLoadError(f"{CHECKPOINT_SETTING}='{value}' not found (looked at {looked})")


def read_checkpoint(path: Path) -> dict:
    try:
        # weights_only: a checkpoint is data, and must not be able to run code when it is read.
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and torch errors of many types
        reason = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{path}' is not a PyTorch weights file "
                           f"({type(exc).__name__}{': ' + reason if reason else ''})") from None
    if not isinstance(content, dict):
        raise SamLoadError(f"{CHECKPOINT_SETTING}='{path}' holds a {type(content).__name__}, not a state dict")
    return content


def weights(content: dict) -> dict:
    """The state dict inside a checkpoint: SAM 2's (Meta's and Ultralytics') files wrap it in {"model": ...}."""
    inner = content.get("model")
    return inner if isinstance(inner, dict) else content


def identify(content: dict) -> CheckpointKind | None:
    """The family and size a checkpoint's tensors belong to, or None when it is no Segment Anything."""
    if "sam_architecture" in content and "state_dict" in content:
        return CheckpointKind("sam", DEMO_CONFIG)
    state = weights(content)
    keys = [key for key in state if isinstance(key, str)]
    if any(key.startswith("image_encoder.trunk.") for key in keys):
        size = HIERA_DEPTHS.get(_count_blocks(keys, "image_encoder.trunk.blocks."), "")
        return CheckpointKind("sam2", size, "2.1" if "no_obj_embed_spatial" in state else "2") if size else None
    tiny_vit = any(key.startswith("image_encoder.layers.") for key in keys)
    if "mask_decoder.hf_token.weight" in state:
        return CheckpointKind("sam_hq", "vit_tiny") if tiny_vit else _vit_kind("sam_hq", state, keys)
    if tiny_vit:
        return CheckpointKind("mobile_sam", "vit_t")
    return _vit_kind("sam", state, keys)


def _vit_kind(model_name: str, state: dict, keys: list[str]) -> CheckpointKind | None:
    config = VIT_WIDTHS.get(encoder_width(state) or 0)
    if config is None:
        return None
    depth = _count_blocks(keys, "image_encoder.blocks.")
    if depth and depth != VIT_DEPTHS[config]:
        return None
    return CheckpointKind(model_name, config)


def encoder_width(state: dict) -> int | None:
    weight = state.get("image_encoder.patch_embed.proj.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() > 0 else None


def _count_blocks(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indexes = {int(match.group(1)) for key in keys if (match := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def what_it_holds(content: dict) -> str:
    """A few words on an unrecognised checkpoint, for the error message."""
    state = weights(content)
    keys = [key for key in state if isinstance(key, str)]
    width = encoder_width(state)
    if width is not None:
        return f"a ViT image encoder {width} wide, which no SAM size has"
    hiera_blocks = _count_blocks(keys, "image_encoder.trunk.blocks.")
    if hiera_blocks:
        return f"a Hiera image encoder of {hiera_blocks} blocks, which no SAM 2 size has ({', '.join(map(str, HIERA_DEPTHS))})"
    sample = f" such as '{keys[0]}'" if keys else ""
    return f"{len(keys)} entries{sample} and no Segment Anything image encoder"


def mismatch_summary(model: torch.nn.Module, state: dict) -> str:
    """How a state dict differs from a network, in a few words (not torch's key dump)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [key for key in expected if key in state and isinstance(state[key], torch.Tensor)
                and tuple(state[key].shape) != tuple(expected[key].shape)]
    parts = [f"{len(found)} {what} (first '{found[0]}')" for found, what in
             ((missing, "weights missing"), (unexpected, "unexpected weights"), (reshaped, "weights of another shape"))
             if found]
    return ", ".join(parts) or "the weights do not load"


# ---------------------------------------------------------------- MODEL_NAME and SAM_CONFIG against the checkpoint

MODEL_NAMES = {"sam": "sam", "mobile_sam": "mobile_sam", "sam_hq": "sam_hq", "sam2": "sam2", "sam2.1": "sam2"}
CONFIGS: dict[str, tuple[str, ...]] = {
    "sam": ("vit_b", "vit_l", "vit_h", DEMO_CONFIG),
    "mobile_sam": ("vit_t",),
    "sam_hq": ("vit_b", "vit_l", "vit_h", "vit_tiny"),
    "sam2": ("hiera_t", "hiera_s", "hiera_b+", "hiera_l"),
}
# Meta's size words in its SAM 2 checkpoint names (sam2.1_hiera_base_plus.pt) and the short ones of its configs.
HIERA_WORDS = {"t": "hiera_t", "tiny": "hiera_t", "s": "hiera_s", "small": "hiera_s", "b+": "hiera_b+",
               "base_plus": "hiera_b+", "l": "hiera_l", "large": "hiera_l"}


def family(model_name: str) -> str:
    if model_name not in MODEL_NAMES:
        raise SamLoadError(f"MODEL_NAME (model_name) must be one of {', '.join(MODEL_NAMES)}, not '{model_name}'")
    return MODEL_NAMES[model_name]


def parse_config(model_name: str, config: str) -> tuple[str, str]:
    """SAM_CONFIG as (size, SAM 2 version or ""); SAM 2 sizes also by Meta's config names
    (`sam2.1_hiera_t`, `configs/sam2.1/sam2.1_hiera_t.yaml`). Raises on a size the family does not have."""
    name, version = config.strip(), ""
    if family(model_name) == "sam2":
        name = name.rsplit("/", 1)[-1].removesuffix(".yaml")
        if (match := re.fullmatch(r"sam(2(?:\.1)?)_(.+)", name)) is not None:
            version, name = match.groups()
        name = HIERA_WORDS.get(name.removeprefix("hiera_"), name)
    if name not in CONFIGS[family(model_name)]:
        owner = next((other for other, configs in CONFIGS.items() if name in configs), None)
        hint = f"; '{name}' belongs to MODEL_NAME={owner}" if owner else ""
        raise SamLoadError(f"SAM_CONFIG (sam_config)='{config}' is not a {model_name} architecture: use one of "
                           f"{', '.join(CONFIGS[family(model_name)])}, or leave it empty to read it from the "
                           f"checkpoint{hint}")
    return name, version


def choose_kind(model_name: str, config: str, checkpoint: Path, content: dict) -> CheckpointKind:
    """The checkpoint's kind, checked against MODEL_NAME and SAM_CONFIG (empty: whatever size the checkpoint is)."""
    wanted_size, wanted_version = parse_config(model_name, config) if config else ("", "")
    if model_name == "sam2.1":
        wanted_version = wanted_version or "2.1"
    kind = identify(content)
    where = f"{CHECKPOINT_SETTING}='{checkpoint}'"
    if kind is None:
        if wanted_size == DEMO_CONFIG:
            raise SamLoadError(f"{where} is not a demo SAM checkpoint (SAM_CONFIG=demo expects the file written by "
                               "tools/make_demo_models.py, e.g. models/demo-tiny-sam.pt)")
        raise SamLoadError(f"{where} is not a Segment Anything checkpoint: it holds {what_it_holds(content)}")
    settings = f"MODEL_NAME={kind.model_name if not kind.version else 'sam' + kind.version} SAM_CONFIG={kind.config}"
    if kind.model_name != family(model_name):
        raise SamLoadError(f"{where} is {kind.describe()}, not a {model_name} one: set {settings} "
                           "(or leave SAM_CONFIG empty)")
    if (wanted_size and wanted_size != kind.config) or (wanted_version and wanted_version != kind.version):
        raise SamLoadError(f"{where} is {kind.describe()}, which does not fit SAM_CONFIG={config or '(empty)'} with "
                           f"MODEL_NAME={model_name}: set {settings}, or leave SAM_CONFIG empty")
    return kind


# ---------------------------------------------------------------- SAM 2.1's default checkpoints

SAM2_DOWNLOADS = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_FILES = {  # Meta's file name, Ultralytics' file name
    "hiera_t": ("sam2.1_hiera_tiny.pt", "sam2.1_t.pt"), "hiera_s": ("sam2.1_hiera_small.pt", "sam2.1_s.pt"),
    "hiera_b+": ("sam2.1_hiera_base_plus.pt", "sam2.1_b.pt"), "hiera_l": ("sam2.1_hiera_large.pt", "sam2.1_l.pt"),
}


def _default_sam2_checkpoint(model_root: Path, config: str, device: str) -> Path:
    """On CPU the smallest SAM 2.1 (Hiera tiny: the fastest encoder), on CUDA the best (Hiera large),
    unless SAM_CONFIG names a size."""
    size = parse_config("sam2", config)[0] if config else ("hiera_l" if device.startswith("cuda") else "hiera_t")
    for name in SAM2_FILES[size]:
        if (model_root / name).is_file():
            return (model_root / name).resolve()
    meta, ultralytics = SAM2_FILES[size]
    raise SamLoadError(f"{CHECKPOINT_SETTING} is empty and MODEL_ROOT ({model_root}) holds neither {meta} nor "
                       f"{ultralytics}, SAM 2.1's {size} for {device}: download {SAM2_DOWNLOADS}{meta} into it, "
                       f"or set {CHECKPOINT_SETTING}")
