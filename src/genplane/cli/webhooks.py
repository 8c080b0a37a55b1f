"""``genplane webhooks``: the operator's commands for webhook endpoints.

They change the database only; the dispatcher inside the running ``genplane serve``
sends what they queue. A signing secret is printed by ``add`` and ``rotate-secret``
only, once: it is derived from ``GENPLANE_SECRET_KEY`` (or ``<data_dir>/secret.key``)
and never stored, and no other command shows it.
"""

from __future__ import annotations

from typing import Annotated

import httpx
import typer
from rich.markup import escape
from rich.table import Column, Table

from genplane.accounts import service as accounts
from genplane.cli import common
from genplane.clock import iso
from genplane.db.engine import Database
from genplane.net.fetch import PinnedFetcher
from genplane.settings import Settings
from genplane.webhooks import endpoints
from genplane.webhooks.outbox import SUBSCRIBABLE

webhooks_app = typer.Typer(
    no_args_is_help=True,
    help="Webhook endpoints: signed events sent to your URLs, retried, and replayable.",
)

SERVER = "the running server (genplane serve)"


def _print_record(fields: list[tuple[str, str]]) -> None:
    """One item as label/value lines, then a blank line: readable whole in an 80-column terminal."""
    grid = Table.grid(Column(no_wrap=True), Column(overflow="fold"), padding=(0, 2))
    for label, value in fields:
        grid.add_row(label, escape(value))
    common.console.print(grid)
    common.console.print()


def _print_secret(secret: str) -> None:
    common.console.print("signing secret (shown once, store it now; it cannot be shown again):")
    print(secret)


@webhooks_app.command("add")
def add(
    account: Annotated[str, typer.Option(help="Account id.")],
    url: Annotated[str, typer.Option(help="Destination: an http(s) URL on a public address.")],
    event: Annotated[
        list[str] | None,
        typer.Option(help=f"An event to send; repeat for several (default: {', '.join(SUBSCRIBABLE)})."),
    ] = None,
) -> None:
    """Register a destination for an account's events and print its signing secret once."""
    try:
        events = endpoints.check_events(event)
    except ValueError as exc:
        raise common.fail(str(exc)) from exc

    async def work(db: Database, settings: Settings) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            guard = PinnedFetcher(client, settings.webhook_allow_hosts)
            try:
                created = await endpoints.add_endpoint(db, settings, guard, account, url, events)
            except ValueError as exc:
                raise common.fail(str(exc)) from exc
        endpoint = created.endpoint
        common.console.print(
            f"webhook endpoint: {endpoint.id}\naccount: {endpoint.account_id}\n"
            f"url: {escape(endpoint.url)}\nevents: {', '.join(endpoint.events)}",
            soft_wrap=True,
        )
        _print_secret(created.secret)

    common.run(work)


@webhooks_app.command("list")
def list_(account: Annotated[str | None, typer.Option(help="Only this account's endpoints.")] = None) -> None:
    """List endpoints with their state, failures in a row and dead letters (never their secrets)."""

    async def work(db: Database, settings: Settings) -> None:
        if account and await accounts.get_account(db, account) is None:
            raise common.fail(f"no account {account}")
        rows = await endpoints.list_endpoints(db, account)
        dead = await endpoints.dead_letter_counts(db, account)
        if not rows:
            common.console.print("no webhook endpoints")
            return
        for e in rows:
            state = "enabled" if e.enabled else f"disabled: {e.disabled_reason or 'no reason recorded'}"
            _print_record(
                [
                    ("endpoint id", e.id),
                    ("account", e.account_id),
                    ("url", e.url),
                    ("events", ", ".join(e.events or [])),
                    ("state", state),
                    ("failures in a row", str(e.consecutive_failures)),
                    ("dead letters", str(dead.get(e.id, 0))),
                ]
            )

    common.run(work)


@webhooks_app.command("rotate-secret")
def rotate_secret(endpoint_id: str) -> None:
    """Issue a new signing secret and print it once; the old one stops signing at once."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            secret = await endpoints.rotate_secret(db, settings, endpoint_id)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        common.console.print(
            f"secret rotated for {endpoint_id}: every delivery from now on, retries included, "
            "is signed with the new secret; deliveries the receiver refuses meanwhile are retried.",
            soft_wrap=True,
        )
        _print_secret(secret)

    common.run(work)


@webhooks_app.command("disable")
def disable(endpoint_id: str) -> None:
    """Stop sending to an endpoint; its pending and future events go to the dead-letter list."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            await endpoints.set_enabled(db, endpoint_id, False)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        common.console.print(
            f"webhook endpoint disabled: {endpoint_id}\n"
            "its pending and future events go to the dead-letter list (enable, then replay them)",
            soft_wrap=True,
        )

    common.run(work)


@webhooks_app.command("enable")
def enable(endpoint_id: str) -> None:
    """Send to an endpoint again (its failure count restarts at zero)."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            await endpoints.set_enabled(db, endpoint_id, True)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        common.console.print(
            f"webhook endpoint enabled: {endpoint_id}\n"
            f"dead letters stay where they are until `genplane webhooks replay {endpoint_id}`",
            soft_wrap=True,
        )

    common.run(work)


@webhooks_app.command("test")
def send_test(endpoint_id: str) -> None:
    """Queue a webhook.test event for this endpoint only."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            if not (await endpoints.get_endpoint(db, endpoint_id)).enabled:
                raise ValueError("the endpoint is disabled; enable it before sending a test")
            event_id = await endpoints.send_test(db, endpoint_id)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        common.console.print(
            f"webhook.test queued for {endpoint_id} (event {event_id}); {SERVER} delivers it",
            soft_wrap=True,
        )

    common.run(work)


@webhooks_app.command("replay")
def replay(endpoint_id: str) -> None:
    """Send an endpoint's dead letters again, as new deliveries with fresh delivery ids."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            count = await endpoints.replay(db, endpoint_id)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        noun = "dead letter" if count == 1 else "dead letters"
        suffix = f" with fresh delivery ids; {SERVER} delivers them" if count else ""
        common.console.print(f"{count} {noun} re-queued for {endpoint_id}{suffix}", soft_wrap=True)

    common.run(work)


@webhooks_app.command("dead-letters")
def dead_letters(endpoint_id: str) -> None:
    """List an endpoint's dead-lettered deliveries (kept GENPLANE_WEBHOOK_DEAD_LETTER_HOURS)."""

    async def work(db: Database, settings: Settings) -> None:
        try:
            rows = await endpoints.dead_letters_with_events(db, endpoint_id)
        except ValueError as exc:
            raise common.fail(str(exc)) from exc
        if not rows:
            common.console.print(f"no dead letters for {endpoint_id}")
            return
        for row in rows:
            d = row.delivery
            _print_record(
                [
                    ("delivery id", d.id),
                    ("event", row.event_type),
                    ("attempts", str(d.attempts)),
                    ("last error", d.last_error or "none (never sent)"),
                    ("dead since", iso(d.finished_at or d.created_at) or ""),
                ]
            )

    common.run(work)
