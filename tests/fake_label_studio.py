"""Minimal stand-ins for Label Studio's media endpoints, on 127.0.0.1, for protocol tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class QuietHandler(BaseHTTPRequestHandler):
    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class LoopbackServer:
    """`handler` served on 127.0.0.1 (a free port, `url`) from a daemon thread, as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):  # noqa: ANN204 - the subclass' own type
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeLabelStudio(LoopbackServer):
    """Serves `files` (upload key -> bytes) at /data/upload/... and /storage-data/uploaded/?filepath=...
    and the user at /api/current-user/whoami to requests whose Authorization header is `Token <token>`
    (others get Label Studio's 401); records every request path."""

    def __init__(self, files: dict[str, bytes], token: str) -> None:
        self.files = files
        self.token = token
        self.requests: list[tuple[str, str | None]] = []
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {fake.token}":
                    self.reply(401, b'{"detail": "Authentication credentials were not provided."}')
                    return
                parsed = urlparse(self.path)
                if parsed.path == "/api/current-user/whoami":
                    self.reply(200, b'{"id": 1, "email": "user@example.com"}')
                    return
                key = parse_qs(parsed.query).get("filepath", [""])[0] if parsed.path.startswith("/storage-data/") \
                    else parsed.path.removeprefix("/data/")
                body = fake.files.get(key)
                self.reply(200, body) if body is not None else self.reply(404, b'{"detail": "Not found."}')

        super().__init__(Handler)
