"""TRAIN_KEEP_VERSIONS: how many trained model files a project keeps on disk.

After each published version the oldest model files beyond the limit are deleted: rejected candidates
first, then earlier promoted ones; the served version is always kept. A pruned version's run folder
(Ultralytics' plots, about 1.5 MB) goes with it. Cards stay (the history and its curves, and version
numbers are never reused); a pruned version cannot be served again.
"""

from __future__ import annotations

import logging
import shutil

from backend.training.registry import ProjectModels

logger = logging.getLogger("backend.training")


def keep_versions(models: ProjectModels, keep: int) -> list[int]:
    """Delete the model files beyond `keep`; returns the versions pruned."""
    promoted = models.promoted()
    served = promoted.version if promoted else None
    present = [version for version in models.versions() if version != served and models.model_path(version).is_file()]
    rejected = [version for version in present if (models.card(version) or {}).get("status") == "rejected"]
    earlier = [version for version in present if version not in rejected]
    excess = len(present) + (served is not None) - keep
    pruned = (rejected + earlier)[:max(excess, 0)]
    for version in pruned:
        models.model_path(version).unlink(missing_ok=True)
    for version in models.versions():  # also the run folders of versions pruned before run folders went with them
        if version != served and not models.model_path(version).is_file() and models.run_dir(version).is_dir():
            shutil.rmtree(models.run_dir(version), ignore_errors=True)
    if pruned:
        logger.info("training project %s: model files of versions %s deleted (TRAIN_KEEP_VERSIONS=%d)", models.project,
                    ", ".join(map(str, pruned)), keep)
    return pruned
