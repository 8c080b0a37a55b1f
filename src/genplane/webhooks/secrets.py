"""Webhook signing secrets, derived from one server key instead of stored.

A signing secret must be readable to sign, so storing it would put every receiver's
secret in the database and its backups. Instead each endpoint's secret is an HMAC of
the endpoint id and its secret version under the deployment's key
(``GENPLANE_SECRET_KEY``, or a key generated once into the data directory):
rotation bumps the version, and the database holds nothing worth stealing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from genplane.settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret


def server_key(settings: Settings) -> bytes:
    """The deployment's key: the setting, else ``<data_dir>/secret.key`` (created 0600 once)."""
    configured = settings.secret_key.get_secret_value() if settings.secret_key is not None else ""
    if configured:
        return configured.encode()
    path = Path(settings.data_dir) / "secret.key"
    if not path.exists():
        _create_key_file(path)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty; restore it or set GENPLANE_SECRET_KEY")
    return key.encode()


def _create_key_file(path: Path) -> None:
    """Write the key completely, then link it into place: never a half-written key file,
    and when two processes race, both end up with the one that was linked first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won; use its key
    finally:
        tmp.unlink(missing_ok=True)


def endpoint_secret(key: bytes, endpoint_id: str, version: int) -> str:
    """``whsec_`` + base64 of 32 bytes: the Standard Webhooks secret format."""
    raw = hmac.new(key, f"webhook-secret:{endpoint_id}:{version}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw).decode()
