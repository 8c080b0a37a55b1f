"""Accounts and API keys: creation, rotation, revocation and request authentication."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.accounts.auth_cache import AuthCache, KeyState, announce_forget, forget
from genplane.accounts.keys import (
    hash_key,
    ip_allowed,
    key_region,
    new_key,
    normalise_allowlist,
    visible_prefix,
)
from genplane.clock import as_utc, utcnow
from genplane.contract.errors import ApiError
from genplane.credits.alerts import DEFAULT_THRESHOLD_MILLIS
from genplane.db.engine import Database
from genplane.db.models import Account, ApiKey, CreditAlert
from genplane.ids import new_id
from genplane.net.bearer import bearer_token
from genplane.settings import Settings


@dataclass(frozen=True)
class AuthContext:
    """Who is calling: everything a handler may know about the key, never the key itself."""

    account_id: str
    key_id: str
    key_name: str
    key_prefix: str
    scopes: frozenset[str]
    plan: str
    key_created_at: datetime
    key_last_used_at: datetime | None
    key_expires_at: datetime | None


@dataclass(frozen=True)
class IssuedKey:
    key: str
    record: ApiKey


async def create_account(
    db: Database, name: str, email: str | None = None, *, personal: bool = True, credits_millis: int = 0
) -> Account:
    now = utcnow()
    account = Account(
        id=new_id(),
        name=name,
        email=email,
        is_personal=personal,
        picture_url=None,
        plan="standard",
        balance_millis=0,
        subscription_status="active",
        cancel_at_period_end=False,
        currency="USD",
        period_starts_at=now,
        period_ends_at=now + timedelta(days=30),
        created_at=now,
        updated_at=now,
        deleted_at=None,
    )
    async with db.write() as s:
        s.add(account)
        await s.flush()
        s.add(CreditAlert(account_id=account.id, threshold_millis=DEFAULT_THRESHOLD_MILLIS, armed=False))
    if credits_millis:
        from genplane.credits.ledger import add_credits

        await add_credits(db, account.id, credits_millis, note="initial credits")
    return account


async def delete_account(db: Database, account_id: str) -> bool:
    async with db.write() as s:
        res = await s.execute(
            update(Account)
            .where(Account.id == account_id, Account.deleted_at.is_(None))
            .values(deleted_at=utcnow())
        )
        await announce_forget(s, account_id=account_id)
    forget(account_id=account_id)
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def list_accounts(db: Database, include_deleted: bool = False) -> list[Account]:
    async with db.read() as s:
        q = select(Account).order_by(Account.created_at)
        if not include_deleted:
            q = q.where(Account.deleted_at.is_(None))
        return list((await s.scalars(q)).all())


async def get_account(db: Database, account_id: str) -> Account | None:
    async with db.read() as s:
        return await s.get(Account, account_id)


async def create_key(
    db: Database,
    settings: Settings,
    account_id: str,
    name: str,
    scopes: list[str],
    *,
    expires_at: datetime | None = None,
    allowed_ips: list[str] | None = None,
    rotated_from_id: str | None = None,
) -> IssuedKey:
    issued = _new_key(settings, account_id, name, scopes, expires_at, allowed_ips, rotated_from_id)
    async with db.write() as s:
        await _add_key(s, issued.record)
    return issued


def _new_key(
    settings: Settings,
    account_id: str,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    allowed_ips: list[str] | None,
    rotated_from_id: str | None,
) -> IssuedKey:
    """A key and its unsaved record, so rotation can save it in its own transaction."""
    if not 1 <= len(name) <= 100:
        raise ValueError("a key name is 1 to 100 characters")
    allowlist = normalise_allowlist(allowed_ips or [])
    key = new_key(settings.region)
    record = ApiKey(
        id=new_id(),
        account_id=account_id,
        name=name,
        prefix=visible_prefix(key),
        key_hash=hash_key(key),
        scopes=scopes,
        allowed_ips=allowlist,
        created_at=utcnow(),
        last_used_at=None,
        expires_at=expires_at,
        revoked_at=None,
        rotated_from_id=rotated_from_id,
    )
    return IssuedKey(key=key, record=record)


async def _add_key(s: AsyncSession, record: ApiKey) -> None:
    account = await s.get(Account, record.account_id)
    if account is None or account.deleted_at is not None:
        raise ValueError(f"no account {record.account_id}")
    s.add(record)


async def list_keys(db: Database, account_id: str | None = None) -> list[ApiKey]:
    async with db.read() as s:
        q = select(ApiKey).order_by(ApiKey.created_at)
        if account_id:
            q = q.where(ApiKey.account_id == account_id)
        return list((await s.scalars(q)).all())


async def revoke_key(db: Database, key_id: str) -> bool:
    async with db.write() as s:
        res = await s.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
        await announce_forget(s, key_id=key_id)
    forget(key_id=key_id)
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def rotate_key(db: Database, settings: Settings, key_id: str, grace_hours: int = 24) -> IssuedKey:
    """Issue a successor with the same name, scopes and limits; the old key lives ``grace_hours`` more.

    Refused while an earlier successor is live: a second one would leave two working
    keys where the operator meant to replace one, and revoking "the new key" would not
    end the other. The check and the new key share one transaction (the old key's row
    locked), so two rotations at once cannot both pass it.
    """
    if not 1 <= grace_hours <= 168:
        raise ValueError("the grace period is 1 to 168 hours")
    async with db.write() as s:
        now = utcnow()
        old = (await s.scalars(select(ApiKey).where(ApiKey.id == key_id).with_for_update())).first()
        if old is None or old.revoked_at is not None or (
            old.expires_at is not None and as_utc(old.expires_at) <= now
        ):
            raise ValueError(f"no active key {key_id}")
        successor = (
            await s.scalars(
                select(ApiKey.id)
                .where(
                    ApiKey.rotated_from_id == key_id,
                    ApiKey.revoked_at.is_(None),
                    (ApiKey.expires_at.is_(None)) | (ApiKey.expires_at > now),
                )
                .order_by(ApiKey.created_at)
            )
        ).first()
        if successor is not None:
            raise ValueError(
                f"key {key_id} was already rotated: its successor {successor} is live; "
                "rotate the successor instead, or revoke it first"
            )
        issued = _new_key(
            settings,
            old.account_id,
            old.name,
            list(old.scopes),
            old.expires_at,
            list(old.allowed_ips),
            old.id,
        )
        await _add_key(s, issued.record)
        grace_end = now + timedelta(hours=grace_hours)
        new_expiry = grace_end if old.expires_at is None else min(as_utc(old.expires_at), grace_end)
        await s.execute(update(ApiKey).where(ApiKey.id == old.id).values(expires_at=new_expiry))
        await announce_forget(s, key_id=old.id)
    forget(key_id=old.id)
    return issued


class Authenticator:
    """Turns a bearer token into an :class:`AuthContext` or the contract's error."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.cache = AuthCache(settings.auth_cache_seconds)

    async def authenticate(self, authorization: str | None, client_ip: str | None) -> AuthContext:
        token = bearer_token(authorization)
        if token is None:
            raise ApiError("bse_authentication_required")
        region = key_region(token)
        if region is None:
            raise ApiError("bse_invalid_api_key")
        if region != self.settings.region:
            host = self.settings.host_for_region(region)
            raise ApiError(
                "bse_region_mismatch",
                f"This API key belongs to the {region} region; send it to https://{host}/v1.",
                details={"key_region": region, "key_host": host},
            )
        key_hash = hash_key(token)
        state = self.cache.get(key_hash)
        if state is None:
            state = await self._load(key_hash)
            self.cache.put(key_hash, state)
        now = utcnow()
        if state.revoked or (state.expires_at is not None and as_utc(state.expires_at) <= now):
            raise ApiError("bse_invalid_api_key")
        if not state.account_active:
            raise ApiError("bse_account_not_found")
        if not ip_allowed(client_ip, list(state.allowed_ips)):
            raise ApiError("bse_ip_not_allowed")
        last_used = state.last_used_at
        if (
            last_used is None
            or (now - as_utc(last_used)).total_seconds() >= self.settings.key_touch_interval_seconds
        ):
            async with self.db.write() as s:
                await s.execute(update(ApiKey).where(ApiKey.id == state.key_id).values(last_used_at=now))
            self.cache.touched(key_hash, now)
            last_used = now
        return AuthContext(
            account_id=state.account_id,
            key_id=state.key_id,
            key_name=state.name,
            key_prefix=state.prefix,
            scopes=state.scopes,
            plan=state.plan,
            key_created_at=state.created_at,
            key_last_used_at=last_used,
            key_expires_at=state.expires_at,
        )

    def recently_verified(self, authorization: str | None) -> bool:
        """Whether this credential is a key the cache holds as working (unrevoked, unexpired).

        Such a credential has no authentication failures to its name (only unknown,
        revoked, expired or foreign-region keys fail that way), so the per-credential
        failure window need not be consulted before authenticating it.
        """
        token = bearer_token(authorization)
        if token is None:
            return False
        state = self.cache.get(hash_key(token))
        return (
            state is not None
            and not state.revoked
            and state.account_active
            and (state.expires_at is None or as_utc(state.expires_at) > utcnow())
        )

    async def account_of(self, authorization: str | None, client_ip: str | None) -> str | None:
        """The account of a key that authenticates from ``client_ip``; None for any failure."""
        try:
            return (await self.authenticate(authorization, client_ip)).account_id
        except ApiError:
            return None

    async def _load(self, key_hash: str) -> KeyState:
        async with self.db.read() as s:
            row = (
                await s.execute(
                    select(ApiKey, Account)
                    .join(Account, Account.id == ApiKey.account_id, isouter=True)
                    .where(ApiKey.key_hash == key_hash)
                )
            ).first()
        if row is None:
            raise ApiError("bse_invalid_api_key")
        key, account = row
        return KeyState(
            key_id=key.id,
            account_id=key.account_id,
            name=key.name,
            prefix=key.prefix,
            scopes=frozenset(key.scopes),
            allowed_ips=tuple(key.allowed_ips),
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
            plan=account.plan if account is not None else "",
            account_active=account is not None and account.deleted_at is None,
        )


