"""``genplane webhooks`` and ``genplane credits thresholds`` on a data directory.

Each test drives the real typer app with ``CliRunner`` on its own data directory and
checks what the database then holds. Where a command queues something, the real
dispatcher (``WebhookDispatcher.run_due``) sends it through an ``httpx.MockTransport``
receiver, so the signatures checked are the ones a receiver would get, made with the
secret the CLI printed. Every refused command must exit non-zero with an ``error:``
line, print no secret, and leave the database (and the secret key file) as it was.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner, Result

from genplane.cli import common
from genplane.cli import main as cli_main
from genplane.cli.main import app as cli_app
from genplane.db.engine import Database
from genplane.db.models import Account, CreditAlert, WebhookDelivery, WebhookEndpoint, WebhookEvent
from genplane.jobs.fetch import FileFetcher
from genplane.net import fetch
from genplane.settings import Settings, get_settings
from genplane.webhooks import WebhookVerificationError, verify
from genplane.webhooks.delivery import WebhookDispatcher
from genplane.webhooks.outbox import SUBSCRIBABLE
from genplane.webhooks.secrets import endpoint_secret, server_key
from genplane.webhooks.signing import babysea_signature
from tests.conftest import make_settings

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SECRET_RE = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")
HOOK_HOST = "hooks.test"  # allow-listed in every test: it is never resolved
HOOK_URL = f"https://{HOOK_HOST}/genplane"
PUBLIC_URL = "https://93.184.216.34/hook"  # a literal public address: checked without DNS


# --- harness -------------------------------------------------------------------------------------


@dataclass
class Cli:
    data_dir: Path
    runner: CliRunner
    monkeypatch: pytest.MonkeyPatch
    allow_hosts: str = f'["{HOOK_HOST}"]'
    secret_key: str = ""

    def run(self, *args: str, columns: int = 400) -> Result:
        """One ``genplane`` invocation; a wide terminal unless the test asks for another."""
        get_settings.cache_clear()  # settings are cached per process; each test has its own dir
        console = Console(width=columns)
        self.monkeypatch.setattr(common, "console", console)
        self.monkeypatch.setattr(cli_main, "console", console)
        env = {
            "GENPLANE_DATA_DIR": str(self.data_dir),
            "GENPLANE_DATABASE_URL": "",
            "GENPLANE_REGION": "us",
            "GENPLANE_WEBHOOK_ALLOW_HOSTS": self.allow_hosts,
            "GENPLANE_SECRET_KEY": self.secret_key,
            "COLUMNS": str(columns),
        }
        return self.runner.invoke(cli_app, list(args), env=env)

    def ok(self, *args: str, **kw: Any) -> str:
        result = self.run(*args, **kw)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    def fails(self, *args: str, expect: str) -> str:
        """The command exits non-zero with a clean ``error:`` message naming ``expect``."""
        before = self.snapshot()
        result = self.run(*args)
        assert result.exit_code != 0, (args, result.output)
        assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
        assert "error:" in result.output, result.output
        assert expect in " ".join(result.output.split()), result.output
        assert not SECRET_RE.search(result.output), "a secret was printed by a failed command"
        assert self.snapshot() == before, "a failed command changed the data"
        return result.output

    # -- what the data directory holds -----------------------------------------------------------

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"run_worker": False, "webhook_allow_hosts": [HOOK_HOST]}
        if self.secret_key:
            values["secret_key"] = self.secret_key
        return make_settings(self.data_dir, **{**values, **overrides})

    def query(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(session)`` on a read session of this data directory."""

        async def main() -> Any:
            db = Database(self.settings().resolved_database_url)
            try:
                async with db.read() as s:
                    return await work(s)
            finally:
                await db.dispose()

        return asyncio.run(main())

    def endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        async def work(s: Any) -> WebhookEndpoint:
            row = await s.get(WebhookEndpoint, endpoint_id)
            assert row is not None
            return row  # type: ignore[no-any-return]

        return self.query(work)  # type: ignore[no-any-return]

    def deliveries(self, endpoint_id: str) -> list[tuple[WebhookDelivery, str]]:
        async def work(s: Any) -> list[tuple[WebhookDelivery, str]]:
            rows = await s.execute(
                select(WebhookDelivery, WebhookEvent.type)
                .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.created_at)
            )
            return [(d, t) for d, t in rows.all()]

        return self.query(work)  # type: ignore[no-any-return]

    def alerts(self, account_id: str) -> list[tuple[int, bool]]:
        async def work(s: Any) -> list[tuple[int, bool]]:
            rows = await s.execute(
                select(CreditAlert.threshold_millis, CreditAlert.armed)
                .where(CreditAlert.account_id == account_id)
                .order_by(CreditAlert.threshold_millis)
            )
            return [(int(t), bool(a)) for t, a in rows.all()]

        return self.query(work)  # type: ignore[no-any-return]

    def snapshot(self) -> tuple[Any, ...]:
        async def work(s: Any) -> tuple[Any, ...]:
            accounts = (await s.scalars(select(Account).order_by(Account.id))).all()
            endpoints = (await s.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id))).all()
            deliveries = (await s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all()
            events = (await s.scalars(select(WebhookEvent.id).order_by(WebhookEvent.id))).all()
            alerts = (await s.execute(select(CreditAlert).order_by(CreditAlert.account_id))).scalars().all()
            return (
                [(a.id, a.balance_millis, a.deleted_at) for a in accounts],
                [
                    (
                        e.id,
                        e.account_id,
                        e.url,
                        tuple(e.events),
                        e.secret_version,
                        e.enabled,
                        e.disabled_reason,
                        e.consecutive_failures,
                    )
                    for e in endpoints
                ],
                [(d.id, d.event_id, d.status, d.attempts, d.next_attempt_at) for d in deliveries],
                list(events),
                sorted((a.account_id, a.threshold_millis, a.armed) for a in alerts),
            )

        key_file = (self.data_dir / "secret.key").exists()
        if not (self.data_dir / "genplane.db").exists():
            return (key_file,)
        return (key_file, self.query(work))

    # -- shortcuts ----------------------------------------------------------------------------------

    def create_account(self, credits: str = "25") -> str:
        out = self.ok("accounts", "create", "--name", "Acme Studio", "--credits", credits)
        match = re.search(rf"account created: ({UUID})", out)
        assert match, out
        return match[1]

    def add(self, account: str, url: str = HOOK_URL, *events: str) -> tuple[str, str, str]:
        """``webhooks add``: (endpoint id, the printed secret, the whole output)."""
        args = [arg for event in events for arg in ("--event", event)]
        out = self.ok("webhooks", "add", "--account", account, "--url", url, *args)
        match = re.search(rf"webhook endpoint: ({UUID})", out)
        assert match, out
        return match[1], printed_secret(out), out

    def dispatch(
        self, respond: Callable[[httpx.Request], httpx.Response] | None = None, **overrides: Any
    ) -> list[httpx.Request]:
        """Send what is due now with the real dispatcher; returns the requests it made."""
        sent: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return respond(request) if respond else httpx.Response(200)

        async def main() -> None:
            settings = self.settings(**overrides)
            db = Database(settings.resolved_database_url)
            try:
                async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
                    guard = FileFetcher(client, settings.webhook_allow_hosts)
                    await WebhookDispatcher(db, settings, client, guard).run_due()
            finally:
                await db.dispose()

        asyncio.run(main())
        return sent


def printed_secret(output: str) -> str:
    secrets = SECRET_RE.findall(output)
    assert len(secrets) == 1, output
    assert "shown once" in output, output
    secret: str = secrets[0]
    return secret


def field(output: str, label: str) -> list[str]:
    """The values of ``label`` in a listing, one per item."""
    return [line[len(label) :].strip() for line in output.splitlines() if line.startswith(label + "  ")]


def signed_payload(request: httpx.Request, secret: str) -> dict[str, Any]:
    return verify(request.content, request.headers["X-BabySea-Signature"], secret)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    yield Cli(tmp_path / "data", CliRunner(), monkeypatch)
    get_settings.cache_clear()


# --- add and list ---------------------------------------------------------------------------------


def test_add_prints_the_id_and_the_secret_once_and_list_never_shows_it(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, secret, out = cli.add(acme, HOOK_URL, "generation.completed", "credits.low_balance")
    assert f"account: {acme}" in out and f"url: {HOOK_URL}" in out
    assert "events: generation.completed, credits.low_balance" in out
    assert out.count(secret) == 1

    # The printed secret is the one deliveries are signed with: derived, not stored.
    assert secret == endpoint_secret(server_key(cli.settings()), endpoint_id, 1)
    row = cli.endpoint(endpoint_id)
    assert (row.account_id, row.url, row.events, row.enabled) == (
        acme,
        HOOK_URL,
        ["generation.completed", "credits.low_balance"],
        True,
    )
    assert secret not in repr(cli.snapshot())

    listing = cli.ok("webhooks", "list")
    assert "whsec_" not in listing and secret not in listing
    assert field(listing, "endpoint id") == [endpoint_id]
    assert field(listing, "account") == [acme]
    assert field(listing, "url") == [HOOK_URL]
    assert field(listing, "events") == ["generation.completed, credits.low_balance"]
    assert field(listing, "state") == ["enabled"]
    assert field(listing, "failures in a row") == ["0"]
    assert field(listing, "dead letters") == ["0"]


def test_add_subscribes_to_every_event_by_default_and_list_filters_by_account(cli: Cli) -> None:
    acme, other = cli.create_account(), cli.create_account()
    acme_hook, _, out = cli.add(acme)
    other_hook, _, _ = cli.add(other, PUBLIC_URL, "generation.failed")
    assert f"events: {', '.join(SUBSCRIBABLE)}" in out
    assert "webhook.test" not in cli.endpoint(acme_hook).events  # sent on request only

    assert field(cli.ok("webhooks", "list"), "endpoint id") == [acme_hook, other_hook]
    only_other = cli.ok("webhooks", "list", "--account", other)
    assert field(only_other, "endpoint id") == [other_hook]
    assert field(only_other, "url") == [PUBLIC_URL]
    assert "whsec_" not in only_other


def test_list_with_no_endpoints(cli: Cli) -> None:
    acme = cli.create_account()
    assert "no webhook endpoints" in cli.ok("webhooks", "list")
    assert "no webhook endpoints" in cli.ok("webhooks", "list", "--account", acme)


def test_secrets_derive_from_genplane_secret_key(cli: Cli) -> None:
    cli.secret_key = "the-same-value-on-every-process"
    acme = cli.create_account()
    endpoint_id, secret, _ = cli.add(acme)
    assert secret == endpoint_secret(b"the-same-value-on-every-process", endpoint_id, 1)
    assert not (cli.data_dir / "secret.key").exists()


def test_without_genplane_secret_key_one_is_generated_once_into_the_data_dir(cli: Cli) -> None:
    acme = cli.create_account()
    first, first_secret, _ = cli.add(acme)
    key_file = cli.data_dir / "secret.key"
    key = key_file.read_bytes()
    assert key_file.stat().st_mode & 0o777 == 0o600
    second, second_secret, _ = cli.add(acme)
    assert key_file.read_bytes() == key  # reused, not regenerated
    assert first_secret == endpoint_secret(key.strip(), first, 1)
    assert second_secret == endpoint_secret(key.strip(), second, 1) != first_secret


def test_a_hostname_is_accepted_when_it_resolves_to_public_addresses_only(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"hooks.example.com": ["93.184.216.34"], "intranet.example.com": ["93.184.216.34", "10.1.2.3"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(fetch, "system_resolver", resolver)
    acme = cli.create_account()
    endpoint_id, _, _ = cli.add(acme, "https://hooks.example.com/in")
    assert cli.endpoint(endpoint_id).url == "https://hooks.example.com/in"
    cli.fails(
        "webhooks",
        "add",
        "--account",
        acme,
        "--url",
        "https://intranet.example.com/in",
        expect="the host intranet.example.com resolves to a non-public address",
    )


def test_a_local_receiver_needs_genplane_webhook_allow_hosts(cli: Cli) -> None:
    acme = cli.create_account()
    cli.allow_hosts = "[]"
    cli.fails(
        "webhooks",
        "add",
        "--account",
        acme,
        "--url",
        "http://127.0.0.1:8080/hook",
        expect="the URL cannot receive webhooks: the URL points to a non-public address",
    )
    cli.allow_hosts = '["127.0.0.1"]'
    endpoint_id, _, _ = cli.add(acme, "http://127.0.0.1:8080/hook")
    assert cli.endpoint(endpoint_id).url == "http://127.0.0.1:8080/hook"


BAD_URLS = [
    ("http://localhost/hook", "the URL cannot receive webhooks"),
    ("http://127.0.0.1/hook", "non-public address"),
    ("http://10.0.0.8/hook", "non-public address"),
    ("http://192.168.1.20:8080/hook", "non-public address"),
    ("http://169.254.169.254/latest/meta-data", "non-public address"),
    ("http://[::1]/hook", "non-public address"),
    ("http://[fd00::1]/hook", "non-public address"),
    ("http://224.0.0.1/hook", "non-public address"),
    ("ftp://93.184.216.34/hook", "only http and https URLs are accepted"),
    ("https://user:pw@93.184.216.34/hook", "URLs with credentials"),
    ("not a url", "the URL cannot receive webhooks"),
    (PUBLIC_URL + "?q=" + "x" * 2048, "the URL is longer than 2048 characters"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_non_public_or_malformed_urls_are_refused(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return {"localhost": ["127.0.0.1"]}[host]

    monkeypatch.setattr(fetch, "system_resolver", resolver)
    acme = cli.create_account()
    cli.fails("webhooks", "add", "--account", acme, "--url", url, expect=message)
    assert not (cli.data_dir / "secret.key").exists()


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (["generation.done"], "unknown events ['generation.done']; known: generation.started"),
        (["generation.completed", "nope"], "unknown events ['nope']"),
        (["webhook.test"], "unknown events ['webhook.test']"),  # sent by `webhooks test` only
    ],
)
def test_unknown_event_names_are_refused(cli: Cli, events: list[str], message: str) -> None:
    acme = cli.create_account()
    args = [arg for event in events for arg in ("--event", event)]
    cli.fails("webhooks", "add", "--account", acme, "--url", HOOK_URL, *args, expect=message)


def test_unknown_or_deleted_accounts_get_no_endpoint(cli: Cli) -> None:
    acme = cli.create_account()
    ghost = str(uuid.uuid4())
    cli.fails("webhooks", "add", "--account", ghost, "--url", HOOK_URL, expect=f"no account {ghost}")
    cli.ok("accounts", "delete", acme)
    cli.fails("webhooks", "add", "--account", acme, "--url", HOOK_URL, expect=f"no account {acme}")
    cli.fails("webhooks", "list", "--account", ghost, expect=f"no account {ghost}")


# --- rotate-secret ----------------------------------------------------------------------------------


def test_rotate_secret_prints_a_new_secret_and_the_old_one_stops_verifying(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, old, _ = cli.add(acme)
    out = cli.ok("webhooks", "rotate-secret", endpoint_id)
    new = printed_secret(out)
    assert new != old and old not in out
    assert new == endpoint_secret(server_key(cli.settings()), endpoint_id, 2)
    assert cli.endpoint(endpoint_id).secret_version == 2
    listing = cli.ok("webhooks", "list")
    assert "whsec_" not in listing and new not in listing

    body = b'{"webhook_event":"webhook.test"}'
    now = int(time.time())
    header = babysea_signature(new, now, body)
    assert verify(body, header, new) == {"webhook_event": "webhook.test"}
    with pytest.raises(WebhookVerificationError, match="does not match"):
        verify(body, header, old)

    # What the dispatcher sends from now on is signed with the new secret only.
    cli.ok("webhooks", "test", endpoint_id)
    (request,) = cli.dispatch()
    assert signed_payload(request, new)["webhook_event"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        signed_payload(request, old)

    again = printed_secret(cli.ok("webhooks", "rotate-secret", endpoint_id))
    assert again not in (old, new)


# --- test -----------------------------------------------------------------------------------------------


def test_test_queues_webhook_test_for_that_endpoint_only(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, secret, _ = cli.add(acme, HOOK_URL, "generation.completed")
    sibling, _, _ = cli.add(acme)
    out = cli.ok("webhooks", "test", endpoint_id)
    assert "webhook.test queued" in out and "genplane serve" in out
    assert "whsec_" not in out
    ((delivery, event_type),) = cli.deliveries(endpoint_id)
    assert (event_type, delivery.status, delivery.attempts) == ("webhook.test", "pending", 0)
    assert cli.deliveries(sibling) == []

    (request,) = cli.dispatch()
    payload = signed_payload(request, secret)
    assert str(request.url) == HOOK_URL
    assert request.headers["X-BabySea-Event"] == "webhook.test" == payload["webhook_event"]
    assert request.headers["X-BabySea-Delivery-Id"] == delivery.id == payload["webhook_delivery_id"]
    assert payload["webhook_data"]["account_id"] == acme
    assert cli.deliveries(endpoint_id)[0][0].status == "delivered"


# --- disable, enable, dead letters, replay ------------------------------------------------------------------


def test_disable_and_enable(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, _, _ = cli.add(acme)
    cli.ok("webhooks", "test", endpoint_id)  # pending when the endpoint is disabled

    out = cli.ok("webhooks", "disable", endpoint_id)
    assert f"webhook endpoint disabled: {endpoint_id}" in out and "dead-letter" in out
    listing = cli.ok("webhooks", "list")
    assert field(listing, "state") == ["disabled: disabled by the operator"]
    assert field(listing, "dead letters") == ["1"]
    assert [d.status for d, _ in cli.deliveries(endpoint_id)] == ["dead"]
    cli.fails(
        "webhooks", "test", endpoint_id, expect="the endpoint is disabled; enable it before sending a test"
    )
    assert cli.dispatch() == []

    out = cli.ok("webhooks", "enable", endpoint_id)
    assert f"webhook endpoint enabled: {endpoint_id}" in out and f"replay {endpoint_id}" in out
    listing = cli.ok("webhooks", "list")
    assert field(listing, "state") == ["enabled"]
    assert field(listing, "dead letters") == ["1"]  # kept until replayed
    assert [d.status for d, _ in cli.deliveries(endpoint_id)] == ["dead"]


def test_failures_disable_the_endpoint_then_dead_letters_replay_with_fresh_ids(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, secret, _ = cli.add(acme)
    assert "no dead letters" in cli.ok("webhooks", "dead-letters", endpoint_id)
    cli.ok("webhooks", "test", endpoint_id)

    # One failure is enough to disable the endpoint when the limit is one.
    (failed,) = cli.dispatch(lambda _: httpx.Response(500), webhook_max_consecutive_failures=1)
    dead_id = failed.headers["X-BabySea-Delivery-Id"]
    listing = cli.ok("webhooks", "list")
    assert field(listing, "state") == ["disabled: a delivery failed 1 times in a row; last: HTTP 500"]
    assert field(listing, "failures in a row") == ["1"]
    assert field(listing, "dead letters") == ["1"]

    dead = cli.ok("webhooks", "dead-letters", endpoint_id)
    assert field(dead, "delivery id") == [dead_id]
    assert field(dead, "event") == ["webhook.test"]
    assert field(dead, "attempts") == ["1"]
    assert field(dead, "last error") == ["HTTP 500"]
    (since,) = field(dead, "dead since")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", since)

    cli.fails(
        "webhooks", "replay", endpoint_id, expect="the endpoint is disabled; enable it before replaying"
    )
    cli.ok("webhooks", "enable", endpoint_id)
    out = cli.ok("webhooks", "replay", endpoint_id)
    assert f"1 dead letter re-queued for {endpoint_id} with fresh delivery ids" in out
    assert "genplane serve" in out
    assert "no dead letters" in cli.ok("webhooks", "dead-letters", endpoint_id)
    assert field(cli.ok("webhooks", "list"), "dead letters") == ["0"]

    (resent,) = cli.dispatch()
    fresh_id = resent.headers["X-BabySea-Delivery-Id"]
    assert fresh_id != dead_id
    assert signed_payload(resent, secret)["webhook_delivery_id"] == fresh_id
    statuses = {d.id: d.status for d, _ in cli.deliveries(endpoint_id)}
    assert statuses == {dead_id: "replayed", fresh_id: "delivered"}

    assert f"0 dead letters re-queued for {endpoint_id}" in cli.ok("webhooks", "replay", endpoint_id)


def test_dead_letters_of_an_operator_disable_were_never_sent(cli: Cli) -> None:
    acme = cli.create_account()
    endpoint_id, _, _ = cli.add(acme)
    cli.ok("webhooks", "test", endpoint_id)
    cli.ok("webhooks", "test", endpoint_id)
    cli.ok("webhooks", "disable", endpoint_id)
    dead = cli.ok("webhooks", "dead-letters", endpoint_id)
    assert field(dead, "delivery id") == [d.id for d, _ in cli.deliveries(endpoint_id)]
    assert field(dead, "attempts") == ["0", "0"]
    assert field(dead, "last error") == ["none (never sent)"] * 2
    cli.ok("webhooks", "enable", endpoint_id)
    assert "2 dead letters re-queued" in cli.ok("webhooks", "replay", endpoint_id)
    assert len(cli.dispatch()) == 2


@pytest.mark.parametrize("command", ["rotate-secret", "disable", "enable", "test", "replay", "dead-letters"])
def test_unknown_endpoint_ids_are_refused(cli: Cli, command: str) -> None:
    acme = cli.create_account()
    cli.add(acme)
    ghost = str(uuid.uuid4())
    cli.fails("webhooks", command, ghost, expect=f"no webhook endpoint {ghost}")


def test_listings_show_whole_ids_and_urls_in_an_80_column_terminal(cli: Cli) -> None:
    acme = cli.create_account()
    long_url = (
        f"https://{HOOK_HOST}/a/rather/long/path/for/a/receiver/that/needs/folding?token=abcdef0123456789"
    )
    endpoint_id, _, _ = cli.add(acme, long_url)
    cli.ok("webhooks", "test", endpoint_id)
    cli.ok("webhooks", "disable", endpoint_id)
    listing = cli.ok("webhooks", "list", columns=80)
    assert max(len(line) for line in listing.splitlines()) <= 80
    assert field(listing, "endpoint id") == [endpoint_id]
    assert field(listing, "account") == [acme]
    assert long_url in "".join(line.strip() for line in listing.splitlines())
    assert "disabled by the operator" in listing
    dead = cli.ok("webhooks", "dead-letters", endpoint_id, columns=80)
    assert field(dead, "delivery id") == [cli.deliveries(endpoint_id)[0][0].id]


# --- credits thresholds ------------------------------------------------------------------------------


def thresholds_shown(output: str) -> list[tuple[str, str]]:
    rows = re.findall(r"│\s*(\d+\.\d{3})\s*│\s*(armed|crossed)", output)
    return [(t, s) for t, s in rows]


def test_thresholds_show_the_default(cli: Cli) -> None:
    acme = cli.create_account(credits="25")
    out = cli.ok("credits", "thresholds", "--account", acme)
    assert f"account: {acme}" in out and "balance: 25.000" in out
    assert thresholds_shown(out) == [("0.500", "armed")]
    poor = cli.create_account(credits="0")
    assert thresholds_shown(cli.ok("credits", "thresholds", "--account", poor)) == [("0.500", "crossed")]


def test_thresholds_set_and_show_round_trip(cli: Cli) -> None:
    acme = cli.create_account(credits="25")
    values = ["--set", "30", "--set", "0.5", "--set", "2.125", "--set", "2.125"]
    out = cli.ok("credits", "thresholds", "--account", acme, *values)
    # Highest first; one above the balance starts crossed (it fires on a later descent only).
    expected = [("30.000", "crossed"), ("2.125", "armed"), ("0.500", "armed")]
    assert thresholds_shown(out) == expected
    assert cli.alerts(acme) == [(500, True), (2125, True), (30000, False)]
    assert thresholds_shown(cli.ok("credits", "thresholds", "--account", acme)) == expected

    # The balance coming back above a crossed threshold re-arms it.
    cli.ok("credits", "add", "--account", acme, "10")
    assert thresholds_shown(cli.ok("credits", "thresholds", "--account", acme))[0] == ("30.000", "armed")

    # Setting again replaces them all; --clear removes them.
    cli.ok("credits", "thresholds", "--account", acme, "--set", "1")
    assert cli.alerts(acme) == [(1000, True)]
    ten = [arg for n in range(1, 11) for arg in ("--set", str(n))]
    cli.ok("credits", "thresholds", "--account", acme, *ten)
    assert len(cli.alerts(acme)) == 10
    out = cli.ok("credits", "thresholds", "--account", acme, "--clear")
    assert "no low-balance thresholds" in out and cli.alerts(acme) == []


BAD_THRESHOLDS = [
    (["0"], "credits are positive"),
    (["-1"], "credits are positive"),
    (["1.2345"], "at most three decimals"),
    (["abc"], "not an amount: 'abc'"),
    (["NaN"], "not an amount: 'NaN'"),
    (["Infinity"], "not an amount: 'Infinity'"),
    (["1e30"], "at most 1,000,000,000 credits"),
    ([str(n) for n in range(1, 12)], "at most 10 thresholds, not 11"),
]


@pytest.mark.parametrize(("values", "message"), BAD_THRESHOLDS)
def test_bad_thresholds_are_refused(cli: Cli, values: list[str], message: str) -> None:
    acme = cli.create_account(credits="25")
    args = [arg for value in values for arg in ("--set", value)]
    cli.fails("credits", "thresholds", "--account", acme, *args, expect=message)
    assert cli.alerts(acme) == [(500, True)]


def test_thresholds_of_unknown_or_deleted_accounts_are_refused(cli: Cli) -> None:
    acme = cli.create_account()
    ghost = str(uuid.uuid4())
    cli.fails("credits", "thresholds", "--account", ghost, expect=f"no account {ghost}")
    cli.fails("credits", "thresholds", "--account", ghost, "--set", "1", expect=f"no active account {ghost}")
    cli.ok("accounts", "delete", acme)
    cli.fails("credits", "thresholds", "--account", acme, "--set", "1", expect=f"no active account {acme}")
    cli.fails("credits", "thresholds", "--account", acme, "--clear", expect=f"no active account {acme}")
    cli.fails(
        "credits", "thresholds", "--account", acme, "--set", "1", "--clear", expect="cannot be used together"
    )


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity"])
def test_credits_add_refuses_non_numbers_without_a_traceback(cli: Cli, amount: str) -> None:
    acme = cli.create_account(credits="25")
    cli.fails("credits", "add", "--account", acme, amount, expect=f"not an amount: {amount!r}")


# --- the README's Webhooks section works as printed ------------------------------------------------------

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def readme_blocks(language: str) -> list[str]:
    return re.findall(
        rf"^```{language}\n(.*?)^```", readme_section("Webhooks"), flags=re.MULTILINE | re.DOTALL
    )


def test_readme_webhook_commands_run_as_printed(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return {"hooks.example.com": ["93.184.216.34"]}[host]

    monkeypatch.setattr(fetch, "system_resolver", resolver)
    acme = cli.create_account()
    names = {"<account_id>": acme}
    ran: list[str] = []
    for block in readme_blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            assert words[0] == ".venv/bin/genplane", line
            args = [names.get(word, word) for word in words[1:]]
            out = cli.ok(*args)
            if args[:2] == ["webhooks", "add"]:
                names["<endpoint_id>"] = re.search(rf"webhook endpoint: ({UUID})", out)[1]  # type: ignore[index]
            ran.append(" ".join(args[:2]))
    assert set(ran) == {
        *(f"webhooks {c}" for c in ("add", "list", "test", "rotate-secret", "disable", "enable")),
        *(f"webhooks {c}" for c in ("dead-letters", "replay")),
        "credits thresholds",
    }
    assert cli.alerts(acme) == []  # the last README line clears them


def test_readme_receiver_verifies_a_real_delivery(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = cli.create_account()
    endpoint_id, secret, _ = cli.add(acme)
    cli.ok("webhooks", "test", endpoint_id)
    (request,) = cli.dispatch()

    (source,) = readme_blocks("python")
    monkeypatch.setenv("GENPLANE_WEBHOOK_SECRET", secret)
    receiver: dict[str, Any] = {"__name__": "receiver"}
    exec(compile(source, "README.md receiver.py", "exec"), receiver)

    async def post(body: bytes, headers: dict[str, str]) -> int:
        transport = httpx.ASGITransport(app=receiver["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            return (await client.post("/genplane", content=body, headers=headers)).status_code

    headers = dict(request.headers)  # lower-case names
    unsigned = {k: v for k, v in headers.items() if k != "x-babysea-signature"}
    assert asyncio.run(post(request.content, headers)) == 204
    assert asyncio.run(post(request.content, headers)) == 204  # the retry of a delivery: accepted once
    queued = receiver["events"]
    assert queued.qsize() == 1
    assert queued.get_nowait()["webhook_delivery_id"] == request.headers["X-BabySea-Delivery-Id"]

    tampered = request.content.replace(b"webhook.test", b"webhook.tset")
    assert asyncio.run(post(tampered, headers)) == 400
    stale = babysea_signature(secret, int(time.time()) - 301, request.content)
    assert asyncio.run(post(request.content, {**unsigned, "x-babysea-signature": stale})) == 400
    assert asyncio.run(post(request.content, unsigned)) == 400
    assert queued.qsize() == 0
