"""A torchvision built for another torch: `import torchvision` fails with "operator torchvision::nms does not
exist" (its compiled operators do not load), often only when SAM is built, since YOLO imports torchvision later.
One sentence that names both versions and the pair to install, instead of a 40-line traceback."""

from __future__ import annotations

import re
from importlib import metadata

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torchvision_mismatch(exc: BaseException) -> str | None:
    """The sentence for `exc` when it is torchvision failing to load its operators; None for anything else."""
    text = str(exc)
    if "torchvision::" not in text or "does not exist" not in text:
        return None
    torch, torchvision = _version("torch"), _version("torchvision")
    return (f"torchvision {torchvision} does not match torch {torch} (torchvision cannot load its operators: "
            f"{text.strip().splitlines()[-1][:120]}); install the torchvision built for this torch: "
            f"pip install --force-reinstall torch=={torch} \"torchvision=={matching_torchvision(torch)}\" "
            f"(from the same index as torch, e.g. --index-url {CPU_INDEX} on a CPU-only machine)")


def matching_torchvision(torch_version: str) -> str:
    """torchvision's release for a torch release: torch 2.M goes with torchvision 0.(M+15)."""
    found = re.match(r"2\.(\d+)", torch_version)
    return f"0.{int(found.group(1)) + 15}.*" if found else "<the release for this torch>"


def _version(package: str) -> str:
    try:
        return metadata.version(package).split("+")[0]
    except metadata.PackageNotFoundError:
        return "(not installed)"
