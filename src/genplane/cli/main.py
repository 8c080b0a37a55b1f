"""The ``genplane`` command: serve, initialise, and manage accounts, keys, credits and webhooks;
and, for the API's users, generate and inspect through a server (``cli/user_commands.py``)."""

from __future__ import annotations

import re
import socket
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from genplane.accounts import service as accounts
from genplane.accounts.scopes import PRESETS, parse_scopes
from genplane.cli.catalog import catalog_app
from genplane.cli.common import console
from genplane.cli.common import fail as _fail
from genplane.cli.common import id_column as _id_column
from genplane.cli.common import run as _run
from genplane.cli.database import db_app
from genplane.cli.user_commands import register as register_user_commands
from genplane.cli.webhooks import webhooks_app
from genplane.clock import as_utc, iso, utcnow
from genplane.credits import alerts
from genplane.credits.ledger import add_credits
from genplane.credits.money import to_credits, to_millis
from genplane.db.engine import Database
from genplane.settings import ANOMALY_PATTERNS, Settings, get_settings
from genplane.usage.anomalies import list_anomalies

app = typer.Typer(no_args_is_help=True, help="genplane: execution control plane for generative media.")
accounts_app = typer.Typer(no_args_is_help=True, help="Accounts.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (shown once, stored as a hash).")
credits_app = typer.Typer(no_args_is_help=True, help="Credits (1 credit = 1 USD).")
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(db_app, name="db")
app.add_typer(catalog_app, name="catalog")


def parse_expiry(value: str | None) -> datetime | None:
    """'30d', '12h' or an ISO 8601 date/time (UTC when no zone is given)."""
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)([dh])", value.strip())
    if match:
        amount = int(match[1])
        expires_at = utcnow() + (timedelta(days=amount) if match[2] == "d" else timedelta(hours=amount))
    else:
        try:
            expires_at = as_utc(datetime.fromisoformat(value))
        except ValueError as exc:
            raise ValueError(f"--expires takes 30d, 12h or an ISO date, not {value!r}") from exc
    if expires_at <= utcnow():
        raise ValueError(f"--expires must be in the future, not {value!r}")
    return expires_at


#: The most credits one command takes (far inside the database's 64-bit milli-credits).
MAX_CREDITS = Decimal(1_000_000_000)


def parse_credits(value: str) -> int:
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    if amount <= 0 or amount.as_tuple().exponent < -3:  # type: ignore[operator]
        raise ValueError("credits are positive with at most three decimals")
    if amount > MAX_CREDITS:
        raise ValueError(f"at most {MAX_CREDITS:,} credits")
    return to_millis(amount)


def _print_key(key: str, key_id: str, scopes: list[str]) -> None:
    console.print(f"key id: {key_id}\nscopes: {', '.join(scopes)}")
    console.print("API key (shown once, store it now):")
    print(key)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings); 0: any free one.")] = None,
    fd: Annotated[
        int | None,
        typer.Option(help="Serve on this inherited, already listening socket (a file descriptor) instead."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=256,
            help="API processes sharing the one port (each also a worker unless GENPLANE_RUN_WORKER=false).",
        ),
    ] = 1,
) -> None:
    """Serve the API (and, unless GENPLANE_RUN_WORKER=false, the worker); --workers N: N processes."""
    import asyncio

    from genplane.api.app import create_app
    from genplane.api.connections import build_server
    from genplane.cli.processes import listening_socket, supervise
    from genplane.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level)
    host = host if host is not None else settings.host
    port = port if port is not None else settings.port
    if workers > 1:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            sock = socket.socket(fileno=fd) if fd is not None else listening_socket(host, port)
        except OSError as exc:
            raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        sock.set_inheritable(True)
        raise typer.Exit(asyncio.run(supervise(workers, sock, settings)))
    api = create_app(settings, tune_collector=True)
    try:
        server = build_server(api, settings, host=host, port=port, fd=fd)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl+C, re-raised by uvicorn once it has shut down cleanly
        pass


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            max=16384,
            help="Jobs run at once (default: GENPLANE_WORKER_CONCURRENCY, or what the in-flight caps admit).",
        ),
    ] = None,
) -> None:
    """Run generation jobs, webhook deliveries and sweeps, without the API (scaled-out installs)."""

    from genplane.cli.processes import run_on_fast_loop, run_worker
    from genplane.logs import configure_logging

    settings = get_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_on_fast_loop(run_worker(settings))


@app.command()
def init(
    quickstart: Annotated[
        bool, typer.Option(help="Create a default account (first run) and a fresh key.")
    ] = False,
) -> None:
    """Create or upgrade the database; with --quickstart also print a ready full-access key."""

    async def work(db: Database, settings: Settings) -> None:
        if not quickstart:
            console.print("database is up to date")
            return
        existing = await accounts.list_accounts(db)
        account = (
            existing[0]
            if existing
            else await accounts.create_account(db, "Default account", credits_millis=to_millis("10"))
        )
        issued = await accounts.create_key(
            db, settings, account.id, "quickstart", parse_scopes("full_access", None)
        )
        console.print(f"account: {account.id} ({escape(account.name)})")
        _print_key(issued.key, issued.record.id, list(issued.record.scopes))

    _run(work)


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Option(help="Account name.")],
    email: Annotated[str | None, typer.Option(help="Contact e-mail.")] = None,
    credits: Annotated[str, typer.Option(help="Starting credits, e.g. 25 or 0.5.")] = "0",
    organization: Annotated[
        bool, typer.Option(help="An organisation rather than a personal account.")
    ] = False,
) -> None:
    """Create an account and print its id."""
    try:
        millis = parse_credits(credits) if credits not in ("0", "0.0") else 0
    except ValueError as exc:
        raise _fail(str(exc)) from exc

    async def work(db: Database, settings: Settings) -> None:
        account = await accounts.create_account(
            db, name, email, personal=not organization, credits_millis=millis
        )
        console.print(f"account created: {account.id}")

    _run(work)


@accounts_app.command("list")
def accounts_list() -> None:
    """List accounts with their balances."""

    async def work(db: Database, settings: Settings) -> None:
        table = Table(_id_column("account id"), "name", "balance", "created", "deleted")
        for a in await accounts.list_accounts(db, include_deleted=True):
            table.add_row(
                a.id,
                escape(a.name),
                f"{to_credits(a.balance_millis):.3f}",
                iso(a.created_at),
                iso(a.deleted_at) or "",
            )
        console.print(table)

    _run(work)


@accounts_app.command("delete")
def accounts_delete(account_id: str) -> None:
    """Delete an account: its keys stop working at once (bse_account_not_found)."""

    async def work(db: Database, settings: Settings) -> None:
        if not await accounts.delete_account(db, account_id):
            raise _fail(f"no active account {account_id}")
        console.print(f"account deleted: {account_id}")

    _run(work)


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account id.")],
    name: Annotated[str, typer.Option(help="Key name (up to 100 characters).")] = "default",
    preset: Annotated[str | None, typer.Option(help=f"One of: {', '.join(PRESETS)}.")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="A scope; repeat for several.")] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h or an ISO date.")] = None,
    allow_ip: Annotated[list[str] | None, typer.Option(help="Allowed IP or CIDR; repeat (up to 50).")] = None,
) -> None:
    """Create a key and print it once."""
    try:
        scopes = parse_scopes(preset or (None if scope else "full_access"), scope)
        expires_at = parse_expiry(expires)
    except ValueError as exc:
        raise _fail(str(exc)) from exc

    async def work(db: Database, settings: Settings) -> None:
        try:
            issued = await accounts.create_key(
                db, settings, account, name, scopes, expires_at=expires_at, allowed_ips=allow_ip or []
            )
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        _print_key(issued.key, issued.record.id, scopes)

    _run(work)


@keys_app.command("list")
def keys_list(account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None) -> None:
    """List keys by prefix (the full key is never stored)."""

    async def work(db: Database, settings: Settings) -> None:
        table = Table(
            _id_column("key id"), _id_column("account"), "name", "prefix", "scopes", "expires", "state"
        )
        now = utcnow()
        for k in await accounts.list_keys(db, account):
            expired = k.expires_at is not None and as_utc(k.expires_at) <= now
            state = "revoked" if k.revoked_at else "expired" if expired else "active"
            table.add_row(
                k.id,
                k.account_id,
                escape(k.name),
                k.prefix + "…",
                ",".join(k.scopes),
                iso(k.expires_at) or "",
                state,
            )
        console.print(table)

    _run(work)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once."""

    async def work(db: Database, settings: Settings) -> None:
        if not await accounts.revoke_key(db, key_id):
            raise _fail(f"no active key {key_id}")
        console.print(f"key revoked: {key_id}")

    _run(work)


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    grace_hours: Annotated[int, typer.Option(help="Hours the old key keeps working (1-168).")] = 24,
) -> None:
    """Issue a successor key; the old one works for the grace period, then expires."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            issued = await accounts.rotate_key(db, settings, key_id, grace_hours)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(f"old key {key_id} expires in {grace_hours} h")
        _print_key(issued.key, issued.record.id, list(issued.record.scopes))

    _run(work)


@keys_app.command("anomalies")
def keys_anomalies(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key (its id).")] = None,
    pattern: Annotated[
        str | None, typer.Option(help=f"Only this pattern: {', '.join(ANOMALY_PATTERNS)}.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, latest first.")] = 100,
) -> None:
    """Patterns flagged in keys' requests (id enumeration, polling storms, failed-create bursts)."""
    if pattern is not None and pattern not in ANOMALY_PATTERNS:
        raise _fail(f"unknown pattern {pattern!r}; choose one of {', '.join(ANOMALY_PATTERNS)}")

    async def work(db: Database, settings: Settings) -> None:
        flags = await list_anomalies(db, account, key, pattern, limit)
        if not flags:
            console.print("no anomalies")
            return
        table = Table(
            _id_column("key id"),
            "prefix",
            _id_column("account"),
            "pattern",
            "detail",
            "count",
            "first seen",
            "last seen",
            "blocked until",
        )
        for f in flags:
            table.add_row(
                f.key_id,
                f.key_prefix + "…",
                f.account_id,
                f.pattern,
                escape(f.detail or ""),
                str(f.count),
                iso(f.first_seen_at),
                iso(f.last_seen_at),
                iso(f.blocked_until) or "",
            )
        console.print(table)

    _run(work)


@credits_app.command("add")
def credits_add(
    account: Annotated[str, typer.Option(help="Account id.")],
    amount: Annotated[str, typer.Argument(help="Credits to add, e.g. 10 or 2.5.")],
    note: Annotated[str | None, typer.Option(help="Ledger note.")] = None,
) -> None:
    """Add credits (a ledger 'add' row) and print the new balance."""
    try:
        millis = parse_credits(amount)
    except ValueError as exc:
        raise _fail(str(exc)) from exc

    async def work(db: Database, settings: Settings) -> None:
        try:
            balance = await add_credits(db, account, millis, note)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(f"balance: {to_credits(balance):.3f}")

    _run(work)


@credits_app.command("thresholds")
def credits_thresholds(
    account: Annotated[str, typer.Option(help="Account id.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help=f"A threshold in credits, e.g. 0.5; repeat for several (at most {alerts.MAX_THRESHOLDS}). "
            "Replaces all of the account's thresholds.",
        ),
    ] = None,
    clear: Annotated[bool, typer.Option(help="Remove every threshold: no low-balance alerts.")] = False,
) -> None:
    """Show or replace the low-balance thresholds; each sends credits.low_balance once per descent."""
    if set_ and clear:
        raise _fail("--set and --clear cannot be used together")
    try:
        chosen = sorted({parse_credits(value) for value in set_ or []})
    except ValueError as exc:
        raise _fail(f"bad threshold: {exc}") from exc
    if len(chosen) > alerts.MAX_THRESHOLDS:
        raise _fail(f"at most {alerts.MAX_THRESHOLDS} thresholds, not {len(chosen)}")

    async def work(db: Database, settings: Settings) -> None:
        try:
            if chosen or clear:
                await alerts.replace_thresholds(db, account, chosen)
            balance, rows = await alerts.account_thresholds(db, account)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(f"account: {account}\nbalance: {to_credits(balance):.3f}")
        if not rows:
            console.print("no low-balance thresholds")
            return
        table = Table("threshold", "state")
        for threshold, armed in reversed(rows):
            table.add_row(
                f"{to_credits(threshold):.3f}",
                "armed" if armed else "crossed (re-arms when the balance is back at or above it)",
            )
        console.print(table)

    _run(work)


@app.command()
def openapi() -> None:
    """Print the OpenAPI 3.0.3 document (the committed openapi.yaml is this output)."""
    import tempfile
    from pathlib import Path

    from genplane.api.app import create_app
    from genplane.api.openapi import build_openapi, to_yaml

    with tempfile.TemporaryDirectory() as scratch:  # the document must not depend on local data
        app = create_app(get_settings().model_copy(update={"data_dir": Path(scratch)}))
        print(to_yaml(build_openapi(app)), end="")


# generate, models, estimate, content, usage, status: the API's user, through a server (last in --help).
register_user_commands(app)
