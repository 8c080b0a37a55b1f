"""Response shapes, declared once for the OpenAPI document (handlers return plain dicts)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from genplane.contract.status import GenerationStatus

T = TypeVar("T")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Envelope(BaseModel, Generic[T]):
    status: Literal["success"]
    request_id: str
    message: str
    timestamp: str
    data: T


class PageEnvelope(Envelope[T], Generic[T]):
    total: int
    limit: int
    offset: int


class ProviderErrorItem(BaseModel):
    provider: str
    error: str | None = None
    code: str
    type: str
    message: str
    retryable: bool


class FlatError(BaseModel):
    status: Literal["error"]
    request_id: str
    error: str = Field(description="Stable machine name, bse_...")
    message: str
    retryable: bool
    code: str = Field(description="Stable BSE number")
    details: dict[str, Any] | None = None
    provider_errors: list[ProviderErrorItem] | None = None


class NestedErrorInner(BaseModel):
    code: str
    type: str
    message: str
    retryable: bool
    details: dict[str, Any] | None = None
    provider_errors: list[ProviderErrorItem] | None = None


class NestedError(BaseModel):
    status: Literal["error"]
    request_id: str
    error: NestedErrorInner


class StatusData(BaseModel):
    account_id: str
    apikey_id: str
    apikey_name: str | None
    apikey_prefix: str | None
    apikey_created_at: str | None
    apikey_last_used_at: str | None
    apikey_expires_at: str | None
    apikey_scopes: list[str]
    region: str


class UsageEndpoint(BaseModel):
    endpoint: str
    total_requests: int
    success_count: int
    client_error_count: int
    server_error_count: int
    error_codes: dict[str, int]


class UsageProvider(BaseModel):
    provider: str
    total_submissions: int
    used_count: int
    cancelled_count: int
    discarded_count: int
    failed_count: int
    total_estimated_cost: float
    wasted_estimated_cost: float


class UsageDay(BaseModel):
    day: str  # YYYY-MM-DD, UTC
    total_requests: int
    success_count: int
    client_error_count: int
    server_error_count: int
    provider_submissions: int
    estimated_cost: float
    wasted_estimated_cost: float


class UsageData(BaseModel):
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
    usage_endpoints: list[UsageEndpoint]
    usage_providers: list[UsageProvider]
    usage_days: list[UsageDay] = Field(
        description="genplane's addition: the same counts per UTC day (days with any), oldest first."
    )


class AccountData(BaseModel):
    account_id: str
    account_name: str
    account_email: str | None
    account_is_personal: bool
    account_picture_url: str | None
    account_created_at: str


class LowBalanceThreshold(BaseModel):
    threshold: float
    armed: bool


class BillingData(BaseModel):
    account_id: str
    billing_plan: str | None
    billing_credit_balance: float
    billing_subscription_status: str | None
    billing_cancel_at_period_end: bool | None
    billing_currency: str | None
    billing_period_starts_at: str | None
    billing_period_ends_at: str | None
    billing_created_at: str | None
    billing_updated_at: str | None
    billing_low_balance_thresholds: list[LowBalanceThreshold] = Field(
        description="genplane's addition: the balances below which a credits.low_balance event is sent, "
        "lowest first; armed: not fired since the balance was last above it."
    )


class EstimateData(BaseModel):
    model_identifier: str
    model_type: Literal["image", "video"]
    assets_count: int
    cost_per_generation: float
    cost_total_consumed: float
    credit_balance: float | None
    credit_balance_can_afford: bool | None
    credit_balance_max_affordable: int | None
    cost_per_second: float | None = None
    duration_seconds: int | None = None
    resolution: str | None = None


class CreateData(BaseModel):
    model_identifier: str
    generation_provider_order: list[str]
    generation_prediction_id: str
    generation_id: str
    generation_initialized: Literal[True]


class GenerationRecord(_Open):
    account_id: str
    generation_id: str
    model_identifier: str
    generation_status: GenerationStatus
    generation_provider_order: list[str]
    generation_provider_used: str | None
    generation_prediction_id: str | None
    generation_prompt: str
    generation_ratio: str | None
    generation_output_format: str | None
    generation_output_number: int
    generation_input_file: list[str] | None
    generation_output_file: list[str] | None
    generation_output_delivered: int | None = Field(
        None,
        description="Succeeded only: how many of generation_output_number the provider delivered; "
        "the generation is charged for these, the rest of its reservation is refunded.",
    )
    generation_created_at: str
    generation_started_at: str | None
    generation_completed_at: str | None
    generation_metrics_total_time: float | None
    generation_metrics_predict_time: float | None
    generation_error: str | None = Field(None, description="Failed only: a short message for people.")
    generation_error_code: str | None = Field(
        None, description="Failed only: the registry code, e.g. BSE4003."
    )
    generation_error_name: str | None = Field(
        None, description="Failed only: the flat error name, e.g. bse_all_providers_failed."
    )


class GenerationList(BaseModel):
    generations: list[GenerationRecord]


class DeleteData(BaseModel):
    generation_id: str
    files_deleted: int


class CancelData(BaseModel):
    generation_id: str
    generation_status: Literal["canceled"]
    provider_cancel_sent: bool
    credits_refunded: bool


class Implementation(BaseModel):
    delivery_method: str
    cancel_method: str | None
    webhook_verification: str | None
    error_mapping: str
    cost_tracking: str
    schema_conversion: str
    failover_strategy: str
    health_monitoring: str
    supported_media_types: list[str]
    supported_models_total: int


class ProviderProfile(BaseModel):
    provider_id: str
    provider_name: str
    provider_description: str
    provider_website: str
    provider_docs: str
    provider_status: str
    babysea_implementation: Implementation


class ProvidersData(BaseModel):
    providers: list[ProviderProfile]
    providers_total: int


class ModelSchemaOut(_Open):
    generation_prompt: bool
    generation_ratio: list[str]
    generation_output_format: list[str]
    generation_output_number: int
    generation_input_file: bool


class ModelOut(BaseModel):
    model_type: Literal["image", "video"]
    model_identifier: str
    model_pricing: float | dict[str, float]
    model_supported_provider: list[str]
    schema_: ModelSchemaOut = Field(alias="schema")
    specific_schema: list[str]


class ModelsData(BaseModel):
    models: list[ModelOut]
    models_total: int


class HealthWindow(BaseModel):
    total_attempts: int
    failures: int
    successes: int
    duration_seconds: int


class HealthProvider(BaseModel):
    provider: str
    status: Literal["healthy", "recovering", "degraded", "unknown"]
    failure_rate: float
    window: HealthWindow


class HealthProvidersData(BaseModel):
    service: Literal["providers"]
    healthy: bool
    providers: list[HealthProvider]
    providers_total: int


class HealthModelProvider(BaseModel):
    available: bool
    raw_model_id: str | None


class HealthModel(BaseModel):
    model_identifier: str
    model_type: Literal["image", "video"]
    model_pricing: float | dict[str, float]
    providers: dict[str, HealthModelProvider]


class HealthModelsData(BaseModel):
    service: Literal["models"]
    healthy: bool
    models: list[HealthModel]
    models_total: int


class HealthStorageData(BaseModel):
    service: Literal["storage"]
    healthy: bool
    latency_ms: float
    bucket: str
    error: str | None = None


class HealthCacheData(BaseModel):
    service: Literal["redis", "memory"]
    healthy: bool
    latency_ms: float
    error: str | None = None
