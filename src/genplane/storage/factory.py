"""The file store a deployment's settings name: a local folder or an S3-compatible bucket.

``storage_url`` was checked when the settings loaded, so this only takes it apart.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from genplane.settings import Settings
from genplane.storage.s3 import ObjectFileStore
from genplane.storage.store import FileStore, LocalFileStore


def build_store(settings: Settings) -> FileStore:
    if not settings.storage_url:
        return LocalFileStore(settings.files_dir, settings.public_base_url)
    url = urlsplit(settings.storage_url)
    if url.scheme == "file":
        return LocalFileStore(Path(unquote(url.path)), settings.public_base_url)
    return ObjectFileStore(
        url.netloc,
        url.path.strip("/"),
        settings.public_base_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.resolved_s3_region,
        presign_seconds=settings.storage_presign_seconds,
    )
