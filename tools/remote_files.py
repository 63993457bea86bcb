"""Image roots in cloud storage for `tools.annotate_dir`: `s3://`, `gs://` and `az://` prefixes through fsspec.

The root is listed once (recursively, image extensions only, hidden names left out, sorted); the
images are not read here: their URLs become the tasks, and whichever process predicts a task (this
one, or a Ray actor on another machine) reads the bytes itself (STORAGE_READ=direct). COCO names
the images by their path under the root; Label Studio tasks hold the URLs as Label Studio's cloud
storage names them (`azure-blob://` for Azure), so a project with that storage connected shows them.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from backend.sources.object_storage import ObjectStorage, StorageError, label_studio_url, parse_storage_options, storage_protocol
from formats.export_images import PlacedImage


class RootError(Exception):
    """The root cannot be used; the message says why."""


def image_root(text: str) -> Path | str:
    """A command-line root: a local folder (a path or `file://` URL) as a Path, a cloud storage URL as a str."""
    scheme, sep, _ = text.partition("://")
    if not sep or len(scheme) < 2:  # a Windows drive letter is not a scheme
        return Path(text)
    scheme = scheme.lower()
    if scheme == "file":
        return Path(unquote(urlparse(text).path))
    if storage_protocol(text) is not None:
        return text
    if scheme in ("http", "https"):
        raise RootError("an http(s) address has no file listing to find the images in: put them in a bucket "
                        "(s3://, gs://, az://) or a local folder")
    raise RootError(f"'{text}' is not a folder, file://, s3://, gs:// or az:// root")


def parse_option_pairs(pairs: list[str]) -> dict[str, Any]:
    """`--storage_option key=value` pairs; a value that is JSON (true, 3, {...}) is taken as such, else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RootError(f"--storage_option expects key=value, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def storage_options_json(option_pairs: tuple[tuple[str, Any], ...], values: dict[str, object],
                         environ: dict[str, str]) -> str:
    """STORAGE_OPTIONS (from `values`, else the environment) with the --storage_option pairs over it."""
    configured = values.get("storage_options", environ.get("STORAGE_OPTIONS", ""))
    try:
        options = parse_storage_options(str(configured))
    except ValueError as exc:
        raise RootError(str(exc)) from None
    options.update(dict(option_pairs))
    return json.dumps(options)


def remote_settings(option_pairs: tuple[tuple[str, Any], ...], values: dict[str, object],
                    environ: dict[str, str]) -> dict[str, object]:
    """Settings that make the predictor read a cloud root's URLs itself."""
    return {"storage_read": "direct", "storage_options": storage_options_json(option_pairs, values, environ)}


class RemoteImages:
    """The images under a cloud storage root, placed in COCO by their path under it (not copied)."""

    def __init__(self, root_url: str, storage_options: dict[str, Any]) -> None:
        self.root = label_studio_url(root_url).rstrip("/")
        self._storage = ObjectStorage(storage_options)
        self._sizes: dict[str, tuple[int, int]] = {}

    def list_urls(self, suffixes: set[str]) -> list[str]:
        """Image URLs under the root, sorted; hidden objects and objects in hidden folders are left out."""
        try:
            found = self._storage.find(self.root)
        except StorageError as exc:
            raise RootError(str(exc)) from None
        urls = []
        for url in found:
            name = PurePosixPath(self.name(url))
            if name.suffix.lower() in suffixes and not any(part.startswith(".") for part in name.parts):
                urls.append(url)
        return urls

    def name(self, url: str) -> str:
        """The image's path under the root (its COCO file_name)."""
        return url[len(self.root):].lstrip("/")

    def ls_url(self, url: str) -> str:
        return url

    def note_size(self, url: str, size: tuple[int, int]) -> None:
        """The (width, height) the predictor read, so placing the image needs no second read."""
        self._sizes[url] = size

    def place(self, url: str, task_id: object) -> PlacedImage:
        return PlacedImage(self.name(url), None, "in place", size=self._sizes.pop(url, None))
