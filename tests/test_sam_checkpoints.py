"""Which SAM a checkpoint holds (SAM_CONFIG may be left empty), and load errors as one readable sentence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import pytest
import torch
from segment_anything import sam_model_registry

from backend.models.sam import load_sam, load_sam_network, mobile_sam_network
from backend.models.sam_checkpoints import CheckpointKind, SamLoadError, identify, resolve_checkpoint
from tests.conftest import DEMO_DET, MODELS_DIR
from tools.annotate_dir import main as annotate_main
from tools.shapes_dataset import generate_image

DEMO_SAM = MODELS_DIR / "demo-tiny-sam.pt"


@pytest.fixture(scope="module")
def vit_b_state() -> dict:
    torch.manual_seed(0)
    return sam_model_registry["vit_b"]().state_dict()


def vit_layout(width: int, depth: int, hq: bool = False) -> dict:
    """The tensors that tell ViT SAM sizes apart (vit_l/h networks are too large to build in a test)."""
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 1, 1)}
    state.update({f"image_encoder.blocks.{index}.norm1.weight": torch.zeros(1) for index in range(depth)})
    if hq:
        state["mask_decoder.hf_token.weight"] = torch.zeros(1, 256)
    return state


def hiera_layout(blocks: int, sam2_1: bool) -> dict:
    state = {f"image_encoder.trunk.blocks.{index}.norm1.weight": torch.zeros(1) for index in range(blocks)}
    if sam2_1:
        state["no_obj_embed_spatial"] = torch.zeros(1, 64)
    return {"model": state}  # Meta's and Ultralytics' SAM 2 files wrap the state dict


def save(tmp_path: Path, name: str, content: object) -> Path:
    torch.save(content, tmp_path / name)
    return tmp_path / name


def load_error(model_name: str, config: str, checkpoint: Path) -> str:
    with pytest.raises(SamLoadError) as caught:
        load_sam_network(model_name, config, checkpoint)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, f"not one readable sentence: {message!r}"
    return message


# ---------------------------------------------------------------- recognising the checkpoint


def test_library_built_checkpoints_are_recognised(vit_b_state: dict) -> None:
    assert identify(vit_b_state) == CheckpointKind("sam", "vit_b")
    assert identify(mobile_sam_network().state_dict()) == CheckpointKind("mobile_sam", "vit_t")
    assert identify(torch.load(DEMO_SAM, weights_only=True)) == CheckpointKind("sam", "demo")
    hq = pytest.importorskip("segment_anything_hq")
    assert identify(hq.sam_model_registry["vit_tiny"](checkpoint=None).state_dict()) == CheckpointKind("sam_hq", "vit_tiny")


@pytest.mark.parametrize("state, kind", [
    (vit_layout(1024, 24), CheckpointKind("sam", "vit_l")),
    (vit_layout(1280, 32), CheckpointKind("sam", "vit_h")),
    (vit_layout(1280, 32, hq=True), CheckpointKind("sam_hq", "vit_h")),
    (hiera_layout(12, sam2_1=True), CheckpointKind("sam2", "hiera_t", "2.1")),
    (hiera_layout(24, sam2_1=True), CheckpointKind("sam2", "hiera_b+", "2.1")),
    (hiera_layout(48, sam2_1=False), CheckpointKind("sam2", "hiera_l", "2")),
    (vit_layout(1024, 12), None),  # vit_l's width with vit_b's depth is no SAM size
    ({"model.0.conv.weight": torch.zeros(1)}, None),
])
def test_sizes_are_told_apart_by_width_and_depth(state: dict, kind: CheckpointKind | None) -> None:
    assert identify(state) == kind


def test_the_demo_sam_loads_without_sam_config() -> None:
    model = load_sam("sam", "", DEMO_SAM, "cpu")
    assert model.name == "sam:demo:demo-tiny-sam.pt"
    assert model.network.image_encoder.img_size == 160


def test_mobile_sam_loads_from_its_state_dict_without_the_github_package(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mobile_sam", None)  # `import mobile_sam` fails: not needed any more
    torch.manual_seed(0)
    reference = mobile_sam_network()
    checkpoint = save(tmp_path, "mobile_sam.pt", reference.state_dict())
    for config in ("vit_t", ""):
        network, kind = load_sam_network("mobile_sam", config, checkpoint)
        assert kind == CheckpointKind("mobile_sam", "vit_t")
        assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), reference.state_dict().values()))


# ---------------------------------------------------------------- errors in one sentence


def test_checkpoint_is_looked_up_in_the_working_directory_then_model_root(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("demo-tiny-sam.pt", MODELS_DIR) == DEMO_SAM.resolve()
    (tmp_path / "demo-tiny-sam.pt").write_bytes(b"x")
    assert resolve_checkpoint("./demo-tiny-sam.pt", MODELS_DIR) == (tmp_path / "demo-tiny-sam.pt").resolve()
    assert resolve_checkpoint(str(DEMO_SAM), tmp_path) == DEMO_SAM.resolve()


@pytest.mark.parametrize("value, message", [
    ("", "SAM_CHECKPOINT_FILE (sam_checkpoint_file) is empty"),
    ("./sam_vit_b_01ec64.pth", "SAM_CHECKPOINT_FILE (sam_checkpoint_file)='./sam_vit_b_01ec64.pth' not found"),
])
def test_missing_checkpoint_names_the_setting(value: str, message: str) -> None:
    with pytest.raises(SamLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_checkpoint(value, MODELS_DIR)


def test_files_that_are_no_sam_checkpoint_say_what_they_hold(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert "sam_checkpoint_file)='" in load_error("sam", "", tmp_path / "notes.pth")
    assert "is not a PyTorch weights file" in load_error("sam", "vit_b", tmp_path / "notes.pth")
    # a YOLO pickle is refused unread
    assert "is not a PyTorch weights file" in load_error("sam", "", MODELS_DIR / "demo-shapes-det.pt")
    plain = save(tmp_path, "plain.pt", {"weight": torch.zeros(1)})
    assert "is not a demo SAM checkpoint" in load_error("sam", "demo", plain)
    assert load_error("sam", "", plain).endswith(
        "is not a Segment Anything checkpoint: it holds 1 entries such as 'weight' and no Segment Anything image encoder")
    odd = save(tmp_path, "odd.pth", vit_layout(96, 0))
    assert load_error("sam", "vit_b", odd).endswith("it holds a ViT image encoder 96 wide, which no SAM size has")
    odd_hiera = save(tmp_path, "odd.pt", hiera_layout(20, sam2_1=True))
    assert load_error("sam", "", odd_hiera).endswith(
        "it holds a Hiera image encoder of 20 blocks, which no SAM 2 size has (12, 16, 24, 48)")


def test_a_partial_checkpoint_is_summarised_not_dumped(tmp_path: Path, vit_b_state: dict) -> None:
    partial = dict(vit_b_state)
    del partial["mask_decoder.iou_token.weight"]
    partial["extra.weight"] = torch.zeros(1)
    message = load_error("sam", "", save(tmp_path, "partial.pth", partial))
    assert message.endswith("does not fit sam vit_b: 1 weights missing (first 'mask_decoder.iou_token.weight'), "
                            "1 unexpected weights (first 'extra.weight')")


@pytest.mark.parametrize("model_name, config, state, message", [
    ("sam", "vit_b", vit_layout(1280, 32),
     "is a SAM vit_h checkpoint, which does not fit SAM_CONFIG=vit_b with MODEL_NAME=sam: set MODEL_NAME=sam "
     "SAM_CONFIG=vit_h, or leave SAM_CONFIG empty"),
    ("sam", "", vit_layout(1280, 32, hq=True),
     "is a SAM-HQ vit_h checkpoint, not a sam one: set MODEL_NAME=sam_hq SAM_CONFIG=vit_h (or leave SAM_CONFIG empty)"),
    ("sam", "", hiera_layout(12, sam2_1=True),
     "is a SAM 2.1 hiera_t checkpoint, not a sam one: set MODEL_NAME=sam2.1 SAM_CONFIG=hiera_t"),
    ("mobile_sam", "vit_t", vit_layout(768, 12), "is a SAM vit_b checkpoint, not a mobile_sam one"),
])
def test_a_checkpoint_of_another_kind_names_the_settings_that_fit(tmp_path: Path, model_name: str, config: str,
                                                                 state: dict, message: str) -> None:
    error = load_error(model_name, config, save(tmp_path, "other.pth", state))
    assert f"SAM_CHECKPOINT_FILE (sam_checkpoint_file)='{tmp_path / 'other.pth'}' {message}" in error


@pytest.mark.parametrize("model_name, config, message", [
    ("sam", "vit_t", "'vit_t' is not a sam architecture.*belongs to MODEL_NAME=mobile_sam"),
    ("mobile_sam", "vit_b", "'vit_b' is not a mobile_sam architecture.*belongs to MODEL_NAME=sam"),
    ("sam", "vit_x", "SAM_CONFIG \\(sam_config\\)='vit_x' is not a sam architecture: use one of vit_b, vit_l, "
                     "vit_h, demo, or leave it empty"),
    ("sam_x", "", "MODEL_NAME \\(model_name\\) must be one of"),
])
def test_architecture_must_belong_to_the_model_name(model_name: str, config: str, message: str) -> None:
    with pytest.raises(SamLoadError, match=message):
        load_sam_network(model_name, config, DEMO_SAM)


def test_sam_hq_without_its_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "segment_anything_hq", None)
    checkpoint = save(tmp_path, "hq.pth", vit_layout(768, 12, hq=True))
    assert "optional 'segment_anything_hq' package" in load_error("sam_hq", "", checkpoint)
    assert load_error("sam_hq", "", checkpoint).endswith("pip install segment-anything-hq timm")


# ---------------------------------------------------------------- annotate_dir --sam (the first-day command)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    for seed in (7000, 7001):
        cv2.imwrite(str(root / f"shape{seed}.png"), generate_image(seed).image)
    return root


def test_annotate_dir_sam_with_the_demo_checkpoint_needs_no_sam_config(shapes_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAM_CONFIG", raising=False)
    code = annotate_main([str(shapes_dir), "--model", str(MODELS_DIR / DEMO_DET), "--shape", "masks",
                          "--sam", str(DEMO_SAM), "--out_dir", str(tmp_path / "out")])
    assert code == 0
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"]
    assert all(isinstance(annotation["segmentation"], dict) for annotation in coco["annotations"])  # RLE masks


def test_annotate_dir_sam_with_a_yolo_file_is_one_sentence(shapes_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    code = annotate_main([str(shapes_dir), "--model", str(MODELS_DIR / DEMO_DET), "--sam", str(MODELS_DIR / DEMO_DET),
                          "--out_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code != 0
    assert "SAM_CHECKPOINT_FILE (sam_checkpoint_file)=" in error and "is not a PyTorch weights file" in error
    assert "\n" not in error and len(error) < 400 and "Traceback" not in error
