"""Signed webhooks: endpoints, the transactional outbox, delivery, and the verifier."""

from genplane.webhooks.signing import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
