"""Operations 1-4: status, usage, user/account, user/billing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from genplane.accounts.scopes import Scope
from genplane.accounts.service import AuthContext, get_account
from genplane.api.deps import require, services
from genplane.api.responses import errors, ok
from genplane.api.schemas import AccountData, BillingData, Envelope, StatusData, UsageData
from genplane.clock import iso
from genplane.contract.errors import ApiError
from genplane.credits.alerts import account_thresholds
from genplane.credits.money import to_credits
from genplane.db.models import Account
from genplane.usage.report import usage_report

router = APIRouter(prefix="/v1")
AccountRead = Annotated[AuthContext, Depends(require(Scope.ACCOUNT_READ))]


@router.get("/status", response_model=Envelope[StatusData], responses=errors(), operation_id="getStatus")
async def status(request: Request, auth: AccountRead) -> object:
    data = {
        "account_id": auth.account_id,
        "apikey_id": auth.key_id,
        "apikey_name": auth.key_name,
        "apikey_prefix": auth.key_prefix,
        "apikey_created_at": iso(auth.key_created_at),
        "apikey_last_used_at": iso(auth.key_last_used_at),
        "apikey_expires_at": iso(auth.key_expires_at),
        "apikey_scopes": sorted(auth.scopes),
        "region": services(request).settings.region,
    }
    return ok(request, data, "API connected successfully")


@router.get("/usage", response_model=Envelope[UsageData], responses=errors(), operation_id="getUsage")
async def usage(request: Request, auth: AccountRead, days: Annotated[int, Query(ge=1, le=90)] = 30) -> object:
    svc = services(request)
    await svc.usage.flush()
    return ok(request, await usage_report(svc.db, auth.account_id, days))


async def _account(request: Request, auth: AuthContext) -> Account:
    account = await get_account(services(request).db, auth.account_id)
    if account is None or account.deleted_at is not None:
        raise ApiError("bse_account_not_found")
    return account


@router.get(
    "/user/account", response_model=Envelope[AccountData], responses=errors(), operation_id="getAccount"
)
async def user_account(request: Request, auth: AccountRead) -> object:
    a = await _account(request, auth)
    return ok(
        request,
        {
            "account_id": a.id,
            "account_name": a.name,
            "account_email": a.email,
            "account_is_personal": a.is_personal,
            "account_picture_url": a.picture_url,
            "account_created_at": iso(a.created_at),
        },
    )


@router.get(
    "/user/billing", response_model=Envelope[BillingData], responses=errors(), operation_id="getBilling"
)
async def user_billing(request: Request, auth: AccountRead) -> object:
    a = await _account(request, auth)
    _, thresholds = await account_thresholds(services(request).db, a.id)
    return ok(
        request,
        {
            "account_id": a.id,
            "billing_plan": a.plan,
            "billing_credit_balance": to_credits(a.balance_millis),
            "billing_subscription_status": a.subscription_status,
            "billing_cancel_at_period_end": a.cancel_at_period_end,
            "billing_currency": a.currency,
            "billing_period_starts_at": iso(a.period_starts_at),
            "billing_period_ends_at": iso(a.period_ends_at),
            "billing_created_at": iso(a.created_at),
            "billing_updated_at": iso(a.updated_at),
            "billing_low_balance_thresholds": [
                {"threshold": to_credits(t), "armed": armed} for t, armed in thresholds
            ],
        },
    )
