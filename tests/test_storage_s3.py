"""Outputs in an S3-compatible bucket (moto's server on loopback): the store, the /files/
route's presigned redirects, the settings that pick the store, and a generation end to end."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest
from obstore.store import S3Store
from pydantic import ValidationError

from genplane.settings import Settings
from genplane.storage import store as store_module
from genplane.storage.factory import build_store
from genplane.storage.s3 import ObjectFileStore
from genplane.storage.store import PROBE_PREFIX, LocalFileStore, StorageError

from .conftest import S3_CREDENTIALS, Caller, Harness

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(300)


def gid() -> str:
    return str(uuid.uuid4())


def bucket_store(endpoint: str, bucket: str) -> S3Store:
    """The bucket as it is, prefix and all, read without the code under test."""
    return S3Store(
        bucket, endpoint=endpoint, region="us-east-1", client_options={"allow_http": True}, **S3_CREDENTIALS
    )


async def bucket_keys(endpoint: str, bucket: str, prefix: str | None = None) -> set[str]:
    items = await obstore.list(bucket_store(endpoint, bucket), prefix=prefix).collect_async()
    return {item["path"] for item in items}


@pytest.fixture
def make_store(moto_endpoint: str, s3_bucket: str) -> Callable[..., ObjectFileStore]:
    def make(bucket: str = s3_bucket, prefix: str = "out/puts", **kw: Any) -> ObjectFileStore:
        return ObjectFileStore(
            bucket, prefix, "http://testserver", endpoint_url=moto_endpoint, config=S3_CREDENTIALS, **kw
        )

    return make


@pytest.fixture
def store(make_store: Callable[..., ObjectFileStore]) -> ObjectFileStore:
    return make_store()


# -- the store ---------------------------------------------------------------------------------------


async def test_put_read_size_and_ranged_open(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    g = gid()
    f = await store.put(g, 0, "mp4", data, "video/mp4")
    assert f.key.startswith(f"{g}/") and f.key.endswith("/0.mp4")
    assert f.url == f"http://testserver/files/{f.key}" and f.size == len(data)
    # Under the prefix in the bucket, typed for whoever reads it straight from there.
    assert await bucket_keys(moto_endpoint, s3_bucket) == {f"out/puts/{f.key}"}
    raw = await obstore.get_async(bucket_store(moto_endpoint, s3_bucket), f"out/puts/{f.key}")
    assert raw.attributes.get("Content-Type") == "video/mp4"

    assert await store.read(f.key) == data
    assert await store.size(f.key) == len(data)
    chunk = 1024 * 1024
    for start, stop in [(0, len(data)), (0, 1), (5, 6), (1000, 2 * chunk + 17), (len(data) - 3, len(data))]:
        chunks = await store.open(f.key, start, stop, chunk)
        assert chunks is not None
        parts = [part async for part in chunks]
        assert b"".join(parts) == data[start:stop], (start, stop)
        assert len(parts) == -(-(stop - start) // chunk) and max(map(len, parts)) <= chunk, (start, stop)


async def test_missing_and_malformed_keys_are_not_files(store: ObjectFileStore) -> None:
    f = await store.put(gid(), 0, "png", PNG, "image/png")
    missing = f"{gid()}/{'A' * 32}/0.png"
    for key in (missing, "../x", f.key + "/", f"{PROBE_PREFIX}0/x/0.bin"):
        assert await store.read(key) is None, key
        assert await store.size(key) is None, key
        assert await store.open(key, 0, 1, 10) is None, key
    assert await store.open(f.key, 5, 5, 10) is None  # an empty range


async def test_a_file_deleted_while_it_streams_ends_the_stream_with_a_storage_error(
    store: ObjectFileStore,
) -> None:
    g = gid()
    f = await store.put(g, 0, "bin", os.urandom(4000), "application/octet-stream")
    chunks = await store.open(f.key, 0, 4000, 1000)
    assert chunks is not None
    assert len(await anext(chunks)) == 1000
    assert await store.delete_generation(g) == 1
    with pytest.raises(StorageError) as caught:
        await anext(chunks)
    assert str(caught.value) == "Reading a stored file failed."


async def test_delete_generation_removes_only_that_generations_objects(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str
) -> None:
    g, other = gid(), gid()
    for index in range(3):
        await store.put(g, index, "png", PNG, "image/png")
    kept = await store.put(other, 0, "png", PNG, "image/png")
    assert await store.delete_generation(g) == 3
    assert await bucket_keys(moto_endpoint, s3_bucket) == {f"out/puts/{kept.key}"}
    assert await store.delete_generation(g) == 0
    assert await store.delete_generation("not-a-generation") == 0
    assert await store.read(kept.key) == PNG


async def test_delete_except_keeps_the_listed_keys(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str
) -> None:
    g = gid()
    files = [await store.put(g, i, "png", PNG, "image/png") for i in range(3)]
    assert await store.delete_except(g, [files[1].key]) == 2
    assert await bucket_keys(moto_endpoint, s3_bucket) == {f"out/puts/{files[1].key}"}
    assert await store.read(files[1].key) == PNG
    assert await store.read(files[0].key) is None


async def test_delete_files_removes_exactly_those_keys(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str
) -> None:
    g = gid()
    files = [await store.put(g, i, "png", PNG, "image/png") for i in range(3)]
    assert await store.delete_files([files[0].key, files[2].key, "../not-a-key"]) == 2
    assert await bucket_keys(moto_endpoint, s3_bucket) == {f"out/puts/{files[1].key}"}


async def test_a_canceled_put_leaves_no_file_even_when_the_upload_lands_after_the_cancel(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canceled await does not stop a request already sent: the object can land afterwards
    (obstore's upload runs on its own runtime). The put waits for it and removes it."""
    original = store._write
    started, release = asyncio.Event(), asyncio.Event()
    uploads: list[asyncio.Future[None]] = []

    async def on_the_wire(key: str, data: bytes, attributes: Any = None) -> None:
        async def upload() -> None:
            await release.wait()
            await original(key, data, attributes)

        uploads.append(asyncio.ensure_future(upload()))
        started.set()
        await asyncio.shield(uploads[-1])

    monkeypatch.setattr(store, "_write", on_the_wire)
    g = gid()
    put = asyncio.create_task(store.put(g, 0, "png", PNG, "image/png"))
    await asyncio.wait_for(started.wait(), 10)
    put.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await put
    await uploads[0]
    assert await bucket_keys(moto_endpoint, s3_bucket, prefix=f"out/puts/{g}") == set()


async def test_a_canceled_put_does_not_wait_forever_for_a_store_that_stopped_answering(
    store: ObjectFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopping worker cancels its jobs: a hung upload must not hold the stop up (whatever
    lands later is the orphan sweep's)."""
    started = asyncio.Event()

    async def hung_write(key: str, data: bytes, attributes: Any = None) -> None:
        started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(store, "_write", hung_write)
    monkeypatch.setattr(store_module, "CANCELED_UPLOAD_WAIT_SECONDS", 0.2)
    put = asyncio.create_task(store.put(gid(), 0, "png", PNG, "image/png"))
    await asyncio.wait_for(started.wait(), 10)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(put, 10)


async def test_generation_ids_pages_in_order_within_the_prefix(
    make_store: Callable[..., ObjectFileStore], moto_endpoint: str, s3_bucket: str
) -> None:
    store = make_store(prefix="mine")
    neighbour = make_store(prefix="minefield")  # shares the name's start, not the folder
    ids = sorted(gid() for _ in range(5))
    for g in ids:
        await store.put(g, 0, "png", PNG, "image/png")
    await store.put(ids[2], 1, "png", PNG, "image/png")  # two files, still one id
    await neighbour.put(gid(), 0, "png", PNG, "image/png")
    raw = bucket_store(moto_endpoint, s3_bucket)
    for junk in (f"mine/{PROBE_PREFIX}0123/x/0.bin", "mine/notes.txt", f"mine/{ids[0].upper()}/x/0.png"):
        await obstore.put_async(raw, junk, b"x")

    assert await store.generation_ids(None, 2) == ids[:2]
    assert await store.generation_ids(ids[1], 2) == ids[2:4]
    assert await store.generation_ids(ids[3], 2) == ids[4:]
    assert await store.generation_ids(ids[4], 2) == []
    assert await store.generation_ids(None, 100) == ids
    assert await store.generation_ids(None, 0) == []
    assert len(await neighbour.generation_ids(None, 100)) == 1


async def test_health_probes_the_bucket_and_leaves_nothing(
    store: ObjectFileStore, moto_endpoint: str, s3_bucket: str
) -> None:
    h = await store.health()
    assert h.healthy and h.error is None and h.detail is None
    assert h.bucket == s3_bucket
    assert h.latency_ms > 0
    assert await bucket_keys(moto_endpoint, s3_bucket) == set()


async def test_a_missing_bucket_is_unhealthy_and_its_detail_stays_out_of_the_error(
    make_store: Callable[..., ObjectFileStore], moto_endpoint: str
) -> None:
    missing = f"genplane-missing-{uuid.uuid4().hex[:12]}"
    store = make_store(bucket=missing)
    h = await store.health()
    assert not h.healthy
    assert h.bucket == missing
    assert h.error == "Writing a file to storage failed."
    assert h.detail and "NoSuchBucket" in h.detail and moto_endpoint in h.detail
    for secret in (h.detail, moto_endpoint, missing, S3_CREDENTIALS["secret_access_key"]):
        assert secret not in h.error
    with pytest.raises(StorageError) as caught:
        await store.put(gid(), 0, "png", PNG, "image/png")
    assert str(caught.value) == "Writing a file to storage failed." and moto_endpoint in caught.value.detail


async def test_presigning_is_off_unless_asked(make_store: Callable[..., ObjectFileStore]) -> None:
    store = make_store()
    f = await store.put(gid(), 0, "png", PNG, "image/png")
    assert await store.presigned_url(f.key) is None
    signed = await make_store(presign_seconds=60).presigned_url(f.key)
    assert signed is not None and signed.expires_in == 60 and "X-Amz-Signature=" in signed.url


# -- through the app -------------------------------------------------------------------------------


async def test_files_redirect_to_a_presigned_url_when_asked(
    harness_factory: Callable[..., Any], s3_settings: dict[str, Any], moto_endpoint: str
) -> None:
    h: Harness = await harness_factory(run_worker=False, storage_presign_seconds=600, **s3_settings)
    f = await h.services.store.put(gid(), 0, "png", PNG, "image/png")
    path = httpx.URL(f.url).path
    assert path == f"/files/{f.key}"  # the record's URL is the app's, whatever serves it

    r = await h.client.get(path)
    assert r.status_code == 307, r.text
    assert r.headers["cache-control"] == "private, max-age=300"
    location = r.headers["location"]
    assert location.startswith(f"{moto_endpoint}/") and "X-Amz-Signature=" in location
    async with httpx.AsyncClient() as direct:  # the bucket itself, as a client follows it
        got = await direct.get(location)
        ranged = await direct.get(location, headers={"Range": "bytes=2-5"})
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"
    assert ranged.status_code == 206 and ranged.content == PNG[2:6]

    head = await h.client.head(path)  # HEAD is still answered by the app
    assert head.status_code == 200 and head.headers["content-length"] == str(len(PNG))
    # Nothing is signed for a file that is not there.
    assert (await h.client.get(f"/files/{gid()}/{'A' * 32}/0.png")).status_code == 404
    assert (await h.client.get("/files/_health-1/x/0.bin")).status_code == 404


async def test_a_generation_stored_in_s3_end_to_end(
    harness_factory: Callable[..., Any], s3_settings: dict[str, Any], moto_endpoint: str, s3_bucket: str
) -> None:
    h: Harness = await harness_factory(**s3_settings)
    assert isinstance(h.services.store, ObjectFileStore)
    caller: Caller = await h.caller()
    r = await caller.create_image({"generation_prompt": "a fox", "generation_output_number": 2})
    assert r.status_code == 200, r.text
    g = r.json()["data"]["generation_id"]
    record = await caller.wait(g)
    assert record["generation_status"] == "succeeded", record
    urls = record["generation_output_file"]
    assert len(urls) == 2

    raw = bucket_store(moto_endpoint, s3_bucket)
    keys = await bucket_keys(moto_endpoint, s3_bucket, f"outputs/{g}")
    assert keys == {"outputs/" + httpx.URL(u).path.removeprefix("/files/") for u in urls}
    for url in urls:
        assert url.startswith("http://testserver/files/")
        served = await caller.client.get(url)
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        key = "outputs/" + httpx.URL(url).path.removeprefix("/files/")
        assert served.content == bytes(await (await obstore.get_async(raw, key)).bytes_async())

    health = await caller.get("/v1/health/storage")
    assert health.json()["data"]["healthy"] is True and health.json()["data"]["bucket"] == s3_bucket

    deleted = await caller.delete(f"/v1/content/{g}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"] == {"generation_id": g, "files_deleted": 2}
    assert await bucket_keys(moto_endpoint, s3_bucket, f"outputs/{g}") == set()
    for url in urls:
        assert (await caller.client.get(url)).status_code == 404


# -- settings and the factory ------------------------------------------------------------------------


def test_storage_url_accepts_file_and_s3_and_normalises(tmp_path: Path) -> None:
    cases = {
        "": "",
        "  ": "",
        f"file://{tmp_path}": f"file://{tmp_path}",
        "s3://my-bucket": "s3://my-bucket",
        "s3://my-bucket/": "s3://my-bucket",
        "s3://my.bucket_1/a/b/": "s3://my.bucket_1/a/b",
    }
    for given, stored in cases.items():
        assert Settings(data_dir=tmp_path, storage_url=given).storage_url == stored, given


@pytest.mark.parametrize(
    "url",
    [
        "./files",
        "/srv/files",
        "file://relative/path",
        "file:relative",
        "s3://",
        "s3://AB",
        "s3://Upper-Case",
        "s3://bucket/a//b",
        "s3://bucket/../x",
        "s3://bucket?versionId=1",
        "s3://key:secret@bucket",
        "gs://bucket",
        "https://bucket.s3.amazonaws.com",
    ],
)
def test_storage_url_refuses_anything_else_at_load(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(data_dir=tmp_path, storage_url=url)
    assert "storage_url" in str(caught.value)


def test_s3_endpoint_and_presign_limits(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:9000/", storage_presign_seconds=604800)
    assert s.s3_endpoint_url == "http://127.0.0.1:9000" and s.storage_presign_seconds == 604800
    for bad in ("ftp://host", "127.0.0.1:9000", "https://user:pw@minio.example"):
        with pytest.raises(ValidationError) as caught:
            Settings(data_dir=tmp_path, s3_endpoint_url=bad)
        assert "s3_endpoint_url" in str(caught.value)
    for seconds in (-1, 604801):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, storage_presign_seconds=seconds)


def test_the_region_falls_back_to_the_aws_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert Settings(data_dir=tmp_path).resolved_s3_region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert Settings(data_dir=tmp_path).resolved_s3_region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "ap-northeast-1")
    assert Settings(data_dir=tmp_path).resolved_s3_region == "ap-northeast-1"
    assert Settings(data_dir=tmp_path, s3_region="us-west-2").resolved_s3_region == "us-west-2"


def test_build_store_picks_the_store_the_url_names(tmp_path: Path) -> None:
    default = build_store(Settings(data_dir=tmp_path))
    assert isinstance(default, LocalFileStore) and default.root == tmp_path / "files"
    elsewhere = build_store(Settings(data_dir=tmp_path, storage_url=f"file://{tmp_path}/other%20place"))
    assert isinstance(elsewhere, LocalFileStore) and elsewhere.root == tmp_path / "other place"
    s3 = build_store(Settings(data_dir=tmp_path, storage_url="s3://some-bucket/p", s3_region="eu-west-1"))
    assert isinstance(s3, ObjectFileStore)
