"""Signatures on outgoing webhooks, and the verifier receivers can use.

Two schemes are sent on every delivery so either kind of receiver can check it:

- ``X-BabySea-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``
  keyed with the whole ``whsec_…`` string, as the product's SDK verifies it;
- Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
  signed by the ``standardwebhooks`` library.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The signature is missing, malformed, stale or wrong."""


def babysea_signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def standard_webhook_headers(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(secret).sign(delivery_id, when, body.decode())
    return {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def verify(
    raw_body: bytes | str,
    signature_header: str,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """Check an ``X-BabySea-Signature`` header and return the parsed payload.

    Raises :class:`WebhookVerificationError` when the header is missing or malformed,
    its timestamp is more than ``tolerance`` seconds from now, or the digest does not
    match the raw body under ``secret`` (compared in constant time).
    """
    body = raw_body.encode() if isinstance(raw_body, str) else raw_body
    if not signature_header:
        raise WebhookVerificationError("missing X-BabySea-Signature header")
    parts = dict(p.strip().split("=", 1) for p in signature_header.split(",") if "=" in p)
    timestamp, digest = parts.get("t", ""), parts.get("v1", "")
    if not timestamp or not digest:
        raise WebhookVerificationError("malformed signature: expected t=<timestamp>,v1=<hex>")
    try:
        t = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("malformed signature: non-numeric timestamp") from None
    age = abs((time.time() if now is None else now) - t)
    if age > tolerance:
        raise WebhookVerificationError(f"timestamp outside the tolerance ({age:.0f} s > {tolerance} s)")
    expected = babysea_signature(secret, t, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, digest):
        raise WebhookVerificationError("signature does not match")
    payload: dict[str, Any] = orjson.loads(body)
    return payload
