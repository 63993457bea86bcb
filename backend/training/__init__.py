"""Learning from the labels: Label Studio's "Start Training" fine-tunes YOLO on a project's annotations.

    jobs.py      job state per project, shared by workers (queue, coalescing, progress)
    dataset.py   Label Studio API -> task images -> YOLO dataset (tools.ls_to_yolo)
    trainer.py   Ultralytics fine-tuning and val-split scoring
    run.py       one job end to end, in its own process
    registry.py  per-project versions, model cards, atomic promotion, the promoted-version lookup
                 (`python -m backend.training.registry`: list versions, roll back)
    service.py   what a serving worker does: webhooks, dispatch, status
    rq.py        TRAIN_QUEUE=redis://...: jobs for `rq worker`
"""
