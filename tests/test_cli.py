"""The ``genplane`` command: accounts, keys and credits on a data directory, checked through the API.

Each test drives the real typer app with ``CliRunner`` on its own data directory, then
starts the real API on that same directory (as conftest does) to show that what the CLI
printed or changed is what a client sees.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from genplane.accounts import service as accounts
from genplane.api.app import create_app
from genplane.cli import main as cli_main
from genplane.cli import user_commands
from genplane.cli.main import app as cli_app
from genplane.clock import as_utc, utcnow
from genplane.db.engine import Database
from genplane.settings import get_settings
from tests.conftest import make_settings

KEY_RE = re.compile(r"bye_[a-z]{2}_[A-Za-z0-9]{43}")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ALL_SCOPES = {
    "account:read",
    "generation:write",
    "generation:read",
    "generation:delete",
    "library:read",
    "health:read",
}
GENERATE_ONLY = {"generation:write", "generation:read", "library:read"}


# --- harness -------------------------------------------------------------------------------------


@dataclass
class Cli:
    data_dir: Path
    runner: CliRunner
    monkeypatch: pytest.MonkeyPatch

    def run(self, *args: str, columns: int = 400) -> Result:
        """One ``genplane`` invocation; a wide terminal so tables are not cut."""
        get_settings.cache_clear()  # settings are cached per process; each test has its own dir
        # The module's console fixes its width from the environment at import time (and pytest
        # workers may set COLUMNS), so give it a terminal of the width this call wants.
        wide = Console(width=columns)
        for module in (cli_main, user_commands):  # the operator's commands and the user's
            self.monkeypatch.setattr(module, "console", wide)
        env = {
            "GENPLANE_DATA_DIR": str(self.data_dir),
            "GENPLANE_DATABASE_URL": "",
            "GENPLANE_REGION": "us",
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
        assert not KEY_RE.search(result.output), "a key was printed by a failed command"
        assert self.snapshot() == before, "a failed command changed the data"
        return result.output

    # -- what the data directory holds -----------------------------------------------------------

    def _settings(self) -> Any:
        return make_settings(self.data_dir, run_worker=False)

    def keys(self) -> list[Any]:
        async def main() -> list[Any]:
            db = Database(self._settings().resolved_database_url)
            try:
                return await accounts.list_keys(db)
            finally:
                await db.dispose()

        return asyncio.run(main())

    def snapshot(self) -> tuple[Any, ...]:
        async def main() -> tuple[Any, ...]:
            db = Database(self._settings().resolved_database_url)
            try:
                accts = await accounts.list_accounts(db, include_deleted=True)
                keys = await accounts.list_keys(db)
            finally:
                await db.dispose()
            return (
                [(a.id, a.name, a.balance_millis, a.deleted_at) for a in accts],
                [(k.id, k.name, tuple(k.scopes), k.revoked_at, k.expires_at) for k in keys],
            )

        if not (self.data_dir / "genplane.db").exists():
            return ()
        return asyncio.run(main())

    # -- the API on the same directory ---------------------------------------------------------------

    def api(self, *calls: tuple[str, str], client_host: str = "127.0.0.1") -> list[httpx.Response]:
        """GET each (key, path) against a fresh app on this data directory."""

        async def main() -> list[httpx.Response]:
            app = create_app(self._settings())
            ctx = app.router.lifespan_context(app)
            await ctx.__aenter__()
            try:
                transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    return [
                        await client.get(path, headers={"Authorization": f"Bearer {key}"})
                        for key, path in calls
                    ]
            finally:
                await ctx.__aexit__(None, None, None)

        return asyncio.run(main())

    # -- shortcuts ----------------------------------------------------------------------------------

    def create_account(self, name: str = "Acme Studio", credits: str = "25") -> str:
        out = self.ok("accounts", "create", "--name", name, "--email", "ops@acme.test", "--credits", credits)
        match = re.search(rf"account created: ({UUID})", out)
        assert match, out
        return match[1]

    def create_key(self, account: str, *extra: str) -> tuple[str, str]:
        out = self.ok("keys", "create", "--account", account, *extra)
        return printed_key(out), printed_key_id(out)


def printed_key(output: str) -> str:
    keys = KEY_RE.findall(output)
    assert len(keys) == 1, output
    key: str = keys[0]
    assert key.startswith("bye_us_")
    return key


def printed_key_id(output: str) -> str:
    match = re.search(rf"key id: ({UUID})", output)
    assert match, output
    return match[1]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    yield Cli(tmp_path / "data", CliRunner(), monkeypatch)
    get_settings.cache_clear()


def parse_iso(value: str) -> datetime:
    return as_utc(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ"))


# --- init ---------------------------------------------------------------------------------------------


def test_init_quickstart_prints_a_working_full_access_key(cli: Cli) -> None:
    out = cli.ok("init", "--quickstart")
    key = printed_key(out)
    assert out.count(key) == 1
    account = re.search(rf"account: ({UUID})", out)
    assert account, out

    status, billing = cli.api((key, "/v1/status"), (key, "/v1/user/billing"))
    assert status.status_code == 200, status.text
    data = status.json()["data"]
    assert data["account_id"] == account[1]
    assert data["apikey_id"] == printed_key_id(out)
    assert data["apikey_prefix"] == key[:9]
    assert set(data["apikey_scopes"]) == ALL_SCOPES
    assert billing.json()["data"]["billing_credit_balance"] == 10.0


def test_init_quickstart_again_reuses_the_account_with_a_new_key(cli: Cli) -> None:
    first = cli.ok("init", "--quickstart")
    second = cli.ok("init", "--quickstart")
    key1, key2 = printed_key(first), printed_key(second)
    assert key1 != key2
    for r in cli.api((key1, "/v1/status"), (key2, "/v1/status")):
        assert r.status_code == 200
    a1 = re.search(rf"account: ({UUID})", first)
    a2 = re.search(rf"account: ({UUID})", second)
    assert a1 and a2 and a1[1] == a2[1]
    assert len(cli.snapshot()[0]) == 1


def test_init_without_quickstart_prints_no_key(cli: Cli) -> None:
    out = cli.ok("init")
    assert not KEY_RE.search(out)
    assert (cli.data_dir / "genplane.db").exists()
    assert cli.snapshot() == ([], [])


# --- accounts -----------------------------------------------------------------------------------------


def test_accounts_create_and_list(cli: Cli) -> None:
    acme = cli.create_account("Acme Studio", "25")
    other = cli.create_account("Other Co", "0.5")
    listing = cli.ok("accounts", "list")
    for account_id, name, balance in ((acme, "Acme Studio", "25.000"), (other, "Other Co", "0.500")):
        row = next((line for line in listing.splitlines() if account_id in line), None)
        assert row is not None, listing
        assert name in row and balance in row

    key, _ = cli.create_key(acme, "--preset", "full_access")
    account, billing = cli.api((key, "/v1/user/account"), (key, "/v1/user/billing"))
    assert account.json()["data"]["account_id"] == acme
    assert account.json()["data"]["account_name"] == "Acme Studio"
    assert account.json()["data"]["account_email"] == "ops@acme.test"
    assert billing.json()["data"]["billing_credit_balance"] == 25.0


def test_account_names_are_printed_literally(cli: Cli) -> None:
    """A name that looks like console markup is shown as typed and breaks no listing."""
    odd = cli.create_account("[bold]Acme[/bold] [/x]", "1")
    listing = cli.ok("accounts", "list")
    assert "[bold]Acme[/bold] [/x]" in listing
    assert odd in listing


# --- keys ----------------------------------------------------------------------------------------------


def test_keys_create_with_preset_expiry_and_allowlist(cli: Cli) -> None:
    acme = cli.create_account()
    out = cli.ok(
        "keys", "create", "--account", acme, "--name", "backend", "--preset", "generate_only",
        "--expires", "90d", "--allow-ip", "203.0.113.0/24",
    )  # fmt: skip
    key, key_id = printed_key(out), printed_key_id(out)
    scopes_line = re.search(r"scopes: (.+)", out)
    assert scopes_line, out
    assert {s.strip() for s in scopes_line[1].split(",")} == GENERATE_ONLY

    (record,) = [k for k in cli.keys() if k.id == key_id]
    assert record.account_id == acme
    assert record.name == "backend"
    assert set(record.scopes) == GENERATE_ONLY
    assert list(record.allowed_ips) == ["203.0.113.0/24"]
    assert record.expires_at is not None
    expected_end = utcnow() + timedelta(days=90)
    assert abs((as_utc(record.expires_at) - expected_end).total_seconds()) < 120
    assert record.prefix == key[:9]

    inside = cli.api(
        (key, "/v1/library/models"), (key, "/v1/content/list"), (key, "/v1/status"), client_host="203.0.113.7"
    )
    assert [r.status_code for r in inside] == [200, 200, 403]
    assert inside[2].json()["error"] == "bse_insufficient_permissions"
    (outside,) = cli.api((key, "/v1/library/models"), client_host="127.0.0.1")
    assert outside.status_code == 403
    assert outside.json()["error"] == "bse_ip_not_allowed"
    assert outside.json()["code"] == "BSE1007"


def test_keys_create_with_explicit_scopes(cli: Cli) -> None:
    acme = cli.create_account()
    key, key_id = cli.create_key(acme, "--scope", "health:read", "--scope", "account:read")
    (status,) = cli.api((key, "/v1/status"))
    assert status.status_code == 200
    assert sorted(status.json()["data"]["apikey_scopes"]) == ["account:read", "health:read"]
    assert status.json()["data"]["apikey_id"] == key_id


def test_keys_create_without_preset_is_full_access(cli: Cli) -> None:
    acme = cli.create_account()
    key, _ = cli.create_key(acme)
    (status,) = cli.api((key, "/v1/status"))
    assert set(status.json()["data"]["apikey_scopes"]) == ALL_SCOPES


def test_keys_list_shows_prefixes_never_keys(cli: Cli) -> None:
    acme = cli.create_account()
    other = cli.create_account("Other Co")
    key1, id1 = cli.create_key(acme, "--name", "one", "--preset", "read_only")
    key2, id2 = cli.create_key(acme, "--name", "two", "--preset", "monitor_only")
    key3, id3 = cli.create_key(other, "--name", "three")

    listing = cli.ok("keys", "list", "--account", acme)
    assert id1 in listing and id2 in listing
    assert id3 not in listing  # only this account's keys
    for key in (key1, key2, key3):
        assert key not in listing
        assert key[9:] not in listing
        assert key[9:20] not in listing
    assert not KEY_RE.search(listing)
    for key_id, key, name in ((id1, key1, "one"), (id2, key2, "two")):
        row = next(line for line in listing.splitlines() if key_id in line)
        assert key[:9] in row
        assert name in row
        assert "active" in row

    everything = cli.ok("keys", "list")
    assert all(i in everything for i in (id1, id2, id3))
    assert not KEY_RE.search(everything)


def test_keys_rotate_keeps_the_old_key_for_the_grace_period(cli: Cli) -> None:
    acme = cli.create_account()
    old_key, old_id = cli.create_key(acme, "--name", "backend", "--preset", "read_only")
    out = cli.ok("keys", "rotate", old_id, "--grace-hours", "24")
    new_key, new_id = printed_key(out), printed_key_id(out)
    assert new_key != old_key and new_id != old_id
    assert "24" in out

    old_status, new_status = cli.api((old_key, "/v1/status"), (new_key, "/v1/status"))
    assert old_status.status_code == 200 and new_status.status_code == 200
    new_data = new_status.json()["data"]
    assert new_data["apikey_id"] == new_id
    assert new_data["apikey_name"] == "backend"
    assert set(new_data["apikey_scopes"]) == {
        "generation:read",
        "account:read",
        "health:read",
        "library:read",
    }
    grace_end = parse_iso(old_status.json()["data"]["apikey_expires_at"])
    assert abs((grace_end - (utcnow() + timedelta(hours=24))).total_seconds()) < 120

    listing = cli.ok("keys", "list", "--account", acme)
    assert old_id in listing and new_id in listing
    assert old_key not in listing and new_key not in listing


def test_keys_rotate_twice_in_the_grace_period_is_refused(cli: Cli) -> None:
    acme = cli.create_account()
    _, old_id = cli.create_key(acme)
    new_id = printed_key_id(cli.ok("keys", "rotate", old_id))
    out = cli.fails("keys", "rotate", old_id, expect=f"successor {new_id}")
    assert old_id in out
    assert [k.id for k in cli.keys() if k.rotated_from_id == old_id] == [new_id]
    # Once the successor is revoked (say it leaked), the key may be rotated again.
    cli.ok("keys", "revoke", new_id)
    again = printed_key_id(cli.ok("keys", "rotate", old_id))
    assert again not in (old_id, new_id)


def test_keys_revoke_stops_the_key_at_once(cli: Cli) -> None:
    acme = cli.create_account()
    key, key_id = cli.create_key(acme)
    keep, _ = cli.create_key(acme)
    out = cli.ok("keys", "revoke", key_id)
    assert key_id in out
    revoked, kept = cli.api((key, "/v1/status"), (keep, "/v1/status"))
    assert revoked.status_code == 401
    assert revoked.json()["error"] == "bse_invalid_api_key"
    assert kept.status_code == 200
    row = next(line for line in cli.ok("keys", "list", "--account", acme).splitlines() if key_id in line)
    assert "revoked" in row
    cli.fails("keys", "revoke", key_id, expect="no active key")


def test_credits_add(cli: Cli) -> None:
    acme = cli.create_account(credits="25")
    out = cli.ok("credits", "add", "--account", acme, "10")
    assert "35.000" in out
    out = cli.ok("credits", "add", "--account", acme, "2.5", "--note", "bonus")
    assert "37.500" in out
    key, _ = cli.create_key(acme)
    (billing,) = cli.api((key, "/v1/user/billing"))
    assert billing.json()["data"]["billing_credit_balance"] == 37.5


def test_models_lists_the_catalogue(cli: Cli) -> None:
    out = cli.ok("models")
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert "local/preview-image" in rows and "local/preview-video" in rows
    assert "image" in rows["local/preview-image"] and "local*" in rows["local/preview-image"]
    assert "video" in rows["local/preview-video"] and "720p" in rows["local/preview-video"]


# --- bad input: non-zero exit, a clear message, nothing changed ----------------------------------------


def test_unknown_preset_is_refused(cli: Cli) -> None:
    acme = cli.create_account()
    out = cli.fails("keys", "create", "--account", acme, "--preset", "admin", expect="unknown preset 'admin'")
    assert "generate_only" in out  # names the choices


def test_unknown_scope_and_preset_with_scopes_are_refused(cli: Cli) -> None:
    acme = cli.create_account()
    cli.fails("keys", "create", "--account", acme, "--scope", "health:write", expect="unknown scopes")
    cli.fails(
        "keys", "create", "--account", acme, "--preset", "read_only", "--scope", "health:read",
        expect="not both",
    )  # fmt: skip


@pytest.mark.parametrize("grace", ["0", "200", "169"])
def test_rotate_grace_out_of_range_is_refused(cli: Cli, grace: str) -> None:
    acme = cli.create_account()
    key, key_id = cli.create_key(acme)
    cli.fails("keys", "rotate", key_id, "--grace-hours", grace, expect="1 to 168 hours")
    (status,) = cli.api((key, "/v1/status"))
    assert status.status_code == 200
    assert status.json()["data"]["apikey_expires_at"] is None


def test_rotate_grace_bounds_are_accepted(cli: Cli) -> None:
    acme = cli.create_account()
    _, first = cli.create_key(acme)
    _, second = cli.create_key(acme)
    cli.ok("keys", "rotate", first, "--grace-hours", "1")
    cli.ok("keys", "rotate", second, "--grace-hours", "168")
    ends = {k.id: as_utc(k.expires_at) for k in cli.keys() if k.id in (first, second)}
    assert abs((ends[first] - (utcnow() + timedelta(hours=1))).total_seconds()) < 120
    assert abs((ends[second] - (utcnow() + timedelta(hours=168))).total_seconds()) < 120


@pytest.mark.parametrize("entry", ["300.1.2.3", "203.0.113.0/33", "not-an-ip", "[bad]", "[/bad]"])
def test_bad_allowlist_entry_is_refused(cli: Cli, entry: str) -> None:
    acme = cli.create_account()
    cli.fails(
        "keys", "create", "--account", acme, "--allow-ip", "203.0.113.0/24", "--allow-ip", entry,
        expect=f"not an IP address or CIDR: '{entry}'",
    )  # fmt: skip


@pytest.mark.parametrize("value", ["soon", "90x", "2020-01-01", "2000-01-01T00:00:00"])
def test_bad_or_past_expiry_is_refused(cli: Cli, value: str) -> None:
    acme = cli.create_account()
    cli.fails("keys", "create", "--account", acme, "--expires", value, expect=repr(value))


def test_key_name_over_100_characters_is_refused(cli: Cli) -> None:
    acme = cli.create_account()
    cli.fails("keys", "create", "--account", acme, "--name", "n" * 101, expect="1 to 100 characters")
    cli.create_key(acme, "--name", "n" * 100)


def test_unknown_account_is_refused(cli: Cli) -> None:
    cli.create_account()
    ghost = "00000000-0000-4000-8000-000000000000"
    cli.fails("keys", "create", "--account", ghost, expect=f"no account {ghost}")
    cli.fails("credits", "add", "--account", ghost, "10", expect=f"no account {ghost}")
    cli.fails("accounts", "delete", ghost, expect=f"no active account {ghost}")
    cli.fails("keys", "revoke", ghost, expect=f"no active key {ghost}")
    cli.fails("keys", "rotate", ghost, expect=f"no active key {ghost}")
    cli.fails("keys", "create", "--account", "[/x]", expect="no account [/x]")


def test_deleted_account_gets_no_new_key(cli: Cli) -> None:
    acme = cli.create_account()
    key, key_id = cli.create_key(acme)
    cli.ok("accounts", "delete", acme)
    (status,) = cli.api((key, "/v1/status"))
    assert status.status_code == 404
    assert status.json()["error"] == "bse_account_not_found"
    cli.fails("keys", "create", "--account", acme, expect=f"no account {acme}")
    cli.fails("keys", "rotate", key_id, expect="no account")


def test_rotating_an_expired_key_is_refused(cli: Cli) -> None:
    acme = cli.create_account()
    _, key_id = cli.create_key(acme, "--expires", "1h")
    _, revoked_id = cli.create_key(acme)
    cli.ok("keys", "revoke", revoked_id)

    async def expire() -> None:
        from sqlalchemy import update

        from genplane.db.models import ApiKey

        db = Database(cli._settings().resolved_database_url)
        try:
            async with db.write() as s:
                await s.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key_id)
                    .values(expires_at=utcnow() - timedelta(minutes=1))
                )
        finally:
            await db.dispose()

    asyncio.run(expire())
    row = next(line for line in cli.ok("keys", "list").splitlines() if key_id in line)
    assert "expired" in row
    cli.fails("keys", "rotate", key_id, expect=f"no active key {key_id}")
    cli.fails("keys", "rotate", revoked_id, expect=f"no active key {revoked_id}")


BAD_AMOUNTS = [
    ("0", "credits are positive"),
    ("1.2345", "at most three decimals"),
    ("0.0001", "at most three decimals"),
    ("abc", "not an amount: 'abc'"),
]


@pytest.mark.parametrize(("amount", "message"), BAD_AMOUNTS)
def test_bad_credit_amounts_are_refused(cli: Cli, amount: str, message: str) -> None:
    acme = cli.create_account(credits="25")
    cli.fails("credits", "add", "--account", acme, amount, expect=message)
    assert cli.snapshot()[0][0][2] == 25_000


@pytest.mark.parametrize(("amount", "message"), [("-5", "credits are positive"), *BAD_AMOUNTS[1:]])
def test_bad_starting_credits_are_refused(cli: Cli, amount: str, message: str) -> None:
    cli.ok("init")
    cli.fails("accounts", "create", "--name", "Acme", "--credits", amount, expect=message)


# --- tables must be usable in an ordinary terminal ------------------------------------------------------


def test_lists_show_whole_ids_in_an_80_column_terminal(cli: Cli) -> None:
    acme = cli.create_account()
    _, key_id = cli.create_key(acme)
    assert acme in cli.ok("accounts", "list", columns=80)
    assert key_id in cli.ok("keys", "list", "--account", acme, columns=80)
