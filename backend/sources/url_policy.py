"""Which addresses task image downloads may reach: no blind server-side requests to internal hosts (SSRF).

Anyone who can create tasks chooses the URLs the backend downloads. By default a download may only
connect to publicly routable addresses, or to Label Studio itself (the origin of the `hostname` from
/setup, or LABEL_STUDIO_URL). ALLOW_PRIVATE_URLS=true opens loopback, private, link-local and reserved
addresses; ALLOWED_URL_HOSTS opens chosen hosts, `*.domain` suffixes, addresses or CIDR ranges (for
on-premise storage). Cloud metadata addresses open only through an explicit address or CIDR entry.

The check runs on the resolved addresses, at every connection (so every redirect too), and the
connection goes to the address that was checked: a DNS answer that changes between the check and the
connection (DNS rebinding) cannot slip through. Through an HTTP proxy, the proxy resolves and connects,
so only the target's name resolution is checked.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# AWS/GCP/Azure/OpenStack instance metadata, AWS ECS task metadata, AWS IPv6 metadata, Alibaba Cloud
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in
                               ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
DEFAULT_PORTS = {"http": 80, "https": 443}
OPEN_SETTINGS = "add the host or its address to ALLOWED_URL_HOSTS, or set ALLOW_PRIVATE_URLS=true"


class AddressRefused(Exception):
    """A URL's host resolves to an address downloads may not reach; the message names the settings."""


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in the order the system resolver gives them."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


@dataclass(frozen=True)
class AllowList:
    names: frozenset[str] = frozenset()  # lower case, no trailing dot
    suffixes: tuple[str, ...] = ()  # ".corp.example" for an entry "*.corp.example"
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """Comma- or space-separated host names, `*.domain`, addresses and CIDRs; ValueError names a bad entry."""
        names, suffixes, networks = set(), [], []
        for entry in text.replace(",", " ").split():
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            label = name[2:] if name.startswith("*.") else name
            if not label or "/" in label or ":" in label or not all(part for part in label.split(".")):
                raise ValueError(f"ALLOWED_URL_HOSTS entry '{entry}' is not a host name, *.domain, address or CIDR")
            if name.startswith("*."):
                suffixes.append("." + label)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def has_name(self, host: str) -> bool:
        return host in self.names or host.endswith(self.suffixes)

    def has_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def address_kind(address: IPAddress) -> str | None:
    """Why downloads may not reach `address` by default, or None for a publicly routable one."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 scope (fe80::1%eth0)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    allowed: AllowList = field(default_factory=AllowList)

    @classmethod
    def from_settings(cls, allow_private_urls: bool, allowed_url_hosts: str) -> AddressPolicy:
        return cls(allow_private_urls, AllowList.parse(allowed_url_hosts))

    def guard(self, label_studio_url: str | None) -> HostGuard:
        """The policy for one download, with Label Studio at `label_studio_url` trusted."""
        return HostGuard(self, _origin(label_studio_url) if label_studio_url else None)


@dataclass(frozen=True)
class HostGuard:
    policy: AddressPolicy
    label_studio: tuple[str, int] | None  # (host, port) of Label Studio

    def addresses(self, host: str, port: int) -> list[str]:
        """`host`'s addresses, every one checked; raises AddressRefused, or socket.gaierror."""
        host = host.lower().rstrip(".").strip("[]")
        addresses = resolve(host, port)
        trusted_name = (host, port) == self.label_studio or self.policy.allowed.has_name(host)
        for text in addresses:
            address = _address(text)
            kind = address_kind(address)
            if kind is None or self.policy.allowed.has_address(address):
                continue
            if kind == "cloud metadata":
                raise AddressRefused(f"'{host}' resolves to {address}, a cloud metadata address, which task image "
                                     f"URLs may not reach unless ALLOWED_URL_HOSTS names that address")
            if not (trusted_name or self.policy.allow_private):
                raise AddressRefused(f"'{host}' resolves to {address}, a {kind} address, which task image URLs may "
                                     f"not reach (SSRF protection); if it is your own storage, {OPEN_SETTINGS}")
        return addresses

    def check_url(self, url: str) -> None:
        self.addresses(*_origin(url))


def _origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").rstrip("."), parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)


def _pinned(connection_class: type[HTTPConnection], guard: HostGuard) -> type[HTTPConnection]:
    """`connection_class` connecting only to the checked addresses of its host."""

    class PinnedConnection(connection_class):
        def _new_conn(self) -> socket.socket:
            host = self._dns_host
            try:
                addresses = guard.addresses(host, self.port)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            failure: Exception | None = None
            for address in addresses:
                self._dns_host = address  # only urllib3's connect uses it; TLS and Host keep the name
                try:
                    return super()._new_conn()
                except NewConnectionError as exc:
                    failure = exc
                finally:
                    self._dns_host = host
            raise failure or NewConnectionError(self, f"'{host}' has no address")

    return PinnedConnection


class GuardedAdapter(HTTPAdapter):
    """Direct connections go only to checked addresses; proxied requests have their target's name checked."""

    def __init__(self, guard: HostGuard) -> None:
        self._guard = guard
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - requests' own signature
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _pinned(HTTPConnection, self._guard)}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": _pinned(HTTPSConnection, self._guard)}),
        }

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:  # noqa: ANN003
        if select_proxy(request.url, kwargs.get("proxies") or {}):
            self._guard.check_url(request.url)
        return super().send(request, **kwargs)
