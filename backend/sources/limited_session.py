"""Downloads with limits: a total deadline (not a per-read timeout), a byte cap and the URL policy's addresses."""

from __future__ import annotations

import socket
import threading
import time

import requests

from backend.sources.url_policy import GuardedAdapter, HostGuard


class DownloadTooLarge(requests.RequestException):
    """The body is larger than the download limit; raised while it streams, before it fills memory."""


class LimitedSession(requests.Session):
    """Every request gets a timeout and, with a guard, connects only to addresses it allows; a successful
    streamed body is read here, up to `max_bytes`. All requests of the session end by `deadline`
    (time.monotonic): a server that trickles bytes slower than the per-read timeout is cut off there."""

    def __init__(self, timeout: float, max_bytes: int, guard: HostGuard | None, deadline: float) -> None:
        super().__init__()
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._sockets: list[socket.socket] = []
        self.expired = False
        if guard is not None:
            for prefix in ("http://", "https://"):
                self.mount(prefix, GuardedAdapter(guard))
        for adapter in self.adapters.values():
            manager = adapter.poolmanager
            manager.pool_classes_by_scheme = {scheme: _tracking_pool(pool, self._sockets)
                                              for scheme, pool in manager.pool_classes_by_scheme.items()}

    def request(self, method, url, **kwargs):  # noqa: ANN001 - requests' own signature
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise requests.Timeout("no time left")
        kwargs["timeout"] = min(kwargs.get("timeout") or self._timeout, remaining)
        watchdog = threading.Timer(remaining, self._cut_off)
        watchdog.daemon = True
        watchdog.start()
        try:
            response = super().request(method, url, **kwargs)
            if kwargs.get("stream") and response.ok:
                response._content = self._read_limited(response)  # what `response.content` then returns
        except (requests.RequestException, OSError):
            if self.expired:
                raise requests.Timeout("deadline") from None
            raise
        finally:
            watchdog.cancel()
        if self.expired:  # a body without Content-Length ends at the cut; it is not the whole image
            raise requests.Timeout("deadline")
        return response

    def _cut_off(self) -> None:
        self.expired = True
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
            except OSError:
                pass

    def _read_limited(self, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            response.close()
            raise DownloadTooLarge(f"it announces {int(declared)} bytes, more than MAX_DOWNLOAD_BYTES={self._max_bytes}")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):  # decoded (gzip) bytes: the limit holds after decompression
            body += chunk
            if len(body) > self._max_bytes:
                response.close()
                raise DownloadTooLarge(f"it is more than MAX_DOWNLOAD_BYTES={self._max_bytes} bytes")
        return bytes(body)


def _tracking_pool(pool_class: type, sockets: list) -> type:
    """`pool_class` whose connections add their socket to `sockets` (so a deadline can cut them off)."""
    class TrackedConnection(pool_class.ConnectionCls):
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    return type(f"Tracked{pool_class.__name__}", (pool_class,), {"ConnectionCls": TrackedConnection})
