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
from backend.training.registry import PromotedVersion, project_id, promoted_version_at


def promoted_version(settings: Settings, project: object) -> PromotedVersion | None:
    """The model version serving a Label Studio project ("12.1700000000", "12" or 12), or None when the
    configured models serve it. Cheap: one stat of the project's promoted.json per call."""
    project = project_id(project)
    return None if project is None else promoted_version_at(settings.model_root_path, project)


__all__ = ["PromotedVersion", "promoted_version"]
