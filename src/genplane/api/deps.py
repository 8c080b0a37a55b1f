"""Request dependencies: the services, the caller's identity and its scope check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.services import Services
from genplane.errors import ApiError


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require(scope: Scope) -> Callable[[Request], Awaitable[AuthContext]]:
    """Authenticate, rate-limit and check ``scope``; failures carry the contract's errors."""

    async def dependency(request: Request) -> AuthContext:
        svc = services(request)
        ip = client_ip(request)
        await svc.limiter.check_auth_ip(ip)
        try:
            auth = await svc.authenticator.authenticate(request.headers.get("authorization"), ip)
        except ApiError as exc:
            if exc.name in ("bse_invalid_api_key", "bse_region_mismatch", "bse_authentication_required"):
                await svc.limiter.record_auth_failure(ip)
            raise
        request.state.auth = auth
        request.state.rate = await svc.limiter.hit_account(auth.account_id)
        if scope.value not in auth.scopes:
            raise ApiError(
                "bse_insufficient_permissions",
                f"This API key lacks the '{scope.value}' scope.",
                details={"required_scope": scope.value},
            )
        return auth

    return dependency
