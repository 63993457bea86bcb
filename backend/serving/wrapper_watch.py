"""Tie the server's life to the `label-studio-ml start` process that started it.

`label-studio-ml start backend` runs `python backend/_wsgi.py` through `os.system`, that is under a
`sh -c` child, so killing the wrapper leaves the shell and the server running, and the shell keeps
the server's parent alive (PR_SET_PDEATHSIG would never fire). Instead, a daemon thread watches the
wrapper itself (found among our ancestors by its command line) and our direct parent, and stops the
server once either is gone. Only a server started by the wrapper is watched: `python backend/_wsgi.py`
started by hand, by nohup or by a supervisor, and gunicorn workers, live on their own.

Processes are read from /proc (Linux) or `ps` (macOS, BSD); where neither exists nothing is watched.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

WRAPPER_NAMES = ("label-studio-ml", "label_studio_ml")
ANCESTORS_SEARCHED = 3  # the wrapper is the parent of our `sh -c` parent; allow one more level
GRACE_SECONDS = 10.0  # a graceful shutdown that takes longer ends with os._exit


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    parent: int
    started: str  # start time as the system reports it: with the pid, one process's identity
    alive: bool  # False for a zombie (killed, not yet reaped by its own parent)
    command: tuple[str, ...]


def process_info(pid: int) -> ProcessInfo | None:
    """What the system says about `pid`, or None when there is no such process (or no way to ask)."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self/stat").exists():
        try:
            stat = (proc / "stat").read_text()
            command = tuple(arg for arg in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") if arg)
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # the command name in (...) may hold spaces
        return ProcessInfo(pid, int(fields[1]), fields[19], alive=fields[0] not in ("Z", "X"), command=command)
    try:
        line = subprocess.run(["ps", "-o", "ppid=,stat=,lstart=,command=", "-p", str(pid)], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not line:
        return None
    parent, state, *rest = line.split()
    return ProcessInfo(pid, int(parent), " ".join(rest[:5]), alive=not state.startswith("Z"), command=tuple(rest[5:]))


def is_wrapper(info: ProcessInfo) -> bool:
    return "start" in info.command and any(Path(arg).name.startswith(WRAPPER_NAMES) for arg in info.command[:3])


def find_wrapper() -> ProcessInfo | None:
    """The `label-studio-ml start` process among our closest ancestors, if we were started by it."""
    pid = os.getppid()
    for _ in range(ANCESTORS_SEARCHED):
        info = process_info(pid) if pid > 1 else None
        if info is None:
            return None
        if is_wrapper(info):
            return info
        pid = info.parent
    return None


def still_running(info: ProcessInfo) -> bool:
    now = process_info(info.pid)
    return now is not None and now.alive and now.started == info.started


def stop_this_process(reason: str) -> None:
    """SIGTERM to ourselves: uvicorn shuts down gracefully once serving, Python's default ends us before."""
    logger.warning("%s: stopping the server", reason)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    logger.error("the server did not stop within %g s of SIGTERM; exiting now", GRACE_SECONDS)
    os._exit(1)


def watch_wrapper(interval: float = 0.5) -> ProcessInfo | None:
    """When started by `label-studio-ml start`, stop the server once the wrapper or our parent dies.

    Returns the wrapper found (None: nothing is watched)."""
    wrapper = find_wrapper()
    if wrapper is None:
        return None
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                stop_this_process(f"the parent process {parent} exited")
            if not still_running(wrapper):
                stop_this_process(f"label-studio-ml (pid {wrapper.pid}) exited")

    threading.Thread(target=watch, name="wrapper-watch", daemon=True).start()
    logger.debug("watching label-studio-ml (pid %d): the server stops when it exits", wrapper.pid)
    return wrapper
