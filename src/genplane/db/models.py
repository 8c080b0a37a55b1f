"""Tables. Money is stored in integer milli-credits (1 credit = 1000) so sums are exact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
        list[Any]: JSON,
        list[str]: JSON,
    }


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    is_personal: Mapped[bool] = mapped_column(Boolean, default=True)
    picture_url: Mapped[str | None] = mapped_column(String(2000))
    plan: Mapped[str] = mapped_column(String(40), default="standard")
    balance_millis: Mapped[int] = mapped_column(BigInteger, default=0)
    subscription_status: Mapped[str] = mapped_column(String(40), default="active")
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    currency: Mapped[str] = mapped_column(String(8), default="USD")
    period_starts_at: Mapped[datetime]
    period_ends_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]
    #: The account's generation rows, kept exact by ``generations.lifecycle`` (+1 on admit,
    #: -1 on delete, in the same transaction), so the list's ``total`` is one read.
    generations_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: Pending and processing generations; kept by ``generations.lifecycle`` (see migration 0007).
    generations_in_flight: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]]
    allowed_ips: Mapped[list[str]]
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    rotated_from_id: Mapped[str | None] = mapped_column(String(40))


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        # The list's order (created_at DESC, id DESC) in full, so a page is an index range.
        Index("ix_generations_account_created_id", "account_id", "created_at", "id"),
        Index("ix_generations_status_lease", "status", "lease_expires_at"),
        # The queue gauges at scrape time: pending rows counted, and the oldest, by index alone.
        Index("ix_generations_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id"))
    model_identifier: Mapped[str] = mapped_column(String(200))
    model_type: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12))
    provider_order: Mapped[list[str]]
    provider_used: Mapped[str | None] = mapped_column(String(40))
    prediction_id: Mapped[str | None] = mapped_column(String(2000))  # every task of a job: 0010
    prompt: Mapped[str] = mapped_column(Text)
    ratio: Mapped[str | None] = mapped_column(String(20))
    output_format: Mapped[str | None] = mapped_column(String(10))
    output_number: Mapped[int] = mapped_column(Integer, default=1)
    input_file: Mapped[list[str] | None] = mapped_column(JSON)
    input_file_last_content: Mapped[str | None] = mapped_column(Text)
    duration: Mapped[int | None] = mapped_column(Integer)
    resolution: Mapped[str | None] = mapped_column(String(20))
    generate_audio: Mapped[bool | None] = mapped_column(Boolean)
    specific: Mapped[dict[str, Any]]
    output_files: Mapped[list[Any] | None] = mapped_column(JSON)
    #: How many of ``output_number`` a success delivered (and was charged for); None until then.
    output_delivered: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(60))
    provider_errors: Mapped[list[Any] | None] = mapped_column(JSON)
    cost_millis: Mapped[int] = mapped_column(BigInteger)
    credits_settled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    metrics_total_time: Mapped[float | None] = mapped_column(Float)
    metrics_predict_time: Mapped[float | None] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    claims: Mapped[int] = mapped_column(Integer, default=0)
    provider_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        # At most one reserve, one charge and one refund per generation, enforced by the database.
        Index(
            "uq_ledger_generation_kind",
            "generation_id",
            "kind",
            unique=True,
            sqlite_where=text("generation_id IS NOT NULL"),
            postgresql_where=text("generation_id IS NOT NULL"),
        ),
        Index("ix_ledger_account_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id"))
    generation_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))
    amount_millis: Mapped[int] = mapped_column(BigInteger)
    balance_after_millis: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"

    account_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]


class ProviderAttempt(Base):
    __tablename__ = "provider_attempts"
    __table_args__ = (
        Index("ix_attempts_provider_started", "provider", "started_at"),
        # Covers the usage report's and the health endpoint's per-account sums: no row reads.
        Index(
            "ix_attempts_account_started",
            "account_id",
            "started_at",
            "provider",
            "outcome",
            "estimated_cost_millis",
        ),
        Index("ix_attempts_generation", "generation_id"),
        Index("ix_attempts_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    generation_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(40))
    model_identifier: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(12))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    estimated_cost_millis: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageCounter(Base):
    __tablename__ = "usage_counters"
    __table_args__ = (Index("ix_usage_day", "day"),)

    account_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(120), primary_key=True)
    status_code: Mapped[int] = mapped_column(Integer, primary_key=True)
    error_code: Mapped[str] = mapped_column(String(60), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class CreditAlert(Base):
    """A low-balance threshold of an account; fires once per descent, re-arms on recovery."""

    __tablename__ = "credit_alerts"

    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id"), primary_key=True)
    threshold_millis: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    armed: Mapped[bool] = mapped_column(Boolean, default=True)


class WebhookEndpoint(Base):
    """Where an account wants its events. The signing secret is derived, never stored."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]]
    secret_version: Mapped[int] = mapped_column(Integer, default=1)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookEvent(Base):
    """The transactional outbox: written in the same transaction as the change it reports."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), index=True)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event for one endpoint. ``id`` is the delivery id the receiver sees on every retry.

    status: ``pending`` (due at ``next_attempt_at``), ``delivered``, ``dead`` (the
    dead-letter list: the endpoint was disabled) or ``replayed`` (re-sent as a new delivery).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_endpoint_status", "endpoint_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[str] = mapped_column(String(40), ForeignKey("webhook_endpoints.id"))
    account_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class KeyAnomaly(Base):
    """A pattern the anomaly detectors found in one key's requests: one row per episode.

    An episode lasts while matching requests keep coming within the pattern's window;
    ``count`` is the matching requests seen in it, ``blocked_until`` is set when the key
    was blocked for it (GENPLANE_ANOMALY_AUTO_BLOCK).
    """

    __tablename__ = "key_anomalies"
    __table_args__ = (
        Index("ix_key_anomalies_account_last_seen", "account_id", "last_seen_at"),
        Index("ix_key_anomalies_key_last_seen", "key_id", "last_seen_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(40))
    key_prefix: Mapped[str] = mapped_column(String(16))
    pattern: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    blocked_until: Mapped[datetime | None]
