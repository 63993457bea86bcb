"""Task image URLs cannot make the backend reach internal addresses (SSRF): loopback, private,
link-local, reserved and cloud metadata addresses are refused after DNS resolution, on every redirect
and at the connection itself, except Label Studio's own host and what ALLOW_PRIVATE_URLS /
ALLOWED_URL_HOSTS open. A refused task gets an empty prediction and a warning naming the settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import pytest
from fastapi.testclient import TestClient

from backend.sources import url_policy
from backend.sources.images import ImageError, ImageFetcher
from backend.sources.label_studio import AccessTokens, Credentials
from backend.settings import Settings, SettingsError
from backend.sources.url_policy import AddressPolicy, AllowList
from tests.conftest import ALL_CONTROLS_CONFIG, local_url
from tests.fake_label_studio import LoopbackServer, QuietHandler
from tools.shapes_dataset import generate_image

PNG = cv2.imencode(".png", generate_image(5000).image)[1].tobytes()
PUBLIC = "93.184.216.34"


class ImageHost(LoopbackServer):
    """/img.png is an image; /redirect?to=URL answers 302 to URL; any absolute-URL request (as a proxy
    receives it) gets the image too. Records (path, Host header) of every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                host.requests.append((self.path, self.headers.get("Host")))
                parsed = urlparse(self.path)
                if parsed.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parsed.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parsed.path.endswith("/img.png"):
                    self.reply(200, PNG)
                else:
                    self.reply(404, b"not found")

        super().__init__(Handler)


@pytest.fixture()
def image_host() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host


@pytest.fixture()
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolved by the policy: entries of the returned dict (each answer consumed in turn when a
    list of lists), everything else as the system resolves it."""
    answers: dict[str, list] = {}
    system = url_policy.resolve

    def resolve(host: str, port: int) -> list[str]:
        answer = answers.get(host)
        if answer is None:
            return system(host, port)
        return answer.pop(0) if isinstance(answer[0], list) else answer

    monkeypatch.setattr(url_policy, "resolve", resolve)
    return answers


def fetcher(tmp_path: Path, policy: AddressPolicy | None = AddressPolicy()) -> ImageFetcher:
    return ImageFetcher(tmp_path / "cache", "", 5.0, 10**8, AccessTokens(5.0), 10**8, policy)


def fetch(tmp_path: Path, url: str, policy: AddressPolicy | None = AddressPolicy(),
          label_studio: str | None = None) -> bytes:
    credentials = Credentials(label_studio, "token") if label_studio else None
    return fetcher(tmp_path, policy).fetch(url, 1, credentials).read_bytes()


def allowing(hosts: str) -> AddressPolicy:
    return AddressPolicy(allowed=AllowList.parse(hosts))


# ---------------------------------------------------------------- which addresses


@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"), ("172.16.5.5", "private"),
    ("169.254.169.254", "cloud metadata"), ("169.254.10.10", "link-local"), ("100.100.100.200", "cloud metadata"),
    ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"), ("240.0.0.1", "reserved"), ("224.0.0.1", "multicast"),
    ("::1", "loopback"), ("fd00:ec2::254", "cloud metadata"), ("fc00::5", "private"), ("fe80::1%eth0", "link-local"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
])
def test_internal_addresses_are_refused_by_default(fake_dns: dict, tmp_path: Path, address: str, kind: str) -> None:
    fake_dns["images.example.test"] = [address]
    with pytest.raises(ImageError) as refused:
        fetch(tmp_path, "http://images.example.test/img.png")
    message = str(refused.value)
    assert f"resolves to {address.split('%')[0].removeprefix('::ffff:')}, a {kind} address" in message
    assert "ALLOWED_URL_HOSTS" in message


@pytest.mark.parametrize("host", ["2130706433", "0x7f.0.0.1", "127.1", "[::ffff:7f00:1]", "localhost", "0"])
def test_other_spellings_of_loopback_are_refused_after_resolution(tmp_path: Path, host: str) -> None:
    with pytest.raises(ImageError, match="a (loopback|unspecified) address"):
        fetch(tmp_path, f"http://{host}:1/img.png")


def test_a_hostname_resolving_to_loopback_is_refused_before_any_connection(fake_dns: dict, tmp_path: Path,
                                                                           image_host: ImageHost) -> None:
    port = urlparse(image_host.url).port
    fake_dns["images.example.test"] = ["127.0.0.1"]
    with pytest.raises(ImageError, match="'images.example.test' resolves to 127.0.0.1, a loopback address"):
        fetch(tmp_path, f"http://images.example.test:{port}/img.png")
    with pytest.raises(ImageError, match="ALLOW_PRIVATE_URLS=true"):
        fetch(tmp_path, f"{image_host.url}/img.png")
    assert image_host.requests == []


def test_allow_settings_open_private_addresses(tmp_path: Path, image_host: ImageHost) -> None:
    url = f"{image_host.url}/img.png"
    assert fetch(tmp_path / "a", url, AddressPolicy(allow_private=True)) == PNG
    assert fetch(tmp_path / "b", url, allowing("127.0.0.1")) == PNG
    assert fetch(tmp_path / "c", url, allowing("10.0.0.0/8, 127.0.0.0/8")) == PNG
    assert fetch(tmp_path / "d", url, None) == PNG  # the dataset tools: no policy


def test_label_studio_host_itself_is_allowed_but_only_its_origin(tmp_path: Path, image_host: ImageHost) -> None:
    assert fetch(tmp_path / "a", f"{image_host.url}/data/upload/1/img.png", label_studio=image_host.url) == PNG
    with pytest.raises(ImageError, match="loopback address"):  # not one of Label Studio's own paths: the URL policy
        fetch(tmp_path / "c", f"{image_host.url}/img.png", label_studio=image_host.url)
    untrusted = Credentials(image_host.url, "token", trusted=False)  # named in /setup by an unauthenticated caller
    with pytest.raises(ImageError, match="an unauthenticated caller on another machine named in /setup"):
        fetcher(tmp_path / "d", AddressPolicy()).fetch("/data/upload/1/img.png", 1, untrusted)
    assert [path for path, _ in image_host.requests] == ["/data/upload/1/img.png"]
    with ImageHost() as other:
        with pytest.raises(ImageError, match="loopback address"):
            fetch(tmp_path / "b", f"{other.url}/img.png", label_studio=image_host.url)
        assert other.requests == []


def test_metadata_addresses_need_an_explicit_address_entry(fake_dns: dict, tmp_path: Path) -> None:
    fake_dns["metadata.google.internal"] = ["169.254.169.254"]
    for policy in (AddressPolicy(allow_private=True), allowing("metadata.google.internal")):
        with pytest.raises(ImageError, match="cloud metadata address.*unless ALLOWED_URL_HOSTS names that address"):
            fetch(tmp_path, "http://metadata.google.internal/computeMetadata/v1/", policy)
    guard = allowing("169.254.169.254").guard(None)
    assert guard.addresses("metadata.google.internal", 80) == ["169.254.169.254"]


def test_allow_list_names_and_suffixes(fake_dns: dict, tmp_path: Path, image_host: ImageHost) -> None:
    port = urlparse(image_host.url).port
    fake_dns["minio.corp.test"] = ["127.0.0.1"]
    fake_dns["other.test"] = ["127.0.0.1"]
    # the download reaches the checked address while the request keeps the name (Host header, TLS)
    assert fetch(tmp_path / "a", f"http://minio.corp.test:{port}/img.png", allowing("*.corp.test")) == PNG
    assert image_host.requests == [("/img.png", f"minio.corp.test:{port}")]
    assert fetch(tmp_path / "b", f"http://MINIO.corp.test.:{port}/img.png", allowing("minio.corp.test")) == PNG
    with pytest.raises(ImageError, match="'other.test' resolves to 127.0.0.1"):
        fetch(tmp_path / "c", f"http://other.test:{port}/img.png", allowing("*.corp.test, minio.corp.test"))


def test_an_answer_with_one_internal_address_is_refused(fake_dns: dict, tmp_path: Path) -> None:
    fake_dns["images.example.test"] = [PUBLIC, "10.0.0.7"]
    with pytest.raises(ImageError, match="resolves to 10.0.0.7, a private address"):
        fetch(tmp_path, "http://images.example.test/img.png")


# ---------------------------------------------------------------- rebinding, redirects, proxies


def test_dns_rebinding_after_the_check_is_caught_at_the_connection(fake_dns: dict, tmp_path: Path,
                                                                   image_host: ImageHost) -> None:
    port = urlparse(image_host.url).port
    fake_dns["rebind.example.test"] = [[PUBLIC], ["127.0.0.1"], ["127.0.0.1"]]  # public for the first look only
    with pytest.raises(ImageError, match="'rebind.example.test' resolves to 127.0.0.1, a loopback address"):
        fetch(tmp_path, f"http://rebind.example.test:{port}/img.png")
    assert image_host.requests == []


def test_a_redirect_from_an_allowed_host_to_an_internal_one_is_refused(fake_dns: dict, tmp_path: Path,
                                                                       image_host: ImageHost) -> None:
    fake_dns["internal.example.test"] = ["10.20.30.40"]
    with ImageHost() as internal:
        for target in (f"{internal.url}/img.png", "http://internal.example.test/img.png"):
            url = f"{image_host.url}/redirect?to={target}"
            with pytest.raises(ImageError, match="refused to download .*(loopback|private) address"):
                fetch(tmp_path, url, label_studio=image_host.url)
        assert internal.requests == []
        # the same redirect is followed where the target is allowed
        assert fetch(tmp_path, f"{image_host.url}/redirect?to={internal.url}/img.png", allowing("127.0.0.1")) == PNG


def test_through_a_proxy_the_target_name_is_checked(fake_dns: dict, tmp_path: Path, image_host: ImageHost,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", image_host.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fake_dns["internal.example.test"] = ["10.20.30.40"]
    fake_dns["public.example.test"] = [PUBLIC]
    with pytest.raises(ImageError, match="resolves to 10.20.30.40, a private address"):
        fetch(tmp_path, "http://internal.example.test/img.png")
    assert image_host.requests == []
    # the proxy itself (an operator's choice, often on a private address) is reachable
    assert fetch(tmp_path, "http://public.example.test/img.png") == PNG
    assert image_host.requests[0][0] == "http://public.example.test/img.png"


# ---------------------------------------------------------------- settings and the /predict answer


def test_allowed_url_hosts_setting_is_checked_at_start() -> None:
    assert Settings.load({"allowed_url_hosts": "minio.local, *.corp.example, 10.0.0.0/8, ::1"}, environ={})
    with pytest.raises(SettingsError, match="ALLOWED_URL_HOSTS entry 'http://x/' is not a host name"):
        Settings.load({"allowed_url_hosts": "http://x/"}, environ={})


def test_a_refused_task_gets_an_empty_prediction_and_the_others_are_answered(
        make_client: Callable[..., TestClient], image_host: ImageHost, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    tasks = [{"id": 1, "data": {"image": f"{image_host.url}/img.png"}},
             {"id": 2, "data": {"image": "http://169.254.169.254/latest/meta-data/"}},
             {"id": 3, "data": {"image": local_url("shapes_5000.png")}}]
    client = make_client(cache_dir=tmp_path / "default")
    with caplog.at_level(logging.WARNING):
        response = client.post("/predict", json={"tasks": tasks, "label_config": ALL_CONTROLS_CONFIG})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[:2] == [[], []] and results[2]["result"]  # refused tasks get no prediction
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("task 1: refused to download" in m and "ALLOW_PRIVATE_URLS=true" in m for m in warnings)
    assert any("task 2: refused to download" in m and "cloud metadata" in m for m in warnings)
    assert image_host.requests == []

    opened = make_client(cache_dir=tmp_path / "opened", allowed_url_hosts="127.0.0.1")
    response = opened.post("/predict", json={"tasks": tasks[:1], "label_config": ALL_CONTROLS_CONFIG})
    assert response.json()["results"][0]["result"], "the allow-listed image was not predicted"
