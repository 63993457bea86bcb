"""A misbehaving Label Studio media server on 127.0.0.1, for fault and concurrency tests."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlparse

from tests.fake_label_studio import LoopbackServer, QuietHandler

TOKEN = "fault-token"
SLOW_RESPONSE_MAX_S = 30.0  # bound on how long the server holds a slow request


class FaultyLabelStudio(LoopbackServer):
    """Label Studio's media endpoints on 127.0.0.1, misbehaving by file name:
    ok*.png 200 | unauthorized.png 401 | missing.png 404 | error.png 500 | slow.png held until `release`
    | truncated.png half the PNG | short.png announces more bytes than it sends | reset.png closes the
    connection | flaky.png 500 for its first `flaky_failures` requests, then 200 | padded.png the PNG
    followed by 3x its size of zeros | unsized-padded.png the same without Content-Length."""

    def __init__(self, image: bytes, flaky_failures: int = 2) -> None:
        self.image = image
        self.flaky_failures = flaky_failures
        self.requests: list[str] = []
        self.slow_started = threading.Event()
        self.release = threading.Event()
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                name = fake.file_name(self.path)
                fake.requests.append(name)
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.reply(401, b'{"detail": "Authentication credentials were not provided."}')
                elif name.startswith("ok"):
                    self.reply(200, fake.image)
                elif name in {"unauthorized.png", "missing.png", "error.png"}:
                    self.reply({"unauthorized.png": 401, "missing.png": 404, "error.png": 500}[name], b"{}")
                elif name == "slow.png":
                    fake.slow_started.set()
                    fake.release.wait(SLOW_RESPONSE_MAX_S)
                    self.reply(200, fake.image)
                elif name == "truncated.png":
                    self.reply(200, fake.image[: len(fake.image) // 2])
                elif name == "short.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(fake.image)))
                    self.end_headers()
                    self.wfile.write(fake.image[:100])
                    self.close_connection = True
                elif name == "padded.png":
                    self.reply(200, fake.padded())
                elif name == "unsized-padded.png":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(fake.padded())
                    self.close_connection = True
                elif name == "reset.png":
                    self.close_connection = True
                elif name == "flaky.png":
                    failed = fake.requests.count("flaky.png") <= fake.flaky_failures
                    self.reply(500 if failed else 200, b"{}" if failed else fake.image)
                else:
                    self.reply(404, b"{}")

        super().__init__(Handler)

    def padded(self) -> bytes:
        return self.image + bytes(3 * len(self.image))

    @staticmethod
    def file_name(path: str) -> str:
        parsed = urlparse(path)
        # the SDK asks /storage-data/uploaded/?filepath=upload/<project>/<name> first, then /data/upload/...
        target = parse_qs(parsed.query).get("filepath", [parsed.path])[0]
        return target.rsplit("/", 1)[-1]

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)
