"""GET /v1/usage: request counters, generations and provider attempts over a period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from genplane.clock import utcnow
from genplane.contract.errors import ERRORS
from genplane.contract.status import AttemptOutcome
from genplane.credits.money import to_credits
from genplane.db.engine import Database
from genplane.db.models import Account, Generation, ProviderAttempt, UsageCounter

_OUTCOME_FIELD: dict[str, str] = {
    AttemptOutcome.USED: "used_count",
    AttemptOutcome.CANCELED: "cancelled_count",  # the contract's spelling of the field
    AttemptOutcome.DISCARDED: "discarded_count",
    AttemptOutcome.FAILED: "failed_count",
}


def _day_of(column: Any, is_sqlite: bool) -> Any:
    """A timestamp column's UTC day as 'YYYY-MM-DD' (SQLite keeps timestamps as ISO text)."""
    if is_sqlite:
        return func.substr(column, 1, 10)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")  # not the session's zone


def _empty_day(day: str) -> dict[str, Any]:
    return {
        "day": day,
        "total_requests": 0,
        "success_count": 0,
        "client_error_count": 0,
        "server_error_count": 0,
        "provider_submissions": 0,
        "estimated_cost": 0,
        "wasted_estimated_cost": 0,
    }


async def usage_report(db: Database, account_id: str, days: int) -> dict[str, Any]:
    since = utcnow() - timedelta(days=days)
    since_day = since.strftime("%Y-%m-%d")
    attempt_day = _day_of(ProviderAttempt.started_at, db.is_sqlite)
    async with db.read() as s:
        balance = await s.scalar(select(Account.balance_millis).where(Account.id == account_id))
        counters = (
            await s.execute(
                select(
                    UsageCounter.day,
                    UsageCounter.endpoint,
                    UsageCounter.status_code,
                    UsageCounter.error_code,
                    func.sum(UsageCounter.count),
                )
                .where(UsageCounter.account_id == account_id, UsageCounter.day >= since_day)
                .group_by(
                    UsageCounter.day, UsageCounter.endpoint, UsageCounter.status_code, UsageCounter.error_code
                )
            )
        ).all()
        generations = await s.scalar(
            select(func.count())
            .select_from(Generation)
            .where(Generation.account_id == account_id, Generation.created_at >= since)
        )
        attempts = (
            await s.execute(
                select(
                    attempt_day,
                    ProviderAttempt.provider,
                    ProviderAttempt.outcome,
                    func.count(),
                    func.sum(ProviderAttempt.estimated_cost_millis),
                )
                .where(ProviderAttempt.account_id == account_id, ProviderAttempt.started_at >= since)
                .group_by(attempt_day, ProviderAttempt.provider, ProviderAttempt.outcome)
            )
        ).all()

    endpoints: dict[str, dict[str, Any]] = {}
    per_day: dict[str, dict[str, Any]] = {}
    for day, endpoint, status, error_code, count in counters:
        e = endpoints.setdefault(
            endpoint,
            {
                "endpoint": endpoint,
                "total_requests": 0,
                "success_count": 0,
                "client_error_count": 0,
                "server_error_count": 0,
                "error_codes": {},
            },
        )
        n = int(count or 0)
        d = per_day.get(day) or per_day.setdefault(day, _empty_day(day))
        outcome = "success_count" if status < 400 else "client_error_count"
        if status >= 500:
            outcome = "server_error_count"
        for row in (e, d):
            row["total_requests"] += n
            row[outcome] += n
        if error_code:  # stored by name; the contract keys these by registry code
            spec = ERRORS.get(error_code)
            code = spec.code if spec is not None else error_code
            e["error_codes"][code] = e["error_codes"].get(code, 0) + n

    providers: dict[str, dict[str, Any]] = {}
    for day, provider, outcome, count, cost in attempts:
        d = per_day.get(day) or per_day.setdefault(day, _empty_day(day))
        d["provider_submissions"] += int(count)
        d["estimated_cost"] += int(cost or 0)
        if outcome in (AttemptOutcome.CANCELED, AttemptOutcome.DISCARDED):
            d["wasted_estimated_cost"] += int(cost or 0)
        p = providers.setdefault(
            provider,
            {
                "provider": provider,
                "total_submissions": 0,
                "used_count": 0,
                "cancelled_count": 0,
                "discarded_count": 0,
                "failed_count": 0,
                "total_estimated_cost": 0,
                "wasted_estimated_cost": 0,
            },
        )
        p["total_submissions"] += int(count)
        if outcome in _OUTCOME_FIELD:
            p[_OUTCOME_FIELD[outcome]] += int(count)
        p["total_estimated_cost"] += int(cost or 0)
        if outcome in (AttemptOutcome.CANCELED, AttemptOutcome.DISCARDED):
            p["wasted_estimated_cost"] += int(cost or 0)
    provider_rows = []
    for p in providers.values():
        p["total_estimated_cost"] = to_credits(p["total_estimated_cost"])
        p["wasted_estimated_cost"] = to_credits(p["wasted_estimated_cost"])
        provider_rows.append(p)

    ep_rows = sorted(endpoints.values(), key=lambda e: e["endpoint"])
    return {
        "account_id": account_id,
        "usage_period_days": days,
        "usage_credit_balance": to_credits(int(balance or 0)),
        "usage_total_requests": sum(e["total_requests"] for e in ep_rows),
        "usage_total_success": sum(e["success_count"] for e in ep_rows),
        "usage_total_client_errors": sum(e["client_error_count"] for e in ep_rows),
        "usage_total_server_errors": sum(e["server_error_count"] for e in ep_rows),
        "usage_total_generations": int(generations or 0),
        "usage_total_provider_submissions": sum(p["total_submissions"] for p in provider_rows),
        "usage_total_estimated_cost": round(sum(p["total_estimated_cost"] for p in provider_rows), 3),
        "usage_endpoints": ep_rows,
        "usage_providers": sorted(provider_rows, key=lambda p: p["provider"]),
        "usage_days": [
            {
                **d,
                "estimated_cost": to_credits(d["estimated_cost"]),
                "wasted_estimated_cost": to_credits(d["wasted_estimated_cost"]),
            }
            for _, d in sorted(per_day.items())
        ],
    }
