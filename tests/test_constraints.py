"""The versions .ci/run installs (tests/constraints.txt, tests/e2e/label-studio-constraints.txt) satisfy what
pyproject.toml asks, so a changed requirement that the pins no longer meet fails here, with its name."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.e2e.conftest import LS_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent


def pins(path: Path) -> dict[str, str]:
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: '{line}' is not a name==version pin"
            pinned[canonicalize_name(name)] = version
    return pinned


def test_the_pins_meet_every_requirement_of_the_project_and_its_test_extra():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins(REPO_ROOT / "tests" / "constraints.txt")
    unmet = []
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} (pinned: {version})")
    assert not unmet, "tests/constraints.txt does not meet: " + ", ".join(unmet)


def test_label_studios_pins_are_the_tested_release_with_a_sentry_sdk_it_starts_with():
    pinned = pins(REPO_ROOT / "tests" / "e2e" / "label-studio-constraints.txt")
    assert pinned["label-studio"] == LS_VERSION
    assert Requirement("sentry-sdk<3").specifier.contains(pinned["sentry-sdk"])
