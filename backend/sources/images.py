"""Task images: where a task's image URL may be read from, and decoding it as Label Studio shows it.

Downloads and Local Storage lookups go through label-studio-sdk's `get_local_path`; this module
decides which URLs are allowed at all, confines Local Storage to LOCAL_FILES_DOCUMENT_ROOT, puts a
timeout and a size limit on every download, and refuses decompression bombs before decoding.
"""

from __future__ import annotations

import io
import logging
import posixpath
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import requests
from PIL import ExifTags, Image, ImageOps

from backend.models.lru_folder import FolderBudget
from backend.sources.label_studio import AccessTokens, Credentials
from backend.sources.limited_session import DownloadTooLarge, LimitedSession
from backend.sources.object_storage import ObjectStorage, StorageError
from backend.sources.token_check import refused_download_hint
from backend.sources.url_policy import AddressPolicy, AddressRefused

logger = logging.getLogger(__name__)
# label_studio_sdk logs every download's steps: "`localhost` is not accessible inside of docker containers" for
# any Label Studio on localhost, "Download failed for proxy URL" before its own fallback that then succeeds. A
# download that really fails reaches fetch() as an exception, which the caller logs once, with its task.
logging.getLogger("label_studio_sdk._extensions.label_studio_tools.core.utils.io").setLevel(logging.CRITICAL)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
STRIP_PIXELS = 4_000_000  # decoded pixels converted for numpy at a time
# Pillow keeps a large image in 16 MB blocks by default, small enough for malloc to take them from a thread's
# arena, which keeps them after the image is freed (400 MB more per decoding thread for 100 megapixels):
# blocks of 64 MB are mapped and unmapped with each image.
Image.core.set_block_size(64 * 1024 * 1024)


class ImageError(Exception):
    """A task image cannot be used; the message is safe to log and to show."""


@dataclass(frozen=True)
class TaskImage:
    url: str
    pixels: np.ndarray  # HxWx3 uint8 RGB, EXIF orientation applied

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def url_kind(url: str) -> str:
    """upload | local-files | http | cloud; raises ImageError for anything else (file://, paths...)."""
    if not isinstance(url, str) or not url:
        raise ImageError("the task has no image URL")
    if url.startswith(("/data/upload/", "data/upload/", "/upload/", "upload/", "/storage-data/uploaded/")):
        return "upload"
    if url.startswith("/data/local-files"):
        return "local-files"
    try:
        scheme = urlparse(url).scheme.lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ImageError(f"image URL '{url[:200]}' cannot be parsed") from None
    if scheme in ("http", "https"):
        return "http"
    if scheme in CLOUD_SCHEMES:
        return "cloud"
    raise ImageError(f"image URL '{url[:200]}' is not an http(s), Label Studio upload, local-files or cloud storage URL")


LABEL_STUDIO_PATHS = ("/data/upload/", "/data/local-files", "/storage-data/", "/tasks/", "/api/")


def image_cache_budget(settings) -> FolderBudget:  # noqa: ANN001 - backend.settings.Settings (imports this layer)
    """CACHE_DIR/images kept under IMAGE_CACHE_MAX_GB."""
    return FolderBudget(settings.cache_path / "images", int(settings.image_cache_max_gb * 1e9), "image cache")


def on_label_studio(url: str, kind: str, label_studio: str) -> bool:
    """Is `url` one of Label Studio's own paths (uploads, Local Storage, the storage proxy, cloud presign, API)
    on the Label Studio at `label_studio`? Only those may reach it on a private address; any other absolute
    URL, on its host or not, goes through the URL policy."""
    if not label_studio:
        return False
    if kind != "http":
        return True  # relative paths (and cloud URIs, presigned by /tasks/<id>/presign) go to Label Studio
    parts, own = urlparse(url), urlparse(label_studio)
    same_origin = (parts.scheme.lower(), parts.hostname, parts.port) == (own.scheme.lower(), own.hostname, own.port)
    return same_origin and parts.path.startswith(LABEL_STUDIO_PATHS)


class ImageFetcher:
    """Fetch (with an on-disk cache) and decode task images.

    `address_policy` says which hosts downloads may reach (default: public addresses and Label Studio);
    None lets them reach any address, for the dataset tools that a user runs on their own exports.
    With `storage` (STORAGE_READ=direct), cloud storage URLs are read from the bucket, not presigned.
    """

    def __init__(self, cache_dir: Path, local_files_root: str, timeout: float, max_pixels: int,
                 tokens: AccessTokens, max_download_bytes: int,
                 address_policy: AddressPolicy | None = AddressPolicy(), storage: ObjectStorage | None = None,
                 cache_budget: FolderBudget | None = None) -> None:
        self._cache_dir = cache_dir
        self._cache_budget = cache_budget
        self._local_root = Path(local_files_root).expanduser().resolve() if local_files_root else None
        self._timeout = timeout
        self._max_pixels = max_pixels
        self._tokens = tokens
        self._max_download_bytes = max_download_bytes
        self._address_policy = address_policy
        self._storage = storage

    def fetch(self, url: str, task_id: int | None, credentials: Credentials | None,
              deadline: float = float("inf")) -> Path:
        """Local path of the image behind `url`, downloading it into the cache if needed. A download ends
        within DOWNLOAD_TIMEOUT in all (not per read), and by `deadline` (time.monotonic) if that is sooner."""
        from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

        kind = url_kind(url)
        if kind == "local-files" and self._local_root is not None:
            return self._local_file(url)
        started = time.time()
        if kind == "cloud" and self._storage is not None:
            with _as_image_error():
                return self._in_budget(self._storage.download(url, self._cache_dir, self._max_download_bytes), started)
        if kind in ("upload", "local-files", "cloud") and not (credentials and credentials.hostname and credentials.token):
            raise ImageError(f"cannot download '{url[:200]}': no Label Studio URL and API key "
                             "(set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the model from Label Studio)")
        ends = min(time.monotonic() + self._timeout, deadline)
        label_studio = credentials.hostname if credentials else ""
        trusted = label_studio if credentials and credentials.trusted and on_label_studio(url, kind, label_studio) else None
        guard = self._address_policy.guard(trusted) if self._address_policy else None
        if guard is not None and label_studio and kind != "http":  # before the token goes there (a refresh)
            try:
                guard.check_url(label_studio)
            except AddressRefused as exc:
                raise ImageError(f"refused to download '{url[:200]}' from Label Studio at {label_studio[:200]}, which "
                                 f"an unauthenticated caller on another machine named in /setup: {exc}") from None
            except OSError as exc:
                raise ImageError(f"cannot fetch '{url[:200]}': {type(exc).__name__}: {str(exc)[:200]}") from None
        token = self._access_token(credentials) if credentials and credentials.token else None
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        session = LimitedSession(self._timeout, self._max_download_bytes, guard, ends)
        try:
            if guard is not None and kind == "http":
                guard.check_url(url)  # before the SDK, whose download cache would answer without connecting
            with ls_io.http_session(session), ls_io.local_files_resolver(None):
                path = ls_io.get_local_path(url, cache_dir=str(self._cache_dir),
                                            hostname=credentials.hostname if credentials else None,
                                            access_token=token, task_id=task_id, download_resources=True)
        except AddressRefused as exc:
            raise ImageError(f"refused to download '{url[:200]}': {exc}") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = f": {refused_download_hint(credentials.hostname)}" if status == 401 and kind != "http" else ""
            raise ImageError(f"downloading '{url[:200]}' failed with HTTP {status}{hint}") from None
        except requests.Timeout:
            if ends < deadline or not session.expired:
                raise ImageError(f"downloading '{url[:200]}' timed out after {self._timeout:g} s") from None
            raise ImageError(f"downloading '{url[:200]}' was stopped at the request's deadline") from None
        except DownloadTooLarge as exc:
            raise ImageError(f"downloading '{url[:200]}' was abandoned: {exc}") from None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise ImageError(f"cannot fetch '{url[:200]}': {type(exc).__name__}: {str(exc)[:200]}") from None
        finally:
            session.close()
        return self._in_budget(Path(path), started)

    def _in_budget(self, path: Path, started: float) -> Path:
        if self._cache_budget is not None:
            self._cache_budget.used(path, started)
        return path

    def _access_token(self, credentials: Credentials) -> str:
        try:
            return self._tokens.bearer_or_legacy(credentials)
        except PermissionError as exc:  # Label Studio refused the token, or is unreachable
            raise ImageError(str(exc)) from None

    def _local_file(self, url: str) -> Path:
        values = parse_qs(urlparse(url).query, keep_blank_values=True).get("d")
        relative = posixpath.normpath(values[-1]).lstrip("/") if values and values[-1] else ""
        if not relative:
            raise ImageError(f"local-files URL '{url[:200]}' has no ?d= path")
        try:
            path = (self._local_root / relative).resolve()
            inside = path.is_relative_to(self._local_root)
            found = inside and path.is_file()
        except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
            raise ImageError(f"local-files path '{relative[:200]}' is not a usable file name") from None
        if not inside:
            raise ImageError(f"local-files path '{relative[:200]}' is outside LOCAL_FILES_DOCUMENT_ROOT")
        if not found:
            raise ImageError(f"local file '{relative[:200]}' not found under LOCAL_FILES_DOCUMENT_ROOT")
        return path

    def locate(self, url: str, task_id: int | None, credentials: Credentials | None,
               deadline: float = float("inf")) -> Path | io.BytesIO:
        """The image's bytes, not decoded: a file, or in memory for a bucket read directly (its images
        never fill the disk)."""
        if self._storage is not None and url_kind(url) == "cloud":
            with _as_image_error():
                return io.BytesIO(self._storage.read(url, self._max_download_bytes))
        return self.fetch(url, task_id, credentials, deadline)

    def load(self, url: str, task_id: int | None, credentials: Credentials | None) -> TaskImage:
        return TaskImage(url=url, pixels=self.decode(self.locate(url, task_id, credentials)))

    def pixel_count(self, source: Path | io.BytesIO) -> int:
        """Width x height from the image's header (nothing decoded); ImageError for what cannot be decoded."""
        with self._opened(source) as image:
            return image.size[0] * image.size[1]

    def decode(self, path: Path | io.BytesIO) -> np.ndarray:
        """RGB pixels with the EXIF orientation applied, as Label Studio displays the image."""
        with self._opened(path) as image:
            try:
                return _browser_rgb(_upright(image))
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImageError(f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None

    @contextmanager
    def _opened(self, source: Path | io.BytesIO) -> Iterator[Image.Image]:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:
            image = _pillow_open(source)
        except (Image.UnidentifiedImageError, ImportError):
            raise ImageError(f"cannot decode image: the content is {_content_kind(source)}, not a raster image") from None
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ImageError(f"cannot decode image: {type(exc).__name__}: {str(exc)[:200]}") from None
        with image:
            width, height = image.size
            if width * height > self._max_pixels:
                raise ImageError(f"image is {width}x{height}, more than MAX_IMAGE_PIXELS={self._max_pixels}")
            yield image


def _pillow_open(source: Path | io.BytesIO) -> Image.Image:
    """Pillow's own Image.open: Ultralytics replaces it, once imported, with one that tries to install and
    import a HEIF plugin for every file Pillow cannot identify (and logs about it)."""
    opener = Image.open
    return getattr(sys.modules.get(opener.__module__), "_image_open", opener)(source)


def _upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied; the image itself when it has none (exif_transpose copies it: a 100-megapixel
    image is 400 MB more)."""
    return ImageOps.exif_transpose(image) if image.getexif().get(ExifTags.Base.Orientation, 1) != 1 else image


def _browser_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 as a browser shows the image: 16-bit values / 257, floats 0..1 times 255."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = _pixels(image).astype(np.uint32)  # "I": 16-bit PNGs and TIFFs as Pillow opens some of them
        gray = ((np.minimum(wide, 65535) + 128) // 257).astype(np.uint8)
    elif image.mode == "F":
        gray = (np.clip(np.nan_to_num(_pixels(image)), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    else:
        return _pixels(image, "RGB")
    return np.repeat(gray[:, :, None], 3, axis=2)


def _pixels(image: Image.Image, mode: str | None = None) -> np.ndarray:
    """np.asarray(image.convert(mode)) a strip of rows at a time: whole, a converted copy and the bytes Pillow
    joins for numpy would each cost the image's size again (about 1 GB more for 100 megapixels)."""
    rows = max(1, STRIP_PIXELS // max(1, image.width))

    def strip(top: int) -> np.ndarray:
        part = image.crop((0, top, image.width, min(image.height, top + rows)))
        return np.asarray(part.convert(mode) if mode and part.mode != mode else part)

    first = strip(0)
    if rows >= image.height:
        return first
    pixels = np.empty((image.height, *first.shape[1:]), first.dtype)
    pixels[:rows] = first
    for top in range(rows, image.height, rows):
        pixels[top:top + rows] = strip(top)
    return pixels


def _content_kind(source: Path | io.BytesIO) -> str:
    """What a file that is not an image holds, named by its content type, from its first bytes."""
    try:
        if isinstance(source, io.BytesIO):
            head, size = source.getvalue()[:512], len(source.getvalue())
        else:
            with open(source, "rb") as handle:
                head = handle.read(512)
            size = Path(source).stat().st_size
    except OSError:
        return "unreadable"
    if size == 0:
        return "empty (0 bytes)"
    text = head.lstrip().lower()
    for marker, kind in ((b"<svg", "image/svg+xml"), (b"<!doctype html", "text/html"),
                         (b"<html", "text/html"), (b"<?xml", "application/xml"), (b"{", "application/json"),
                         (b"%pdf", "application/pdf")):
        if text.startswith(marker) or (marker == b"<svg" and marker in text):
            return f"{kind} ({size} bytes)"
    return f"application/octet-stream of an unknown format ({size} bytes)"


@contextmanager
def _as_image_error() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        raise ImageError(str(exc)) from None
