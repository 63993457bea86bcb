"""Who may call the backend: basic auth, protected mode (loopback callers only), or open.

    BASIC_AUTH_USER + BASIC_AUTH_PASS   every caller must send them (Label Studio's "Connect Model" dialog does)
    neither (the default)               protected mode: only callers on this machine (loopback) are answered
    ALLOW_UNAUTHENTICATED=true          open: anyone who reaches the port may call everything

The caller's address is the one the server hands the app: the socket peer under `python backend/_wsgi.py`,
uvicorn and gunicorn, unless their own FORWARDED_ALLOW_IPS is set to trust a proxy. A request that carries
a proxy's forwarding header (Forwarded, X-Forwarded-For, X-Real-IP) is never taken for a loopback caller:
a reverse proxy on the same machine would otherwise make every remote client look local.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from backend.settings import Settings

logger = logging.getLogger(__name__)

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
WAYS_OUT = ("set BASIC_AUTH_USER and BASIC_AUTH_PASS (BASIC_AUTH_PASS_FILE for a Docker secret) and enter them in "
            "Label Studio's Connect Model dialog (Select authentication method: Basic Authentication, Basic auth "
            "user, Basic auth pass), or set ALLOW_UNAUTHENTICATED=true to let anyone who reaches this port use it")
REMEMBERED_ADDRESSES = 1024  # refusals are logged once per address; the oldest addresses are forgotten first


@dataclass(frozen=True)
class Refusal:
    status: int  # 401: credentials missing or wrong; 403: protected mode, a caller not on this machine
    message: str
    address: str


class AccessPolicy:
    def __init__(self, user: str, password: str, allow_unauthenticated: bool) -> None:
        self._user = user.encode()
        self._password = password.encode()
        self.allow_unauthenticated = allow_unauthenticated
        self._logged: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(settings.basic_auth_user, settings.basic_auth_pass, settings.allow_unauthenticated)

    @property
    def mode(self) -> str:
        if self._user:
            return "basic auth"
        return "open" if self.allow_unauthenticated else "protected"

    def describe(self) -> str:
        """The start-up log line."""
        if self.mode == "basic auth":
            return "access: basic auth (BASIC_AUTH_USER) required of every caller"
        if self.mode == "open":
            return ("access: open (ALLOW_UNAUTHENTICATED=true): anyone who reaches this port may call every endpoint "
                    "and connect the backend to a Label Studio of their choosing")
        return ("access: protected mode: only callers on this machine (loopback) are answered, since no "
                f"BASIC_AUTH_USER/BASIC_AUTH_PASS is set; to serve a Label Studio on another machine, {WAYS_OUT}")

    def authenticated(self, request: HTTPConnection) -> bool:
        """The request carries the configured basic auth user and password."""
        if not self._user:
            return False
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # bytes: compare_digest refuses str with non-ASCII characters; `&`: both compared, always
        return hmac.compare_digest(user.encode(), self._user) & hmac.compare_digest(password.encode(), self._password)

    def refusal(self, request: HTTPConnection) -> Refusal | None:
        """Why this caller may not be answered, or None when it may."""
        address = caller_address(request)
        if self._user:
            if self.authenticated(request):
                return None
            return Refusal(401, "authentication required: this backend has BASIC_AUTH_USER set; enter its user and "
                                "password in Label Studio's Connect Model dialog (Select authentication method: "
                                "Basic Authentication)", address)
        if self.allow_unauthenticated or is_loopback_caller(request):
            return None
        return Refusal(403, f"this backend is in protected mode and answers only callers on its own machine "
                            f"({address} is not): {WAYS_OUT}", address)

    def allowed(self, request: HTTPConnection) -> bool:
        """May this caller use the backend at all (what every endpoint requires)?"""
        return self.refusal(request) is None

    def trusted(self, request: HTTPConnection) -> bool:
        """Is this caller known, not just allowed: authenticated, or (without basic auth) on this machine?
        Only a trusted caller's /setup makes its `hostname` Label Studio for downloads; what changes the
        served models (a rollback) should ask this too."""
        return self.authenticated(request) or (not self._user and is_loopback_caller(request))

    def log_refusal(self, refusal: Refusal, method: str, path: str) -> None:
        """A WARNING the first time an address is refused (again after it was forgotten)."""
        with self._lock:
            if refusal.address in self._logged:
                self._logged.move_to_end(refusal.address)
                return
            self._logged[refusal.address] = None
            if len(self._logged) > REMEMBERED_ADDRESSES:
                self._logged.popitem(last=False)
        logger.warning("%s %s from %s answered %d (not logged again for this address): %s", method, path,
                       refusal.address, refusal.status, refusal.message)


def caller_address(request: HTTPConnection) -> str:
    return request.client.host if request.client else "a local socket"


def is_loopback_caller(request: HTTPConnection) -> bool:
    """The caller is on this machine: a loopback address (or a Unix socket), not relayed by a proxy."""
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    if request.client is None:  # a Unix domain socket: only local processes can connect
        return True
    try:
        address = ipaddress.ip_address(request.client.host.split("%", 1)[0])
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return address.is_loopback


def access_policy(request: HTTPConnection) -> AccessPolicy:
    """The app's policy (a FastAPI dependency: `Depends(access_policy)`)."""
    return request.app.state.access


def caller_allowed(request: HTTPConnection) -> bool:
    """May this caller use the backend at all? (Every endpoint already requires it, through the middleware.)"""
    return access_policy(request).allowed(request)


def caller_trusted(request: HTTPConnection) -> bool:
    """Authenticated, or (without basic auth) on this machine: who may change what is served (a rollback)."""
    return access_policy(request).trusted(request)
