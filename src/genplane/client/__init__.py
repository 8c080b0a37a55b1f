"""The Python SDK for genplane's ``/v1`` API (and any BabySea-compatible server).

It needs only httpx and pydantic at run time. A first generation, saved to disk:

>>> from genplane.client import Client
>>> client = Client(api_key="bye_us_...", base_url="http://127.0.0.1:8000")  # doctest: +SKIP
>>> done = client.generate_and_wait(  # doctest: +SKIP
...     "local/preview-image", generation_prompt="a lighthouse at dawn", generation_ratio="16:9"
... )
>>> client.download(done, "out")  # doctest: +SKIP
[PosixPath('out/…-0.png')]

Every operation returns a :class:`Response` whose ``data`` is typed; every failure is
a :class:`GenplaneError` subclass carrying the contract's code (``BSE1002``) and name
(``bse_invalid_api_key``). :class:`AsyncClient` has the same methods, awaited.
"""

from genplane.client.async_client import AsyncClient
from genplane.client.errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    GenerationFailedError,
    GenerationTimeoutError,
    GenplaneError,
    InsufficientCreditsError,
    NetworkError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    RequestValidationError,
    ServerError,
    WebhookVerificationError,
)
from genplane.client.models import (
    AccountData,
    BillingData,
    CancelData,
    CatalogModel,
    CreateData,
    DeleteData,
    EstimateData,
    Generation,
    GenerationList,
    GenerationStatus,
    HealthModelsData,
    HealthProvidersData,
    LibraryModelsData,
    LibraryProvidersData,
    LowBalanceThreshold,
    Page,
    RateLimit,
    Response,
    ServiceHealth,
    StatusData,
    UsageData,
    UsageDay,
    WebhookEvent,
)
from genplane.client.retries import RetryPolicy
from genplane.client.sync_client import Client
from genplane.client.webhooks import verify_webhook

__all__ = [
    "APIError",
    "AccountData",
    "AsyncClient",
    "AuthenticationError",
    "BillingData",
    "CancelData",
    "CatalogModel",
    "Client",
    "ConflictError",
    "CreateData",
    "DeleteData",
    "EstimateData",
    "Generation",
    "GenerationFailedError",
    "GenerationList",
    "GenerationStatus",
    "GenerationTimeoutError",
    "GenplaneError",
    "HealthModelsData",
    "HealthProvidersData",
    "InsufficientCreditsError",
    "LibraryModelsData",
    "LibraryProvidersData",
    "LowBalanceThreshold",
    "NetworkError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitError",
    "RequestTimeoutError",
    "RequestValidationError",
    "Response",
    "RetryPolicy",
    "ServerError",
    "ServiceHealth",
    "StatusData",
    "UsageData",
    "UsageDay",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
