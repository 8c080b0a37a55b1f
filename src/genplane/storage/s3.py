"""Output files in an S3-compatible bucket (AWS S3, MinIO, R2), through obstore.

The keys are the local store's, under an optional prefix, and so are the URLs: a record's
``/files/`` URL stays valid whichever process serves it, and with presigning on that route
only checks the key and redirects to the bucket. Credentials never pass through here:
obstore reads the usual AWS environment variables (or an instance or task role) itself,
so they reach no setting, log line or health answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.store import S3Store

from genplane.storage.keys import is_file_key, is_generation_id
from genplane.storage.store import ObstoreFileStore, SignedUrl, StorageError

if TYPE_CHECKING:
    from obstore import Attributes, GetOptions
    from obstore.store import ClientConfig, RetryConfig, S3Config

# object_store retries for up to three minutes by default: a dead endpoint would hold a
# health probe, a job or a tenant's download that long. Each request stays short anyway
# (uploads go multipart above 5 MB, downloads are one ranged GET per chunk), so the
# default 30 s per request is kept.
CONNECT_TIMEOUT = timedelta(seconds=5)
RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=15)}
LIST_PAGE = 1000  # S3's own page size: one ListObjectsV2 request per page


class ObjectFileStore(ObstoreFileStore):
    """Files in ``bucket`` under ``prefix``; ``config`` adds S3 settings over the environment's
    (tests give credentials this way, a deployment leaves it out)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        public_base_url: str,
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        presign_seconds: int = 0,
        config: S3Config | None = None,
    ) -> None:
        options: S3Config = {"region": region}
        if endpoint_url:
            options["endpoint"] = endpoint_url
        options.update(config or {})
        client: ClientConfig = {"connect_timeout": CONNECT_TIMEOUT}
        if endpoint_url.startswith("http://"):  # the operator named a plain-HTTP endpoint (MinIO, tests)
            client["allow_http"] = True
        self._s3 = S3Store(
            bucket, prefix=prefix or None, config=options, client_options=client, retry_config=RETRY
        )
        super().__init__(self._s3, public_base_url, bucket)
        self._presign_seconds = presign_seconds

    def _attributes(self, content_type: str) -> Attributes | None:
        """A presigned GET is answered by the bucket, with the type the object carries."""
        return {"Content-Type": content_type}

    async def open(self, key: str, start: int, stop: int, chunk_bytes: int) -> AsyncIterator[bytes] | None:
        """One ranged GET per chunk rather than one long GET: each request ends as soon as its
        chunk is read, so a client reading slowly never holds a request past its timeout,
        and a download keeps about one chunk in memory. None when the file is gone."""
        if not is_file_key(key) or not 0 <= start < stop or chunk_bytes < 1:
            return None
        first = await self._range(key, start, min(stop, start + chunk_bytes))
        if first is None:
            return None
        return self._rest(key, first, start + len(first), stop, chunk_bytes)

    async def _rest(
        self, key: str, first: bytes, position: int, stop: int, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        yield first
        while position < stop:
            chunk = await self._range(key, position, min(stop, position + chunk_bytes))
            if not chunk:  # deleted, or shorter than its size said, after the response began
                raise StorageError("Reading a stored file failed.", f"{key} ended at byte {position}")
            yield chunk
            position += len(chunk)

    async def _range(self, key: str, start: int, stop: int) -> bytes | None:
        options: GetOptions = {"range": (start, stop)}
        try:
            result = await obstore.get_async(self._s3, key, options=options)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StorageError("Reading a stored file failed.", str(exc)) from exc

    async def generation_ids(self, after: str | None, limit: int) -> list[str]:
        """Read from one recursive listing that starts after ``after``: S3 lists keys in
        ascending order, so the first ``limit`` distinct folders are the answer and the
        listing stops there, however large the bucket."""
        ids: set[str] = set()
        if limit < 1:
            return []
        try:
            async for page in obstore.list(self._s3, offset=after, chunk_size=LIST_PAGE):
                for item in page:
                    folder = item["path"].partition("/")[0]
                    if (after is None or folder > after) and is_generation_id(folder):
                        ids.add(folder)
                        if len(ids) == limit:
                            return sorted(ids)
        except Exception as exc:
            raise StorageError("Listing stored files failed.", str(exc)) from exc
        return sorted(ids)

    async def presigned_url(self, key: str) -> SignedUrl | None:
        """A fresh GET URL for the file when presigning is on, signed here: the bucket is not asked."""
        if self._presign_seconds < 1 or not is_file_key(key):
            return None
        expires = timedelta(seconds=self._presign_seconds)
        try:
            url = await obstore.sign_async(self._s3, "GET", key, expires)
        except Exception as exc:
            raise StorageError("Signing a stored file's URL failed.", str(exc)) from exc
        return SignedUrl(url, self._presign_seconds)
