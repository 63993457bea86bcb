"""Cloud storage objects read directly through fsspec, with this process' own credentials.

Label Studio's cloud storage URLs (`s3://bucket/key`, `gs://bucket/key`, `azure-blob://container/blob`)
are normally presigned by Label Studio; with STORAGE_READ=direct (a job next to the bucket) they are
read here instead, and `tools.annotate_dir` lists image roots with the same filesystems. Credentials
come from the standard environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) and
STORAGE_OPTIONS (fsspec keyword arguments, e.g. `endpoint_url` for MinIO).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

# URL scheme -> fsspec protocol; `az`/`abfs` and `gcs` are fsspec's spellings of Label Studio's schemes.
PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "azure-blob": "az", "az": "az", "abfs": "az"}
PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "az": "adlfs"}
# How Label Studio's cloud storages spell a URL of each protocol (what tasks must hold to be resolved).
LABEL_STUDIO_SCHEMES = {"s3": "s3", "gcs": "gs", "az": "azure-blob"}
INSTALL_HINT = "pip install -e '.[remote]'"


class StorageError(Exception):
    """An object cannot be listed or read; the message is safe to log and to show."""


def storage_protocol(url: str) -> str | None:
    """The fsspec protocol of a cloud storage URL, None for anything else."""
    scheme, sep, _ = url.partition("://")
    return PROTOCOLS.get(scheme.lower()) if sep else None


def label_studio_url(url: str) -> str:
    """The URL as Label Studio's cloud storage names the object (`az://c/b` -> `azure-blob://c/b`)."""
    protocol = storage_protocol(url)
    if protocol is None:
        return url
    return f"{LABEL_STUDIO_SCHEMES[protocol]}://{url.partition('://')[2]}"


def object_path(url: str) -> str:
    """`bucket/key` of a cloud storage URL (what the fsspec filesystem takes); keys are taken as written,
    as Label Studio's storages write them (`#`, `?` and `%20` are part of the key, not URL syntax)."""
    return url.partition("://")[2].rstrip("/")


def parse_storage_options(text: str) -> dict[str, Any]:
    """STORAGE_OPTIONS: a JSON object of fsspec keyword arguments (empty: none)."""
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"STORAGE_OPTIONS must be a JSON object, e.g. '{{\"endpoint_url\": \"http://minio:9000\"}}': {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("STORAGE_OPTIONS must be a JSON object of fsspec options, e.g. '{\"endpoint_url\": \"http://minio:9000\"}'")
    return options


def check_package(protocol: str) -> None:
    """Raises StorageError with the pip extra to install when the protocol's fsspec package is missing."""
    package = PACKAGES.get(protocol)
    if package is None:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        scheme = LABEL_STUDIO_SCHEMES[protocol]
        raise StorageError(f"reading {scheme}:// URLs needs the {package} package, which is not installed: "
                           f"{INSTALL_HINT} (or pip install {package})") from None


class ObjectStorage:
    """fsspec filesystems, one per protocol, created on first use with the same options (thread-safe)."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self._options = dict(options or {})
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()

    def filesystem(self, protocol: str):  # noqa: ANN201 - an fsspec AbstractFileSystem
        with self._lock:
            if protocol not in self._filesystems:
                check_package(protocol)
                import fsspec

                try:
                    self._filesystems[protocol] = fsspec.filesystem(protocol, **self._options)
                except Exception as exc:  # noqa: BLE001 - an option it does not take, no account name (adlfs), ...
                    raise StorageError(f"cannot open {LABEL_STUDIO_SCHEMES[protocol]}:// storage with the storage options "
                                       f"{sorted(self._options)}: {type(exc).__name__}: {str(exc)[:200]}") from None
            return self._filesystems[protocol]

    def _locate(self, url: str) -> tuple[Any, str]:
        protocol = storage_protocol(url)
        if protocol is None:
            raise StorageError(f"'{url[:200]}' is not an s3://, gs:// or azure-blob:// (az://) URL")
        return self.filesystem(protocol), object_path(url)

    def read(self, url: str, max_bytes: int) -> bytes:
        """The object's bytes; refused before reading when it is larger than `max_bytes`."""
        fs, path = self._locate(url)
        with _storage_errors(url):
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise StorageError(f"'{url[:200]}' is {size} bytes, more than MAX_DOWNLOAD_BYTES={max_bytes}")
            return fs.cat_file(path)

    def download(self, url: str, cache_dir: Path, max_bytes: int) -> Path:
        """The object as a file in `cache_dir` (for readers that need a path: video, training)."""
        name = PurePosixPath(object_path(url)).name or "object"
        target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
        if not target.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(self.read(url, max_bytes))
            partial.replace(target)
        return target

    def find(self, root_url: str) -> list[str]:
        """The URL of every object under `root_url` (a bucket, or a prefix taken as a folder), sorted."""
        fs, root = self._locate(root_url)
        scheme = root_url.partition("://")[0]
        with _storage_errors(root_url, "list"):
            if "/" in root and fs.isfile(root):
                raise StorageError(f"'{root_url}' is an object, not a folder of images")
            fs.invalidate_cache(root)  # a long-lived filesystem must not answer with an old listing
            found = fs.find(root, detail=True)
        return sorted(f"{scheme}://{path}" for path, info in found.items()
                      if info.get("type", "file") == "file" and not path.endswith("/"))


@contextmanager
def _storage_errors(url: str, verb: str = "read") -> Iterator[None]:
    """Cloud SDK exceptions (FileNotFoundError, PermissionError, botocore/azure/google errors) as StorageError."""
    url = url[:200]
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"'{url}' not found") from None
    except PermissionError as exc:
        raise StorageError(f"permission denied to {verb} '{url}': {str(exc)[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - each cloud SDK has its own exception types
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        if "Credentials" in type(exc).__name__ or type(exc).__name__ == "ClientAuthenticationError":
            raise StorageError(f"no usable credentials to {verb} '{url}' (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, "
                               f"AZURE_STORAGE_* or the storage options): {detail}") from None
        raise StorageError(f"cannot {verb} '{url}': {detail}") from None

def direct_storage(settings) -> ObjectStorage | None:  # noqa: ANN001 - backend.settings.Settings (imports this module)
    """The reader STORAGE_READ=direct asks for; None when Label Studio presigns cloud URLs."""
    if settings.storage_read != "direct":
        return None
    return ObjectStorage(parse_storage_options(settings.storage_options))
