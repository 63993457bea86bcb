"""TRAIN_QUEUE=redis://...: training jobs on an RQ queue, trained by `rq worker` on another machine.

The worker imports this module's `run_queued_job`; it reads its settings (MODEL_ROOT shared with the
serving backends, TRAIN_DEVICE, TRAIN_* sizes) from its own environment, and records the job's state
on the job board under MODEL_ROOT, where the serving backends read it and find the promoted model.

    TRAIN_QUEUE=redis://gpu-box:6379/0 MODEL_ROOT=/shared/models rq worker ls-yolo-train --url redis://gpu-box:6379/0
"""

from __future__ import annotations

import logging

from backend.settings import Settings
from backend.sources.label_studio import project_uid
from backend.training.run import JobSpec, run_jobs

QUEUE_NAME = "ls-yolo-train"
JOB_TIMEOUT_S = 24 * 3600


def enqueue(url: str, spec: JobSpec) -> str:
    """Put the job on the queue; returns RQ's job id. Raises redis' errors when the queue is unreachable."""
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    queue = Queue(QUEUE_NAME, connection=connection)
    job = queue.enqueue(run_queued_job, spec.project, spec.job_id, spec.hostname, spec.token, spec.trusted,
                        job_timeout=JOB_TIMEOUT_S, result_ttl=86400, failure_ttl=7 * 86400,
                        description=f"train Label Studio project {spec.project}")
    return job.id


def job_gone(url: str, rq_job_id: str) -> bool:
    """Whether the RQ job has ended (failed, stopped, finished) or expired; False while the queue is unreachable."""
    from redis import Redis
    from redis.exceptions import RedisError
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(rq_job_id, connection=Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10))
        return job.get_status() in ("finished", "failed", "stopped", "canceled")
    except NoSuchJobError:
        return True
    except RedisError:
        return False


def run_queued_job(project: str, job_id: str, hostname: str, token: str, trusted: bool = True) -> None:
    settings = Settings.load()
    logging.getLogger("backend.training").setLevel(settings.log_level.upper())
    if project_uid(project) is None:  # queued by a backend from before project uids (a bare id such as 12)
        logging.getLogger("backend.training").error(
            "training job %s names project %r, not a Label Studio project uid (<id>.<created_at>): it was queued by an "
            "earlier version of the backend and is dropped; press Start Training in Label Studio again", job_id,
            str(project)[:60])
        return
    run_jobs(settings, JobSpec(project, job_id, hostname, token, trusted))
