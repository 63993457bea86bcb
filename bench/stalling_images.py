"""A loopback image host for bench/bench_limits.py and tests/test_limits.py.

    /ok-*.png       the image, at once
    /trickle-*.png  announces the image's length, then sends one byte every `trickle_s` seconds
    /stall-*.png    sends nothing until `release` is set (at most `stall_max_s`)

It counts the requests of each kind, so a test can see whether the backend kept fetching.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StallingImages:
    def __init__(self, image: bytes, trickle_s: float = 0.5, stall_max_s: float = 60.0) -> None:
        self.image = image
        self.trickle_s = trickle_s
        self.stall_max_s = stall_max_s
        self.release = threading.Event()
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                kind = self.path.strip("/").split("-")[0]
                with host._lock:
                    host.requests[kind] += 1
                try:
                    if kind == "stall":
                        host.release.wait(host.stall_max_s)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(host.image)))
                    self.end_headers()
                    if kind == "trickle":
                        for index in range(len(host.image)):
                            self.wfile.write(host.image[index:index + 1])
                            self.wfile.flush()
                            if host.release.wait(host.trickle_s):
                                break
                    self.wfile.write(host.image if kind != "trickle" else b"")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, kind: str) -> int:
        with self._lock:
            return self.requests[kind]

    def __enter__(self) -> StallingImages:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        time.sleep(0.1)
        self.server.shutdown()
        self.server.server_close()
