"""Output file storage behind one small interface, on obstore.

The embedded default is a local directory; :mod:`genplane.storage.s3` keeps the same
keys in an S3-compatible bucket. Both are obstore stores, so everything but listing
and tidying lives once, in :class:`ObstoreFileStore`. Either way a file's URL is the
app's own ``/files/`` route, so it stays valid whatever serves it. Keys carry a random
token, so a file's URL cannot be derived from its generation id (see
:mod:`genplane.storage.keys` for their shape).

Errors keep two texts apart: :class:`StorageError`'s ``str()`` is a short, stable
summary that may reach tenants; ``detail`` is the library's own text (local paths, a
Rust debug dump) and belongs in the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import obstore
from obstore.store import LocalStore

from genplane.storage.keys import TOKEN_BYTES, is_file_key, is_generation_id, new_file_key

if TYPE_CHECKING:
    from obstore import Attributes, GetOptions
    from obstore.store import ObjectStore

# The health probe's folders: fresh for every probe, never shaped like a generation id.
PROBE_PREFIX = "_health-"
#: How long a canceled put waits for its upload to land before leaving it to the orphan
#: sweep: a stopping worker must not hang on a store that stopped answering.
CANCELED_UPLOAD_WAIT_SECONDS = 10.0


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
    error: str | None = None  # stable, shown to callers
    detail: str | None = None  # the underlying error, for the log only


@dataclass(frozen=True)
class SignedUrl:
    """A URL that reads one file straight from the store, for ``expires_in`` seconds."""

    url: str
    expires_in: int


class StorageError(Exception):
    """File storage failed; surfaces to clients as bse_storage_error.

    ``str(exc)`` is ``summary``, safe to show anyone; ``detail`` is for the log.
    """

    def __init__(self, summary: str, detail: str | None = None) -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail if detail is not None else summary


class FileStore(Protocol):
    async def put(
        self, generation_id: str, index: int, ext: str, data: bytes, content_type: str
    ) -> StoredFile: ...
    async def read(self, key: str) -> bytes | None: ...
    async def size(self, key: str) -> int | None: ...
    async def open(
        self, key: str, start: int, stop: int, chunk_bytes: int
    ) -> AsyncIterator[bytes] | None: ...
    async def delete_generation(self, generation_id: str) -> int: ...
    async def delete_files(self, keys: Collection[str]) -> int: ...
    async def delete_except(self, generation_id: str, keep_keys: Collection[str]) -> int: ...
    async def generation_ids(self, after: str | None, limit: int) -> list[str]: ...
    async def health(self) -> StorageHealth: ...
    async def presigned_url(self, key: str) -> SignedUrl | None:
        """Where a client may fetch the file directly; None: the app serves it itself."""
        ...


class ObstoreFileStore(ABC):
    """The file store's behaviour over any obstore store; subclasses say where files live,
    how generation folders are listed and what is left to tidy after a delete."""

    def __init__(self, store: ObjectStore, public_base_url: str, bucket: str) -> None:
        self._store = store
        self._base = public_base_url.rstrip("/")
        self._bucket = bucket  # what health reports: never an endpoint or a credential

    # -- writing and reading ---------------------------------------------------------------
    async def put(
        self, generation_id: str, index: int, ext: str, data: bytes, content_type: str
    ) -> StoredFile:
        try:
            key = new_file_key(generation_id, index, ext)
        except ValueError as exc:
            raise StorageError("Writing a file to storage failed.", str(exc)) from exc
        await self._settled_write(key, data, self._attributes(content_type))
        return StoredFile(key=key, url=f"{self._base}/files/{key}", size=len(data), content_type=content_type)

    async def _settled_write(self, key: str, data: bytes, attributes: Attributes | None) -> None:
        """A write that leaves no file when canceled: a canceled await does not stop an upload
        already on the wire, which could land after whoever cleans up the generation has looked
        (a job taken over by another worker is canceled mid-upload), so wait for it and remove it."""
        write = asyncio.ensure_future(self._write(key, data, attributes))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # failed or too slow: the sweep's to find
                await asyncio.wait_for(write, CANCELED_UPLOAD_WAIT_SECONDS)
                await self._remove(key)
            raise

    def _attributes(self, content_type: str) -> Attributes | None:
        """What the object itself records (a local store records nothing)."""
        return None

    async def _write(self, key: str, data: bytes, attributes: Attributes | None = None) -> None:
        """The one write path: outputs and the health probe both come through here."""
        try:
            await obstore.put_async(self._store, key, data, attributes=attributes)
        except Exception as exc:
            raise StorageError("Writing a file to storage failed.", str(exc)) from exc

    async def read(self, key: str) -> bytes | None:
        """A whole file, or None when ``key`` is not a stored file (malformed keys included)."""
        if not is_file_key(key):
            return None
        return await self._read(key)

    async def _read(self, key: str) -> bytes | None:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError("Reading a stored file failed.", str(exc)) from exc

    async def size(self, key: str) -> int | None:
        """The file's size in bytes; None when ``key`` is not a stored file."""
        if not is_file_key(key):
            return None
        try:
            meta = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError("Reading a stored file failed.", str(exc)) from exc
        return int(meta["size"])

    async def open(self, key: str, start: int, stop: int, chunk_bytes: int) -> AsyncIterator[bytes] | None:
        """Bytes ``start`` to ``stop`` (exclusive) in chunks of about ``chunk_bytes``, read as
        they are sent, so a large file never sits in memory whole; None when it is gone."""
        if not is_file_key(key) or not 0 <= start < stop:
            return None
        options: GetOptions = {"range": (start, stop)}
        try:
            result = await obstore.get_async(self._store, key, options=options)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError("Reading a stored file failed.", str(exc)) from exc
        return _chunks(result.stream(min_chunk_size=chunk_bytes))

    # -- deleting --------------------------------------------------------------------------
    async def delete_generation(self, generation_id: str) -> int:
        return await self.delete_except(generation_id, ())

    async def delete_files(self, keys: Collection[str]) -> int:
        """Delete exactly these files (an attempt's own outputs that no record took); returns
        how many were there."""
        deleted = 0
        for key in keys:
            if is_file_key(key) and await self._remove(key):
                deleted += 1
        return deleted

    async def delete_except(self, generation_id: str, keep_keys: Collection[str]) -> int:
        """Delete the generation's files that are not in ``keep_keys``; returns how many.

        A file already gone counts as deleted by someone else (the worker and the sweep may
        both clean one generation), not as an error (S3 answers such a delete as done, so
        there it may count twice).
        """
        if not is_generation_id(generation_id):
            return 0
        keep = set(keep_keys)
        try:
            items = await obstore.list(self._store, prefix=generation_id).collect_async()
        except Exception as exc:
            raise StorageError("Deleting stored files failed.", str(exc)) from exc
        deleted = 0
        for item in items:
            if item["path"] not in keep and await self._remove(item["path"]):
                deleted += 1
        await self._tidy(generation_id)
        return deleted

    async def _tidy(self, folder: str) -> None:
        """Called once a top-level folder's files are deleted; object stores keep no folders."""
        return None

    # -- listing ---------------------------------------------------------------------------
    @abstractmethod
    async def generation_ids(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` generation ids that have stored files, in order, after ``after``."""

    # -- direct reads ----------------------------------------------------------------------
    async def presigned_url(self, key: str) -> SignedUrl | None:
        return None

    # -- health ----------------------------------------------------------------------------
    async def health(self) -> StorageHealth:
        """A live write, read and delete of a probe, shaped and written as a generation's
        output is: a fresh top-level folder, a nested key, the same write path."""
        start = time.perf_counter()
        folder = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        key = f"{folder}/{secrets.token_urlsafe(TOKEN_BYTES)}/0.bin"
        try:
            await self._probe(key)
        except StorageError as exc:
            return StorageHealth(False, _ms_since(start), self._bucket, exc.summary, exc.detail)
        finally:
            await self._tidy(folder)
        return StorageHealth(True, _ms_since(start), self._bucket)

    async def _probe(self, key: str) -> None:
        await self._write(key, b"ok")
        try:
            data = await self._read(key)
        finally:
            await self._remove(key)
        if data != b"ok":
            raise StorageError("The storage probe read back different bytes.")

    async def _remove(self, key: str) -> bool:
        """Delete one file; False when it was already gone."""
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StorageError("Deleting stored files failed.", str(exc)) from exc
        return True


class LocalFileStore(ObstoreFileStore):
    """Files under a directory, served by the app's ``/files/`` route."""

    def __init__(self, root: Path, public_base_url: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(LocalStore(str(root.resolve()), mkdir=True), public_base_url, "local")

    async def _tidy(self, folder: str) -> None:
        """Deleting files leaves their folders behind; listing reads folders, so they go too."""
        await asyncio.to_thread(_prune_empty_dirs, self.root / folder)

    async def generation_ids(self, after: str | None, limit: int) -> list[str]:
        try:
            return await asyncio.to_thread(_first_generation_dirs, self.root, after, limit)
        except OSError as exc:
            raise StorageError("Listing stored files failed.", str(exc)) from exc


async def _chunks(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:
        raise StorageError("Reading a stored file failed.", str(exc)) from exc


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _prune_empty_dirs(top: Path) -> None:
    """Remove ``top`` and the folders under it that are empty (a file still there, or one
    written meanwhile, keeps its folder)."""
    if not top.is_dir() or top.is_symlink():
        return
    try:
        subs = [p for p in top.glob("**/*") if p.is_dir()]
    except OSError:  # a concurrent delete of the same generation removed part of the tree
        subs = []
    for sub in sorted(subs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _first_generation_dirs(root: Path, after: str | None, limit: int) -> list[str]:
    """The ``limit`` smallest generation-id folder names above ``after``, in memory bounded by
    ``limit`` however many folders there are."""
    with os.scandir(root) as entries:
        names = (
            e.name
            for e in entries
            if (after is None or e.name > after) and is_generation_id(e.name) and e.is_dir()
        )
        return heapq.nsmallest(limit, names)
