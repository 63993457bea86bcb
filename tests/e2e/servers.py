"""Starting and stopping the real servers of the end-to-end tests: Label Studio and the backend.

Every server runs in its own process group (label-studio-ml runs the backend through `sh -c`), so
stopping one ends all its processes; its output goes to a log file the tests can read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    url: str
    log_path: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def stop(self, grace_seconds: float = 20.0) -> None:
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=grace_seconds)
        # Children that outlive the group leader (e.g. the backend behind `sh -c`) get the same end.
        _signal_group(self.process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def start_server(name: str, command: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path,
                 url: str, ready_path: str, timeout_s: float) -> ServerProcess:
    """Start `command` and wait until GET url+ready_path answers (any status below 500: a backend with basic
    auth answers 401); stops it again on failure."""
    log = log_path.open("wb")
    process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    server = ServerProcess(name, url, log_path, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"{name} exited with {process.returncode} while starting:\n{server.log_tail()}")
        try:
            if requests.get(url + ready_path, timeout=5).status_code < 500:
                return server
        except requests.RequestException:
            pass
        time.sleep(1.0)
    server.stop()
    raise ServerStartError(f"{name} did not answer {url}{ready_path} within {timeout_s:.0f} s:\n{server.log_tail()}")
