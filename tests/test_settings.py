"""One settings object fed by the environment and by --with key=value."""

from __future__ import annotations

import pytest

from backend.serving.cli import build_parser, settings_from_args
from backend.settings import Settings, SettingsError


def test_environment_then_with_overrides() -> None:
    settings = Settings.load({"model_score_threshold": "0.3", "out_mask": "True"},
                             environ={"MODEL_SCORE_THRESHOLD": "0.7", "DEVICE": "cpu", "BATCH_SIZE": "4"})
    assert settings.model_score_threshold == 0.3
    assert settings.device == "cpu"
    assert settings.batch_size == 4
    assert settings.out_mask is True


@pytest.mark.parametrize("word,expected", [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)])
def test_booleans_accept_label_anything_spellings(word: str, expected: bool) -> None:
    assert Settings.load({"out_poly": word}, environ={}).out_poly is expected


def test_openmmlab_command_line_keys_parse() -> None:
    args = build_parser().parse_args(["--port", "8003", "--with", "model_name=sam", "sam_config=vit_b",
                                      "sam_checkpoint_file=./sam_vit_b_01ec64.pth", "out_mask=True", "out_bbox=True", "device=cpu"])
    settings = settings_from_args(args)
    assert (settings.model_name, settings.sam_config, settings.sam_checkpoint_file) == ("sam", "vit_b", "./sam_vit_b_01ec64.pth")
    assert settings.out_mask and settings.out_bbox and settings.device == "cpu"
    assert args.port == 8003


@pytest.mark.parametrize("overrides,message", [
    ({"model_score_treshold": "0.3"}, "unknown setting 'model_score_treshold'"),
    ({"model_score_threshold": "high"}, "MODEL_SCORE_THRESHOLD"),
    ({"model_score_threshold": "1.5"}, "between 0 and 1"),
    ({"batch_size": "0"}, "BATCH_SIZE"),
    ({"max_download_bytes": "0"}, "MAX_DOWNLOAD_BYTES must be at least 1"),
    ({"max_download_bytes": "lots"}, "MAX_DOWNLOAD_BYTES"),
    ({"device": "tpu"}, "DEVICE"),
    ({"out_mask": "maybe"}, "OUT_MASK"),
    ({"model_name": "sam2000"}, "MODEL_NAME"),
    ({"basic_auth_user": "u"}, "BASIC_AUTH_PASS"),
])
def test_bad_values_name_the_setting(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(overrides, environ={})


def test_cli_flags_map_to_settings() -> None:
    args = build_parser().parse_args(["--basic-auth-user", "u", "--basic-auth-pass", "p", "--log-level", "DEBUG", "--model-dir", "/m"])
    settings = settings_from_args(args)
    assert (settings.basic_auth_user, settings.basic_auth_pass, settings.log_level, settings.model_root) == ("u", "p", "DEBUG", "/m")
