"""``genplane generate``, ``models``, ``estimate``, ``content``, ``usage``, ``status``: the API's
user, from a terminal.

Unlike the operator commands beside them, which work on the database directly, these talk
to a running server through the Python SDK with an API key, exactly as a program would:
what works here works in code. Each prints tables for people, or with ``--json`` the
response's ``data`` for scripts; a failure is one line on stderr naming the contract's
error (``error BSE1002 bse_invalid_api_key: …``) and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from genplane.cli.common import console, id_column
from genplane.client import Client, Generation, GenplaneError, PermissionDeniedError
from genplane.client.config import DEFAULT_BASE_URL

content_app = typer.Typer(no_args_is_help=True, help="Your generations: list, get, cancel, delete.")

# -- the options every user command takes ----------------------------------------------

BaseUrl = Annotated[
    str,
    typer.Option("--base-url", envvar="GENPLANE_BASE_URL", help="The server's URL.", show_envvar=True),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="GENPLANE_API_KEY", help="Your API key (bye_…).", show_envvar=True,
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the response's data as JSON, for scripts.")]


def _error_line(error: BaseException) -> str:
    if isinstance(error, GenplaneError):
        label = " ".join(part for part in (error.code, error.name) if part)
        return f"error {label}: {error.message}" if label else f"error: {error.message}"
    return f"error: {error}"


@contextmanager
def _client(base_url: str, api_key: str | None) -> Iterator[Client]:
    """A client for one command, and errors turned into one line and exit status 1.

    A person at a terminal needs the code and the message, not the stack; scripts get
    the same line on stderr and a non-zero status."""
    if not api_key:
        print("error: an API key is required: --api-key or GENPLANE_API_KEY", file=sys.stderr)
        raise typer.Exit(2)
    try:
        with Client(api_key, base_url=base_url) as client:
            yield client
    except (GenplaneError, ValueError, OSError) as exc:
        print(_error_line(exc), file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print("error: interrupted (a generation keeps running on the server)", file=sys.stderr)
        raise typer.Exit(130) from None


def _print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json", by_alias=True)
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _show(data: BaseModel, as_json: bool, for_people: RenderableType) -> None:
    """``--json``: the data for scripts; otherwise what was made for people."""
    if as_json:
        _print_json(data)
    else:
        console.print(for_people, soft_wrap=isinstance(for_people, str))


def _fields_table(model: BaseModel, title: str | None = None) -> Table:
    """A two-column table of a response's top-level fields (nested values as JSON)."""
    table = Table("field", "value", title=title, show_header=False)
    for key, value in model.model_dump(mode="json", by_alias=True).items():
        shown = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, escape("" if value is None else shown))
    return table


# -- generate ---------------------------------------------------------------------------


class _Progress:
    """What the live display shows while a generation runs; elapsed time ticks on its own."""

    def __init__(self, generation_id: str, model: str) -> None:
        self.generation_id, self.model = generation_id, model
        self.status, self.provider = "pending", ""
        self.started = time.monotonic()

    def update(self, record: Generation) -> None:
        self.status = record.generation_status
        self.provider = record.generation_provider_used or ", ".join(record.generation_provider_order)

    def __rich__(self) -> Text:
        elapsed = time.monotonic() - self.started
        text = Text.assemble(
            ("⠿ " if self.status in ("pending", "processing") else "• ", "cyan"),
            (self.status, "bold"),
            f"  {elapsed:5.1f} s  ",
            (self.model, "magenta"),
            f"  provider: {self.provider or '—'}  ",
            (self.generation_id, "dim"),
        )
        return text


def _body(
    prompt: str,
    ratio: str | None,
    output_format: str | None,
    number: int | None,
    input_file: list[str] | None,
    duration: int | None,
    resolution: str | None,
    audio: bool | None,
    seed: int | None,
) -> dict[str, Any]:
    values = {
        "generation_prompt": prompt,
        "generation_ratio": ratio,
        "generation_output_format": output_format,
        "generation_output_number": number,
        "generation_input_file": input_file or None,
        "generation_duration": duration,
        "generation_resolution": resolution,
        "generation_generate_audio": audio,
        "generation_seed": seed,
    }
    return {k: v for k, v in values.items() if v is not None}


def generate(
    model: Annotated[str, typer.Argument(help="Model identifier, e.g. local/preview-image.")],
    prompt: Annotated[str, typer.Argument(help="What to generate.")],
    ratio: Annotated[str | None, typer.Option(help="Aspect ratio, e.g. 16:9.")] = None,
    output_format: Annotated[str | None, typer.Option("--format", help="png, jpg, webp; mp4.")] = None,
    number: Annotated[int | None, typer.Option(min=1, help="How many outputs.")] = None,
    input_file: Annotated[
        list[str] | None, typer.Option("--input-file", help="Public URL of an input image; repeat.")
    ] = None,
    duration: Annotated[int | None, typer.Option(min=1, help="Seconds (video: the video route).")] = None,
    resolution: Annotated[str | None, typer.Option(help="e.g. 720p (video).")] = None,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio", help="Generate audio (video).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed, for models that take generation_seed.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it has finished.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Save the outputs into this folder (implies --wait).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="How long --wait waits, in seconds.")] = 600.0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retry-safe key; a repeat within 24 h returns the first answer.")
    ] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Start a generation; with --wait follow it live, with --out save its files."""
    body = _body(prompt, ratio, output_format, number, input_file, duration, resolution, audio, seed)
    with _client(base_url, api_key) as client:
        created = client.generate(model, body, idempotency_key=idempotency_key)
        generation_id = created.data.generation_id
        if not (wait or out):
            if as_json:
                _print_json(created.data)
            else:
                console.print(f"generation: {generation_id}  (genplane content get {generation_id})")
            return
        progress = _Progress(generation_id, model)
        if as_json:
            finished = client.wait(generation_id, timeout=timeout)
        else:
            with Live(progress, console=console, refresh_per_second=8, transient=True):
                finished = client.wait(generation_id, timeout=timeout, long_poll=5, on_update=progress.update)
            progress.update(finished.data)
        paths = client.download(finished, out) if out is not None else []
        if as_json:
            data = finished.data.model_dump(mode="json", by_alias=True)
            if out is not None:
                data["saved_paths"] = [str(p) for p in paths]
            _print_json(data)
            return
        took = time.monotonic() - progress.started
        console.print(f"succeeded: {generation_id} in {took:.1f} s on {progress.provider}", soft_wrap=True)
        for url in finished.data.generation_output_file or []:
            console.print(f"  {url}", soft_wrap=True)
        for path in paths:
            console.print(f"saved: {path}", soft_wrap=True)


# -- models -----------------------------------------------------------------------------


def _pricing(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:g}" for k, v in value.items())
    return "" if value is None else f"{value:g}"


def models(
    type_: Annotated[str | None, typer.Option("--type", help="Only image or video models.")] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Read this machine's catalogue instead of asking a server.")
    ] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List the models you can generate with: the server's, or this machine's catalogue.

    With an API key the server is asked (GET /v1/library/models). Without one, or with
    --local, the catalogue files here are read, * marking the providers configured here
    (the operator's view, as before the user commands existed)."""
    if type_ not in (None, "image", "video"):
        print(f"error: --type is image or video, not {type_!r}", file=sys.stderr)
        raise typer.Exit(2)
    if local or not api_key:
        _local_models(type_, as_json)
        return
    with _client(base_url, api_key) as client:
        data = client.library.models().data
    chosen = [m for m in data.models if type_ is None or m.model_type == type_]
    if as_json:
        _print_json({"models": [m.model_dump(mode="json", by_alias=True) for m in chosen],
                     "models_total": len(chosen)})
        return
    table = Table(Column("model", no_wrap=True), "type", "pricing", "providers", "options")
    for m in chosen:
        schema = m.model_schema
        options = [f"ratio {'/'.join(schema.generation_ratio)}"] if schema.generation_ratio else []
        if schema.generation_duration:
            options.append(f"duration {'/'.join(f'{d:g}' for d in schema.generation_duration)} s")
        if schema.generation_resolution:
            options.append("/".join(schema.generation_resolution))
        options.append(f"up to {schema.generation_output_number}")
        table.add_row(m.model_identifier, m.model_type, _pricing(m.model_pricing),
                      ", ".join(m.model_supported_provider), escape("; ".join(options)))
    console.print(table)


def _local_models(type_: str | None, as_json: bool) -> None:
    """The operator's view: the catalogue files here, with providers configured here."""
    from genplane.catalog.loader import load_catalog
    from genplane.providers.registry import build_http_client, build_providers
    from genplane.settings import get_settings

    settings = get_settings()
    catalog = load_catalog(settings.catalog_dir)
    adapters = build_providers(settings, build_http_client(settings))  # never sends a request
    chosen = [m for m in catalog.models.values() if type_ is None or m.model_type == type_]
    if as_json:
        _print_json({"models": [
            {"model_identifier": m.model_identifier, "model_type": m.model_type,
             "model_pricing": m.model_pricing,
             "providers": {p: p in adapters and adapters[p].configured() for p in m.providers}}
            for m in chosen
        ], "models_total": len(chosen)})
        return
    table = Table("model", "type", "pricing", "providers (available*)")
    for m in chosen:
        names = [f"{p}*" if p in adapters and adapters[p].configured() else p for p in m.providers]
        table.add_row(m.model_identifier, m.model_type, _pricing(m.model_pricing), ", ".join(names))
    console.print(table)


# -- estimate, status -------------------------------------------------------------------


def estimate(
    model: Annotated[str, typer.Argument(help="Model identifier.")],
    count: Annotated[int | None, typer.Option(min=1, max=100, help="How many generations.")] = None,
    duration: Annotated[int | None, typer.Option(min=1, help="Seconds (video).")] = None,
    resolution: Annotated[str | None, typer.Option(help="e.g. 1080p (video).")] = None,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio", help="With audio (video).")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """What generations would cost, and whether your balance covers them."""
    with _client(base_url, api_key) as client:
        data = client.estimate(model, count=count, duration=duration, resolution=resolution, audio=audio).data
    _show(data, as_json, _fields_table(data, title=f"estimate: {model}"))


def status(base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Check the key against the server: which account and key, its scopes, and your balance."""
    with _client(base_url, api_key) as client:
        data = client.status().data
        balance = None if as_json else client.billing().data.billing_credit_balance
    if as_json:
        _print_json(data)
        return
    console.print(f"connected to {escape(base_url)}", soft_wrap=True)
    console.print(_fields_table(data))
    if balance is not None:
        console.print(f"credit balance: {balance:.3f}")


# -- content ----------------------------------------------------------------------------


@content_app.command("list")
def content_list(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Your generations, newest first."""
    with _client(base_url, api_key) as client:
        page = client.list_generations(limit=limit, offset=offset)
    if as_json:
        _print_json(page.data)
        return
    table = Table(id_column("generation id"), "model", Column("status", no_wrap=True), "created", "outputs",
                  title=f"{page.offset + 1}-{page.offset + len(page.data.generations)} of {page.total}")
    for g in page.data.generations:
        table.add_row(g.generation_id, g.model_identifier or "", g.generation_status,
                      (g.generation_created_at or "")[:19].replace("T", " "),
                      str(len(g.generation_output_file or [])))
    console.print(table)


@content_app.command("get")
def content_get(
    generation_id: Annotated[str, typer.Argument(help="The generation's id.")],
    wait: Annotated[
        int | None, typer.Option(min=1, max=60, help="Let the server hold the answer until it ends (N s).")
    ] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """One generation's record."""
    with _client(base_url, api_key) as client:
        data = client.get_generation(generation_id, wait=wait).data
    _show(data, as_json, _fields_table(data))


@content_app.command("cancel")
def content_cancel(
    generation_id: Annotated[str, typer.Argument(help="The generation's id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a pending or processing generation; its credits are refunded."""
    with _client(base_url, api_key) as client:
        data = client.cancel_generation(generation_id).data
    _show(data, as_json, f"canceled: {data.generation_id} (credits refunded: {data.credits_refunded})")


@content_app.command("delete")
def content_delete(
    generation_id: Annotated[str, typer.Argument(help="The generation's id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Delete a generation and its stored files."""
    with _client(base_url, api_key) as client:
        data = client.delete_generation(generation_id).data
    _show(data, as_json, f"deleted: {data.generation_id} ({data.files_deleted} files)")


# -- usage ------------------------------------------------------------------------------


def _per_day(client: Client, days: int) -> list[tuple[date, Counter[str]]]:
    """Generations created per day over the window, by final status, newest day first.

    ``/v1/usage`` reports totals only; the days come from the generation list (newest
    first), read until a record is older than the window."""
    today = datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    counts: dict[date, Counter[str]] = {first + timedelta(days=n): Counter() for n in range(days)}
    for g in client.iter_generations(page_size=100):
        if not g.generation_created_at:
            continue
        day = datetime.fromisoformat(g.generation_created_at.replace("Z", "+00:00")).astimezone(UTC).date()
        if day < first:
            break
        counts.setdefault(day, Counter())[g.generation_status] += 1
    return sorted(counts.items(), reverse=True)


_STATUS_COLOURS = {"succeeded": "green", "failed": "red", "canceled": "yellow"}


def _bar_chart(series: list[tuple[date, Counter[str]]], width: int = 40) -> Table:
    peak = max((sum(c.values()) for _, c in series), default=0) or 1
    table = Table("day", "generations", "green: succeeded, red: failed, yellow: canceled")
    for day, counts in series:
        bar = Text()
        for status_name, n in sorted(counts.items()):
            bar.append("█" * max(1, round(n * width / peak)), style=_STATUS_COLOURS.get(status_name, "cyan"))
        table.add_row(day.isoformat(), str(sum(counts.values())), bar)
    return table


def usage(
    days: Annotated[int, typer.Option(min=1, max=90, help="The window, in days.")] = 30,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Requests, errors, generations and spend over the last days, with a chart per day."""
    with _client(base_url, api_key) as client:
        data = client.usage(days=days).data
        if as_json:
            _print_json(data)
            return
        try:
            series: list[tuple[date, Counter[str]]] | None = _per_day(client, days)
        except PermissionDeniedError:  # a key without generation:read still sees the totals
            series = None
    console.print(f"usage, last {data.usage_period_days} days")
    totals = Table("", "", show_header=False)
    for label, value in (
        ("credit balance", f"{data.usage_credit_balance:.3f}"),
        ("requests", data.usage_total_requests),
        ("succeeded", data.usage_total_success),
        ("client errors", data.usage_total_client_errors),
        ("server errors", data.usage_total_server_errors),
        ("generations", data.usage_total_generations),
        ("provider submissions", data.usage_total_provider_submissions),
        ("estimated cost", f"{data.usage_total_estimated_cost:.3f}"),
    ):
        totals.add_row(label, str(value))
    console.print(totals)
    if data.usage_endpoints:
        endpoints = Table("endpoint", "requests", "ok", "4xx", "5xx", "error codes")
        for e in data.usage_endpoints:
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(e.error_codes.items()))
            endpoints.add_row(escape(e.endpoint), str(e.total_requests), str(e.success_count),
                              str(e.client_error_count), str(e.server_error_count), codes)
        console.print(endpoints)
    if data.usage_providers:
        providers = Table("provider", "submissions", "used", "canceled", "failed", "cost", "wasted")
        for p in data.usage_providers:
            providers.add_row(p.provider, str(p.total_submissions), str(p.used_count), str(p.cancelled_count),
                              str(p.failed_count), f"{p.total_estimated_cost:.3f}",
                              f"{p.wasted_estimated_cost:.3f}")
        console.print(providers)
    if series is not None:
        console.print(_bar_chart(series))


def register(app: typer.Typer) -> None:
    """Add the user commands to the ``genplane`` command (called by ``cli.main``)."""
    commands: list[Callable[..., None]] = [generate, models, estimate, usage, status]
    for command in commands:
        app.command()(command)
    app.add_typer(content_app, name="content")
