"""Request dependencies: the services, the caller's identity and its scope check."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from fastapi import Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext
from genplane.api.blocklist import key_subject
from genplane.api.client_address import client_ip
from genplane.api.ratelimit import route_group
from genplane.api.services import Services
from genplane.contract.errors import ApiError
from genplane.contract.rate_headers import refusal_headers
from genplane.net.bearer import bearer_token


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def require(scope: Scope) -> Callable[[Request], Awaitable[AuthContext]]:
    """Authenticate, rate-limit (per account and route group) and check ``scope``.

    Failures carry the contract's errors.
    """

    async def dependency(request: Request) -> AuthContext:
        svc = services(request)
        ip = client_ip(request.scope)
        authorization = request.headers.get("authorization")
        presented = key_subject(authorization) if authorization else "none"
        # A key verified moments ago skips the failure-window check (it has no failures);
        # every other credential is checked before it is tried.
        ip_over_ceiling = (
            False
            if svc.authenticator.recently_verified(authorization)
            else await svc.limiter.check_auth(ip, presented)
        )
        try:
            auth = await svc.authenticator.authenticate(authorization, ip)
        except ApiError as exc:
            if exc.name in ("bse_invalid_api_key", "bse_region_mismatch", "bse_authentication_required"):
                await svc.limiter.record_auth_failure(ip, presented)
                if ip_over_ceiling:
                    raise await svc.limiter.ip_limited(ip) from exc
            raise
        if svc.settings.anomaly_auto_block and not svc.settings.firewall_enabled and authorization:
            # Blocks are answered by the firewall; without it, keys blocked for an anomaly are refused here.
            await _refuse_blocked(svc, authorization)
        request.state.auth = auth
        route = request.scope.get("route")
        group = route_group(request.method, str(getattr(route, "path", request.url.path)))
        request.state.rate = await svc.limiter.hit_account(auth.account_id, auth.plan, group)
        if scope.value not in auth.scopes:
            raise ApiError(
                "bse_insufficient_permissions",
                f"This API key lacks the '{scope.value}' scope.",
                details={"required_scope": scope.value},
            )
        return auth

    return dependency


async def _refuse_blocked(svc: Services, authorization: str) -> None:
    token = bearer_token(authorization)
    if token is None:
        return
    blocked = await svc.blocklist.blocked_for(key_subject(token))
    if blocked > 0:
        retry = max(1, math.ceil(blocked))
        raise ApiError(
            "bse_request_blocked",
            details={"retry_after_seconds": retry},
            headers=refusal_headers(svc.settings.firewall_max_rejections, retry),
        )
