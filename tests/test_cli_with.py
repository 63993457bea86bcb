"""`--with key=value` may be given several times on every command line, as users write it; none is lost."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from backend.serving import cli as _wsgi
from tools import annotate_dir
from tools.preannotate import __main__ as preannotate

REQUIRED = {
    "backend/_wsgi.py": [],
    "tools.annotate_dir": ["images"],
    "tools.preannotate": ["--ls_url", "http://ls", "--api_key", "k", "--project", "1"],
}
PARSERS: dict[str, tuple[Callable[[], argparse.ArgumentParser], str]] = {
    "backend/_wsgi.py": (_wsgi.build_parser, "kwargs"),
    "tools.annotate_dir": (annotate_dir.build_parser, "overrides"),
    "tools.preannotate": (preannotate.build_parser, "overrides"),
}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_repeated_with_keeps_every_setting(command: str) -> None:
    build, dest = PARSERS[command]
    args = build().parse_args([*REQUIRED[command], "--with", "device=cpu", "model_score_threshold=0.3",
                               "--with", "model_root=models"])
    assert getattr(args, dest) == ["device=cpu", "model_score_threshold=0.3", "model_root=models"]


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_no_with_is_an_empty_list_every_time(command: str) -> None:
    build, dest = PARSERS[command]
    first = build().parse_args([*REQUIRED[command], "--with", "device=cpu"])
    second = build().parse_args(REQUIRED[command])
    assert getattr(first, dest) == ["device=cpu"] and getattr(second, dest) == []
