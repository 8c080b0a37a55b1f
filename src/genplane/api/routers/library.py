"""Operations 12-17: the library (catalogue) and live health checks."""

from __future__ import annotations

import time
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.deps import require, services
from genplane.api.responses import errors, ok
from genplane.api.schemas import (
    Envelope,
    HealthCacheData,
    HealthModelsData,
    HealthProvidersData,
    HealthStorageData,
    ModelsData,
    ProvidersData,
)
from genplane.catalog.loader import ModelEntry
from genplane.providers.health import provider_health

router = APIRouter(prefix="/v1")
log = structlog.get_logger("genplane.health")
Library = Annotated[AuthContext, Depends(require(Scope.LIBRARY_READ))]
Health = Annotated[AuthContext, Depends(require(Scope.HEALTH_READ))]


def _schema(model: ModelEntry) -> dict[str, Any]:
    schema = model.schema_.model_dump(exclude_none=True)
    for flag in ("generation_input_file_last_content", "generation_input_file_required"):
        if not schema.get(flag):
            schema.pop(flag, None)
    return schema


@router.get(
    "/library/providers",
    response_model=Envelope[ProvidersData],
    responses=errors(),
    operation_id="listProviders",
)
async def library_providers(request: Request, auth: Library) -> object:
    svc = services(request)
    out = []
    for p in svc.catalog.providers.values():
        adapter = svc.providers.get(p.provider_id)
        impl = p.implementation
        out.append(
            {
                "provider_id": p.provider_id,
                "provider_name": p.provider_name,
                "provider_description": p.provider_description,
                "provider_website": p.provider_website,
                "provider_docs": p.provider_docs,
                "provider_status": "active"
                if adapter is not None and adapter.configured()
                else "unavailable",
                "babysea_implementation": {
                    "delivery_method": impl.delivery_method,
                    "cancel_method": impl.cancel_method,
                    "webhook_verification": impl.webhook_verification,
                    "error_mapping": "bse_error_codes",
                    "cost_tracking": "per_generation_usd",
                    "schema_conversion": "unified_to_native",
                    "failover_strategy": impl.failover_strategy,
                    "health_monitoring": impl.health_monitoring,
                    "supported_media_types": list(impl.supported_media_types),
                    "supported_models_total": len(svc.catalog.models_of_provider(p.provider_id)),
                },
            }
        )
    return ok(request, {"providers": out, "providers_total": len(out)})


@router.get(
    "/library/models", response_model=Envelope[ModelsData], responses=errors(), operation_id="listModels"
)
async def library_models(request: Request, auth: Library) -> object:
    models = [
        {
            "model_type": m.model_type,
            "model_identifier": m.model_identifier,
            "model_pricing": m.model_pricing,
            "model_supported_provider": list(m.providers),
            "schema": _schema(m),
            "specific_schema": list(m.specific_schema),
        }
        for m in services(request).catalog.models.values()
    ]
    return ok(request, {"models": models, "models_total": len(models)})


@router.get(
    "/health/inference/providers",
    response_model=Envelope[HealthProvidersData],
    responses=errors(),
    operation_id="healthProviders",
)
async def health_providers(request: Request, auth: Health) -> object:
    svc = services(request)
    configured = {pid for pid, adapter in svc.providers.items() if adapter.configured()}
    report = await provider_health(svc.db, list(svc.catalog.providers), auth.account_id, configured)
    rows = [
        {
            "provider": p.provider,
            "status": p.state,
            "failure_rate": round(p.own.failure_rate, 4),
            "window": {
                "total_attempts": p.own.total,
                "failures": p.own.failures,
                "successes": p.own.successes,
                "duration_seconds": report.window_seconds,
            },
        }
        for p in report.providers
    ]
    return ok(
        request,
        {"service": "providers", "healthy": report.healthy, "providers": rows, "providers_total": len(rows)},
    )


@router.get(
    "/health/inference/models",
    response_model=Envelope[HealthModelsData],
    responses=errors(),
    operation_id="healthModels",
)
async def health_models(request: Request, auth: Health) -> object:
    svc = services(request)
    models = []
    healthy = True
    for m in svc.catalog.models.values():
        providers: dict[str, dict[str, object]] = {}
        for pid, binding in m.providers.items():
            adapter = svc.providers.get(pid)
            providers[pid] = {
                "available": adapter is not None and adapter.configured(),
                "raw_model_id": binding.model_id,
            }
        models.append(
            {
                "model_identifier": m.model_identifier,
                "model_type": m.model_type,
                "model_pricing": m.model_pricing,
                "providers": providers,
            }
        )
        healthy = healthy and any(p["available"] for p in providers.values())
    return ok(
        request, {"service": "models", "healthy": healthy, "models": models, "models_total": len(models)}
    )


@router.get(
    "/health/storage",
    response_model=Envelope[HealthStorageData],
    responses=errors(),
    operation_id="healthStorage",
)
async def health_storage(request: Request, auth: Health) -> object:
    h = await services(request).store.health()
    if not h.healthy:
        log.warning("storage_unhealthy", request_id=request.state.request_id, error=h.error, detail=h.detail)
    data: dict[str, Any] = {
        "service": "storage",
        "healthy": h.healthy,
        "latency_ms": h.latency_ms,
        "bucket": h.bucket,
    }
    if h.error:
        data["error"] = h.error
    return ok(request, data)


@router.get(
    "/health/cache", response_model=Envelope[HealthCacheData], responses=errors(), operation_id="healthCache"
)
async def health_cache(request: Request, auth: Health) -> object:
    limiter = services(request).limiter
    storage = limiter.storage
    start = time.perf_counter()
    error = None
    try:
        healthy = bool(await storage.check())
    except Exception as exc:  # the client's text may name hosts and socket paths: log it only
        healthy, error = False, "The rate-limit store did not answer."
        log.warning("cache_unhealthy", request_id=request.state.request_id, error=repr(exc))
    data: dict[str, Any] = {
        "service": limiter.backend,
        "healthy": healthy,
        "latency_ms": round((time.perf_counter() - start) * 1000, 3),
    }
    if error:
        data["error"] = error
    return ok(request, data)
