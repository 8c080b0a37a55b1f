"""Typed shapes of the ``/v1`` contract, as a client reads them.

Every model accepts fields it does not know (``extra="allow"``): a newer server may add
fields, and an SDK that refused them would break on an upgrade that changed nothing it
uses. What a program branches on is typed strictly instead: a generation's status, a
model's type, ids and counts, so a wrong value fails here and not three calls later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

GenerationStatus = Literal["pending", "processing", "succeeded", "failed", "canceled"]
#: The statuses that never change again.
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class Model(BaseModel):
    """Base of every shape: unknown fields are kept (``model.model_extra``), never refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())


@dataclass(frozen=True)
class RateLimit:
    """The ``X-RateLimit-*`` and ``Retry-After`` headers of one response.

    ``reset`` is in Unix seconds; ``retry_after`` in seconds (``None`` when the
    response did not ask the client to wait)."""

    limit: int | None
    remaining: int | None
    reset: int | None
    retry_after: float | None = None


class Response(Model, Generic[T]):
    """The success envelope; ``data`` holds the operation's own shape.

    ``idempotency_replayed``, ``rate_limit`` and ``preference_applied`` come from the
    response headers, not the body, so a caller sees them without touching HTTP."""

    status: Literal["success"]
    request_id: str
    message: str = ""
    timestamp: str = ""
    data: T
    idempotency_replayed: bool = False
    rate_limit: RateLimit | None = None
    preference_applied: str | None = None


class Page(Response[T], Generic[T]):
    """A paginated envelope: ``total`` records in all, this page from ``offset``."""

    total: int
    limit: int
    offset: int


# -- account -------------------------------------------------------------------------


class StatusData(Model):
    account_id: str
    apikey_id: str
    apikey_name: str | None = None
    apikey_prefix: str | None = None
    apikey_created_at: str | None = None
    apikey_last_used_at: str | None = None
    apikey_expires_at: str | None = None
    apikey_scopes: list[str] | None = None
    region: str | None = None


class UsageEndpoint(Model):
    endpoint: str
    total_requests: int
    success_count: int
    client_error_count: int
    server_error_count: int
    error_codes: dict[str, int] = Field(default_factory=dict)


class UsageProvider(Model):
    provider: str
    total_submissions: int
    used_count: int
    cancelled_count: int
    discarded_count: int
    failed_count: int
    total_estimated_cost: float
    wasted_estimated_cost: float


class UsageDay(Model):
    """genplane's per-day breakdown (UTC); absent from servers that do not send it."""

    day: str
    total_requests: int
    success_count: int
    client_error_count: int
    server_error_count: int
    provider_submissions: int = 0
    estimated_cost: float = 0.0
    wasted_estimated_cost: float = 0.0


class UsageData(Model):
    account_id: str
    usage_period_days: int
    usage_credit_balance: float
    usage_total_requests: int
    usage_total_success: int
    usage_total_client_errors: int
    usage_total_server_errors: int
    usage_total_generations: int
    usage_total_provider_submissions: int
    usage_total_estimated_cost: float
    usage_endpoints: list[UsageEndpoint] = Field(default_factory=list)
    usage_providers: list[UsageProvider] = Field(default_factory=list)
    usage_days: list[UsageDay] = Field(default_factory=list)


class AccountData(Model):
    account_id: str
    account_name: str
    account_email: str | None = None
    account_is_personal: bool
    account_picture_url: str | None = None
    account_created_at: str


class LowBalanceThreshold(Model):
    threshold: float
    armed: bool


class BillingData(Model):
    account_id: str
    billing_plan: str | None = None
    billing_credit_balance: float
    billing_subscription_status: str | None = None
    billing_cancel_at_period_end: bool | None = None
    billing_currency: str | None = None
    billing_period_starts_at: str | None = None
    billing_period_ends_at: str | None = None
    billing_created_at: str | None = None
    billing_updated_at: str | None = None
    billing_low_balance_thresholds: list[LowBalanceThreshold] = Field(default_factory=list)


class EstimateData(Model):
    model_identifier: str
    model_type: Literal["image", "video"]
    assets_count: int
    cost_per_generation: float
    cost_total_consumed: float
    credit_balance: float | None = None
    credit_balance_can_afford: bool | None = None
    credit_balance_max_affordable: int | None = None
    cost_per_second: float | None = None
    duration_seconds: float | None = None
    resolution: str | None = None


# -- generations ---------------------------------------------------------------------


class CreateData(Model):
    """What a create answers: the id to follow, not the record (it runs asynchronously)."""

    generation_id: str
    model_identifier: str | None = None
    generation_provider_order: list[str] = Field(default_factory=list)
    generation_prediction_id: str | None = None
    generation_initialized: bool = True


class Generation(Model):
    """One generation record; model-specific fields that were sent stay in ``model_extra``."""

    generation_id: str
    generation_status: GenerationStatus
    account_id: str | None = None
    model_identifier: str | None = None
    generation_provider_order: list[str] = Field(default_factory=list)
    generation_provider_used: str | None = None
    generation_prediction_id: str | None = None
    generation_prompt: str | None = None
    generation_ratio: str | None = None
    generation_output_format: str | None = None
    generation_output_number: int | None = None
    generation_output_delivered: int | None = None
    generation_input_file: list[str] | None = None
    generation_output_file: list[str] | None = None
    generation_created_at: str | None = None
    generation_started_at: str | None = None
    generation_completed_at: str | None = None
    generation_metrics_total_time: float | None = None
    generation_metrics_predict_time: float | None = None
    generation_duration: float | None = None
    generation_resolution: str | None = None
    generation_generate_audio: bool | None = None
    generation_error: str | None = None
    generation_error_code: str | None = None
    generation_error_name: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the status can no longer change (succeeded, failed or canceled)."""
        return self.generation_status in TERMINAL_STATUSES


class GenerationList(Model):
    generations: list[Generation]


class DeleteData(Model):
    generation_id: str
    files_deleted: int


class CancelData(Model):
    generation_id: str
    generation_status: Literal["canceled"]
    provider_cancel_sent: bool
    credits_refunded: bool


# -- library and health --------------------------------------------------------------


class ProviderImplementation(Model):
    delivery_method: str | None = None
    cancel_method: str | None = None
    webhook_verification: str | None = None
    failover_strategy: str | None = None
    health_monitoring: str | None = None
    supported_media_types: list[str] = Field(default_factory=list)
    supported_models_total: int | None = None


class ProviderProfile(Model):
    provider_id: str
    provider_name: str
    provider_description: str | None = None
    provider_website: str | None = None
    provider_docs: str | None = None
    provider_status: str | None = None
    babysea_implementation: ProviderImplementation | None = None


class LibraryProvidersData(Model):
    providers: list[ProviderProfile]
    providers_total: int


class ModelSchema(Model):
    """The request fields a model accepts; lists are the allowed values, first = default."""

    generation_prompt: bool = True
    generation_ratio: list[str] = Field(default_factory=list)
    generation_output_format: list[str] = Field(default_factory=list)
    generation_output_number: int = 1
    generation_input_file: bool = False
    generation_duration: list[float] | None = None
    generation_resolution: list[str] | None = None
    generation_generate_audio: bool | None = None


class CatalogModel(Model):
    """One entry of the model library (``schema`` is a pydantic name, hence ``model_schema``)."""

    model_type: Literal["image", "video"]
    model_identifier: str
    model_pricing: float | dict[str, float] | None = None
    model_supported_provider: list[str] = Field(default_factory=list)
    model_schema: ModelSchema = Field(default_factory=ModelSchema, alias="schema")
    specific_schema: list[str] = Field(default_factory=list)


class LibraryModelsData(Model):
    models: list[CatalogModel]
    models_total: int


class HealthWindow(Model):
    total_attempts: int
    failures: int
    successes: int
    duration_seconds: float


class ProviderHealth(Model):
    provider: str
    status: str
    failure_rate: float
    window: HealthWindow | None = None


class HealthProvidersData(Model):
    service: str
    healthy: bool
    providers: list[ProviderHealth]
    providers_total: int


class ModelProviderHealth(Model):
    available: bool
    raw_model_id: str | None = None


class ModelHealth(Model):
    model_identifier: str
    model_type: str
    model_pricing: float | dict[str, float] | None = None
    providers: dict[str, ModelProviderHealth] = Field(default_factory=dict)


class HealthModelsData(Model):
    service: str
    healthy: bool
    models: list[ModelHealth]
    models_total: int


class ServiceHealth(Model):
    """``/v1/health/storage`` (``bucket`` set) and ``/v1/health/cache`` (``service`` redis|memory)."""

    service: str
    healthy: bool
    latency_ms: float | None = None
    bucket: str | None = None
    error: str | None = None


class WebhookEvent(Model):
    """A verified webhook body; ``webhook_data`` stays a dict (its shape depends on the event)."""

    webhook_event: str
    webhook_timestamp: str
    webhook_delivery_id: str
    webhook_data: dict[str, Any] = Field(default_factory=dict)
