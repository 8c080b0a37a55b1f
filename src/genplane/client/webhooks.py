"""Checking that a webhook came from genplane, with nothing but the standard library.

Every delivery is signed twice over the raw body with the endpoint's ``whsec_…``
secret, so a receiver can check whichever it prefers:

- ``X-BabySea-Signature: t=<unix seconds>,v1=<hex>``: HMAC-SHA256 of ``"<t>." + body``
  keyed with the whole secret string (as the official BabySea SDK checks it);
- Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64>``): HMAC-SHA256 of ``"<id>.<timestamp>." + body``
  keyed with the base64-decoded part of the secret after ``whsec_``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from pydantic import ValidationError

from genplane.client.errors import WebhookVerificationError
from genplane.client.models import WebhookEvent

DEFAULT_TOLERANCE = 300
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def _fresh(timestamp: str, tolerance: float, now: float) -> None:
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("malformed signature: the timestamp is not a number") from None
    age = abs(now - sent)
    if age > tolerance:
        raise WebhookVerificationError(
            f"stale webhook: its timestamp is {age:.0f} s away (tolerance {tolerance:g} s)"
        )


def _check_babysea(header: str, body: bytes, secret: str, tolerance: float, now: float) -> None:
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    timestamp, digest = parts.get("t", ""), parts.get("v1", "")
    if not timestamp or not digest:
        raise WebhookVerificationError("malformed X-BabySea-Signature: expected t=<timestamp>,v1=<hex>")
    _fresh(timestamp, tolerance, now)
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest):
        raise WebhookVerificationError("X-BabySea-Signature does not match the body and secret")


def _check_standard(
    headers: Mapping[str, str], body: bytes, secret: str, tolerance: float, now: float
) -> None:
    delivery_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not delivery_id or not timestamp:
        raise WebhookVerificationError("malformed Standard Webhooks headers: no webhook-id or -timestamp")
    _fresh(timestamp, tolerance, now)
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_<base64> secret") from None
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    signatures = headers.get("webhook-signature", "").split()
    offered = [s.split(",", 1)[1] for s in signatures if s.startswith("v1,")]
    # Any one matching signature is enough: a sender rotating secrets lists one per secret.
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise WebhookVerificationError("webhook-signature does not match the body and secret")


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> WebhookEvent:
    """Check a delivery's signatures and return its event, or raise
    :class:`~genplane.client.WebhookVerificationError`.

    Pass the exact bytes received (a re-serialised JSON object has other bytes and
    fails) and the request's headers. Every scheme present is checked, so a delivery
    passes only if all its signatures are genuine; a request with neither is refused,
    as is one whose timestamp is more than ``tolerance`` seconds from ``now`` (a
    replayed old delivery).

    >>> from genplane.client import WebhookVerificationError, verify_webhook
    >>> def handle(raw_body: bytes, headers: dict[str, str]) -> int:  # in your web framework
    ...     try:
    ...         event = verify_webhook(raw_body, headers, "whsec_...")
    ...     except WebhookVerificationError:
    ...         return 400  # not from genplane (or stale): refused, and retried by the sender
    ...     print(event.webhook_event, event.webhook_data.get("generation_id"))
    ...     return 204
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {k.lower(): v for k, v in headers.items()}
    secret = secret.strip()
    if not secret:
        raise WebhookVerificationError("no webhook secret given")
    moment = time.time() if now is None else now
    babysea, standard = lowered.get("x-babysea-signature"), lowered.get("webhook-signature")
    if not babysea and not standard:
        raise WebhookVerificationError("no signature: X-BabySea-Signature or webhook-signature is needed")
    if babysea:
        _check_babysea(babysea, raw, secret, tolerance, moment)
    if standard:
        _check_standard(lowered, raw, secret, tolerance, moment)
    try:
        return WebhookEvent.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise WebhookVerificationError(f"the signed body is not a webhook event: {exc}") from exc
