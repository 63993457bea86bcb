"""Finding the image behind a Label Studio task URL: on disk where Label Studio keeps it, in a
folder the user names, or downloaded by the `downloader` the caller gives (the command lines give
backend/sources/export_downloads.py, the backend's ImageFetcher).

URL forms: `/data/upload/<project>/<file>` (files uploaded to Label Studio, kept in its media
folder), `/data/local-files/?d=<path>` (Local Storage under LOCAL_FILES_DOCUMENT_ROOT), http(s),
cloud storage (s3://, gs://, azure-blob://, presigned by Label Studio) and plain file paths.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
# Label Studio prefixes uploaded file names with 8 hex digits of a uuid4 and a dash.
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def default_ls_data_dir() -> Path:
    """Label Studio's data directory as Label Studio computes it: LABEL_STUDIO_BASE_DATA_DIR (or
    HEARTEX_/plain BASE_DATA_DIR), else the platform's user data dir for "label-studio"
    (~/.local/share/label-studio on Linux). Uploaded files live under <data dir>/media/upload."""
    for name in ("LABEL_STUDIO_BASE_DATA_DIR", "HEARTEX_BASE_DATA_DIR", "BASE_DATA_DIR"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    from appdirs import user_data_dir

    return Path(user_data_dir(appname="label-studio"))


def default_local_files_root() -> Path | None:
    for name in ("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    return None


@dataclass(frozen=True)
class ImageKey:
    """Where a URL points: its kind and the path that identifies the file within that kind."""

    kind: str  # upload | local-files | http | cloud | path
    relative: str  # upload/<project>/<file>, the ?d= path, the URL path, or the file path

    @property
    def file_name(self) -> str:
        """Name under the output's images/ folder: the Local Storage path keeps its folders (two
        folders may hold the same name); other kinds use the file's base name."""
        if self.kind == "local-files":
            return self.relative
        return PurePosixPath(self.relative).name or "image"


def image_key(url: str) -> ImageKey | None:
    """Classify a task image URL; None for something that is not an image location."""
    parsed = urlparse(url)
    if url.startswith("/storage-data/uploaded/"):
        filepath = parse_qs(parsed.query).get("filepath")
        return ImageKey("upload", _safe_relative(filepath[-1])) if filepath and _safe_relative(filepath[-1]) else None
    for prefix in ("/data/upload/", "data/upload/", "/upload/", "upload/"):
        if url.startswith(prefix):
            relative = _safe_relative("upload/" + unquote(parsed.path[len(prefix):]).lstrip("/"))
            return ImageKey("upload", relative) if relative else None
    if url.startswith("/data/local-files"):
        values = parse_qs(parsed.query, keep_blank_values=True).get("d")
        relative = _safe_relative(values[-1]) if values else ""
        return ImageKey("local-files", relative) if relative else None
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return ImageKey("http", unquote(parsed.path))
    if scheme in ("s3", "gs", "azure-blob"):
        return ImageKey("cloud", parsed.netloc + unquote(parsed.path))
    if scheme in ("", "file") and url:
        return ImageKey("path", unquote(parsed.path) if scheme == "file" else url)
    return None


def _safe_relative(path: str) -> str:
    """A relative POSIX path without '..' escapes; '' when it has none left."""
    normalized = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    return "" if normalized in (".", "") or normalized.startswith("..") else normalized


def upload_original_name(file_name: str) -> str | None:
    match = UPLOAD_PREFIX.match(file_name)
    return match.group(1) if match else None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as Label Studio shows the image (EXIF rotation applied), from the header only;
    raises OSError for a file that is not a readable image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    # ImportError: once Ultralytics is imported, Image.open tries to import a HEIF plugin for
    # files Pillow does not know, and that import can fail.
    except (UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError, ImportError) as exc:
        raise OSError(f"not a readable image: {exc}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


MISSING_NOT_AN_IMAGE_URL = "not an image URL or path"
MISSING_NOT_ON_DISK = "image not found on disk"
MISSING_DOWNLOAD_FAILED = "image download failed"


class DownloadError(Exception):
    """A download failed; the message says why."""


# (url, task id) -> the downloaded file, which the caller may move; raises DownloadError or OSError.
Downloader = Callable[[str, object], Path]


@dataclass(frozen=True)
class LocatedImage:
    path: Path | None  # None when the image could not be found
    downloaded: bool  # the file is a download of ours (move it, don't copy it)
    problem: str | None  # why it is missing, in detail
    reason: str | None = None  # why it is missing, one of the MISSING_* kinds (for counting)


@dataclass(frozen=True)
class ImageSources:
    """Where to look for task images, in this order: `image_root` (a folder holding the images by
    name or by their Label Studio path), Label Studio's media folder (uploads) and Local Storage root
    on this machine, then a download (http(s) URLs always; uploads, Local Storage and cloud files
    when a Label Studio URL and API key are given) by `downloader`, made for the download folder."""

    ls_data_dir: Path
    local_files_root: Path | None = None
    image_root: Path | None = None
    ls_url: str = ""
    api_key: str = ""
    timeout: float = 30.0
    downloader: Callable[[ImageSources, Path], Downloader] | None = None  # None: nothing is downloaded

    def local_candidates(self, key: ImageKey) -> list[Path]:
        candidates = []
        if self.image_root is not None:
            name = PurePosixPath(key.relative).name
            candidates += [self.image_root / key.relative, self.image_root / name]
            original = upload_original_name(name)
            if original:
                candidates.append(self.image_root / original)
        if key.kind == "upload":
            candidates.append(self.ls_data_dir / "media" / key.relative)
        elif key.kind == "local-files" and self.local_files_root is not None:
            candidates.append(self.local_files_root / key.relative)
        elif key.kind == "path":
            candidates.append(Path(key.relative).expanduser())
        return candidates

    def can_download(self, key: ImageKey) -> bool:
        if self.downloader is None:
            return False
        return key.kind == "http" or (key.kind in ("upload", "local-files", "cloud") and bool(self.ls_url and self.api_key))


class ImageLocator:
    """Finds task images locally or downloads them into `download_dir`."""

    def __init__(self, sources: ImageSources, download_dir: Path) -> None:
        self._sources = sources
        self._download_dir = download_dir
        self._downloader: Downloader | None = None

    def locate(self, url: str, key: ImageKey, task_id: object) -> LocatedImage:
        for candidate in self._sources.local_candidates(key):
            if candidate.is_file():
                return LocatedImage(candidate, downloaded=False, problem=None)
        if not self._sources.can_download(key):
            hint = {"upload": f"not in {self._sources.ls_data_dir / 'media'} (use --ls_data_dir, --image_root, or --ls_url with --api_key)",
                    "local-files": "not under the Local Storage root (use --local_files_root, --image_root, or --ls_url with --api_key)",
                    "cloud": "cloud storage files need --ls_url and --api_key",
                    "http": "not on disk, and this conversion downloads nothing",
                    "path": "no such file"}[key.kind]
            return LocatedImage(None, downloaded=False, problem=hint, reason=MISSING_NOT_ON_DISK)
        return self._download(url, task_id)

    def _download(self, url: str, task_id: object) -> LocatedImage:
        if self._downloader is None:
            self._downloader = self._sources.downloader(self._sources, self._download_dir)
        try:
            path = self._downloader(url, task_id)
        except (DownloadError, OSError) as exc:
            return LocatedImage(None, downloaded=False, problem=str(exc), reason=MISSING_DOWNLOAD_FAILED)
        return LocatedImage(path, downloaded=True, problem=None)


@dataclass(frozen=True)
class PlacedImage:
    file_name: str  # the COCO file_name / name under images/
    path: Path | None  # the file, when it is there
    how: str  # copied | downloaded | in place | missing
    problem: str | None = None  # why it is missing, in detail
    reason: str | None = None  # why it is missing, one of the MISSING_* kinds
    size: tuple[int, int] | None = None  # (width, height) when known without the file (an image in a bucket)


class ExportImages:
    """Puts each task's image into `images_dir` under a unique name: copied from disk or moved
    from the download cache. An image used by several tasks is stored once."""

    def __init__(self, locator: ImageLocator, images_dir: Path) -> None:
        self._locator = locator
        self._images_dir = images_dir
        self._by_url: dict[str, PlacedImage] = {}
        self._taken: set[str] = set()

    def place(self, url: str, task_id: object) -> PlacedImage:
        if url in self._by_url:
            placed = self._by_url[url]
            return replace(placed, how="shared") if placed.path else placed
        key = image_key(url)
        if key is None:
            return PlacedImage("", None, "missing", f"'{url[:200]}' is not an image URL or path", MISSING_NOT_AN_IMAGE_URL)
        file_name = self._unique_name(key.file_name, task_id)
        located = self._locator.locate(url, key, task_id)
        if located.path is None:
            placed = PlacedImage(file_name, None, "missing", located.problem, located.reason)
        else:
            target = self._images_dir / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            if located.downloaded:
                shutil.move(located.path, target)
            else:
                shutil.copy2(located.path, target)
            placed = PlacedImage(file_name, target, "downloaded" if located.downloaded else "copied")
        self._by_url[url] = placed
        return placed

    def _unique_name(self, name: str, task_id: object) -> str:
        stem, dot, suffix = name.rpartition(".")
        if not dot:
            stem, suffix = name, ""
        candidate, counter = name, 0
        while candidate in self._taken:
            tag = f"-task{task_id}" + (f"-{counter}" if counter else "")
            candidate = f"{stem}{tag}.{suffix}" if dot else f"{stem}{tag}"
            counter += 1
        self._taken.add(candidate)
        return candidate
