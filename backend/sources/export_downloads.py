"""Downloading a Label Studio export's images with the backend's ImageFetcher, for the converters
(formats/export_images.py finds the images on disk and asks this for the others): uploads and
Local Storage files with the API key, cloud storage presigned by Label Studio, http(s) URLs.
"""

from __future__ import annotations

from pathlib import Path

from formats.export_images import DownloadError, ImageSources


class ExportDownloader:
    """Downloads into `download_dir` (the file is the caller's to move). The export is the user's own
    data, so there is no download size limit and no address policy (its URLs may name the user's own
    storage on a private network); the files are never decoded here, so no pixel limit either."""

    def __init__(self, sources: ImageSources, download_dir: Path) -> None:
        # Imported here: requests and the SDK are loaded only when an image has to be downloaded.
        from backend.sources.images import ImageFetcher
        from backend.sources.label_studio import AccessTokens, Credentials

        unlimited = 1 << 62
        self._fetcher = ImageFetcher(download_dir, "", sources.timeout, unlimited, AccessTokens(timeout=sources.timeout),
                                     unlimited, address_policy=None)
        self._credentials = Credentials(sources.ls_url.rstrip("/"), sources.api_key) if sources.ls_url else None

    def __call__(self, url: str, task_id: object) -> Path:
        from backend.sources.images import ImageError

        try:
            return Path(self._fetcher.fetch(url, task_id if isinstance(task_id, int) else None, self._credentials))
        except (ImageError, PermissionError, OSError) as exc:
            raise DownloadError(str(exc)) from None

