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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def endpoint_secret(key: bytes, endpoint_id: str, version: int) -> str:
    """``whsec_`` + base64 of 32 bytes: the Standard Webhooks secret format."""
    raw = hmac.new(key, f"webhook-secret:{endpoint_id}:{version}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def visible_secret(secret: str) -> str:
    """What logs and listings may show of a secret."""
    return secret[: len(SECRET_PREFIX) + 4] + "…"
