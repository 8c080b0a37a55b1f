"""Output file storage behind one small interface, on obstore.

The embedded default is a local directory served by the app itself; a later S3
store implements the same methods. Keys carry a random token, so a file's URL cannot
be derived from its generation id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import obstore
from obstore.store import LocalStore


@dataclass(frozen=True)
class StoredFile:
    key: str
    url: str
    size: int
    content_type: str


@dataclass(frozen=True)
class StorageHealth:
    healthy: bool
    latency_ms: float
    bucket: str
    error: str | None = None


class StorageError(Exception):
    """File storage failed; surfaces to clients as bse_storage_error."""


class FileStore(Protocol):
    async def put(
        self, generation_id: str, index: int, ext: str, data: bytes, content_type: str
    ) -> StoredFile: ...
    async def read(self, key: str) -> bytes | None: ...
    async def delete_generation(self, generation_id: str) -> int: ...
    async def health(self) -> StorageHealth: ...


class LocalFileStore:
    """Files under a directory; URLs point at the app's own ``/files/`` route."""

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._store = LocalStore(str(root.resolve()), mkdir=True)
        self._base = public_base_url.rstrip("/")

    async def put(
        self, generation_id: str, index: int, ext: str, data: bytes, content_type: str
    ) -> StoredFile:
        key = f"{generation_id}/{secrets.token_urlsafe(24)}/{index}.{ext}"
        try:
            await obstore.put_async(self._store, key, data)
        except Exception as exc:
            raise StorageError(str(exc)) from exc
        return StoredFile(key=key, url=f"{self._base}/files/{key}", size=len(data), content_type=content_type)

    async def read(self, key: str) -> bytes | None:
        if ".." in key.split("/"):
            return None
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError(str(exc)) from exc

    async def delete_generation(self, generation_id: str) -> int:
        try:
            items = await obstore.list(self._store, prefix=generation_id).collect_async()
            paths = [item["path"] for item in items]
            if paths:
                await obstore.delete_async(self._store, paths)
        except Exception as exc:
            raise StorageError(str(exc)) from exc
        for sub in sorted((self.root / generation_id).glob("**/*"), reverse=True):
            if sub.is_dir():
                sub.rmdir()
        if (self.root / generation_id).is_dir():
            (self.root / generation_id).rmdir()
        return len(paths)

    async def health(self) -> StorageHealth:
        """A live write, read and delete of a probe object."""
        start = time.perf_counter()
        key = f"_health/{secrets.token_hex(8)}"
        try:
            await obstore.put_async(self._store, key, b"ok")
            data = await (await obstore.get_async(self._store, key)).bytes_async()
            await obstore.delete_async(self._store, key)
            if bytes(data) != b"ok":
                raise StorageError("probe read back different bytes")
        except Exception as exc:
            return StorageHealth(False, round((time.perf_counter() - start) * 1000, 3), "local", str(exc))
        return StorageHealth(True, round((time.perf_counter() - start) * 1000, 3), "local")
