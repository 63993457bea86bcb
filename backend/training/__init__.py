"""Learning from the labels: Label Studio's "Start Training" fine-tunes YOLO on a project's annotations.

    jobs.py      job state per project, shared by workers (queue, coalescing, progress)
    dataset.py   Label Studio API -> task images -> YOLO dataset (tools.ls_to_yolo)
    trainer.py   Ultralytics fine-tuning and val-split scoring
    run.py       one job end to end, in its own process
    registry.py  per-project versions, model cards, atomic promotion, the promoted-version lookup
    service.py   what a serving worker does: webhooks, dispatch, status
    rq.py        TRAIN_QUEUE=redis://...: jobs for `rq worker`
"""

from __future__ import annotations

from backend.settings import Settings
from backend.sources.label_studio import project_uid
from backend.training.registry import PromotedVersion, promoted_version_at


def promoted_version(settings: Settings, project: object) -> PromotedVersion | None:
    """The model version serving a Label Studio project uid ("12.1700000000"), or None when the configured
    models serve it (also for a bare id: it names no project). Cheap: one stat of its promoted.json per call."""
    uid = project_uid(project)
    return None if uid is None else promoted_version_at(settings.model_root_path, uid)


__all__ = ["PromotedVersion", "promoted_version"]
