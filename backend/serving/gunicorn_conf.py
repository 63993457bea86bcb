"""gunicorn settings for production serving, read through `backend/gunicorn.conf.py`:

    gunicorn -c backend/gunicorn.conf.py backend._wsgi:app

Every value comes from the backend's settings (environment variables, see the README table):
WORKERS processes, each an asyncio (uvicorn) worker that runs model calls in THREADS threads, bound
to HOST:PORT (default 0.0.0.0:9090). GUNICORN_TIMEOUT overrides the worker timeout.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

from backend.settings import Settings, SettingsError

try:
    _settings = Settings.load()
except SettingsError as _error:  # one sentence and exit 2, as `python backend/_wsgi.py` does (not gunicorn's traceback)
    print(f"error: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '9090')}"
workers = _settings.workers
# The uvicorn worker ignores gunicorn's `threads`; THREADS sizes the app's own thread pool (backend/serving/app.py).
threads = _settings.threads
worker_class = "uvicorn.workers.UvicornWorker"

# A worker loads its models on the first request that needs them; a first SAM ViT-H checkpoint
# (2.5 GB) plus its first image embedding on CPU can take minutes, and a worker that misses the
# heartbeat for `timeout` seconds is killed and restarted, so the default 30 s would loop forever.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "600"))
graceful_timeout = 120
# Label Studio keeps connections open between requests; close them later than it does.
keepalive = 75

# Off: each worker imports torch and loads its models after the fork. A CUDA context created in the
# master cannot be used by forked children, and the models load lazily per worker anyway, so
# preloading would only save the import time.
preload_app = False

# The heartbeat file lives in memory, not on a container's overlay filesystem (it can stall).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()

# /metrics must add up every worker: prometheus_client writes each process's values to files in
# PROMETHEUS_MULTIPROC_DIR (read when prometheus_client is imported, so it is set here, in the master,
# before any worker starts). Without an explicit directory a private one lives as long as the master.
_owned_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _owned_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ls-backend-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server) -> None:  # noqa: ANN001 - gunicorn's hook signature
    _stop_on_torchvision_mismatch(server)
    # Values left by a previous run would be added to this one's.
    os.makedirs(_metrics_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(_metrics_dir, "*.db")):
        os.remove(stale)


def _stop_on_torchvision_mismatch(server) -> None:  # noqa: ANN001
    """A torchvision built for another torch stops the master before any worker starts: one sentence, exit 3.

    Checked once here, not in each worker: two workers failing to boot together race gunicorn's halt, and the
    second "Worker failed to boot" escapes it as a traceback (exit 1). A child process imports torchvision, so
    the master itself never imports torch.
    """
    from backend.models.torch_versions import torchvision_mismatch

    try:
        probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True,
                               timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return  # a slow disk, not a mismatch: the workers import it themselves
    if probe.returncode == 0 or (problem := torchvision_mismatch(RuntimeError(probe.stderr))) is None:
        return  # anything else a worker reports in its own log, with its traceback
    server.log.error("error: %s", problem)
    if _owned_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
    raise SystemExit(3)  # gunicorn's WORKER_BOOT_ERROR


def child_exit(server, worker) -> None:  # noqa: ANN001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def on_exit(server) -> None:  # noqa: ANN001
    if _owned_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
