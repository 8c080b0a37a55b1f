"""``genplane catalog check``: the operator's audit of the catalogue's money and lifetimes.

The server refuses to start on a catalogue that loses money; this command says why before
a deploy does, and what is coming: bindings nearing their provider's shutdown
(``retire_after``), bindings admitted at a loss (``loss_ok``), bindings with no recorded
provider cost, and retired models. It reads files only (no database, no network), and
exits 1 when the catalogue would be refused, so it can gate a CI job or a deploy.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from genplane.catalog.loader import (
    Catalog,
    ModelEntry,
    ProviderBinding,
    describe,
    load_catalog,
    margin_violations,
    margins,
    today_utc,
)
from genplane.settings import get_settings

catalog_app = typer.Typer(
    no_args_is_help=True, help="The model catalogue: prices, provider costs, lifetimes."
)


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.00001')).normalize():f}"


def _binding_line(model: ModelEntry, provider: str, binding: ProviderBinding) -> str:
    rows = margins(model, provider, binding)
    assert binding.cost is not None
    worst = min(rows, key=lambda m: m.price - m.cost)
    costs = [m.cost for m in rows]
    prices = [m.price for m in rows]

    def span(values: list[Decimal]) -> str:
        low, high = min(values), max(values)
        return _money(low) if low == high else f"{_money(low)}..{_money(high)}"

    flag = ""
    if worst.loss:
        flag = "  LOSS (loss_ok)" if binding.loss_ok else "  LOSS"
    return (
        f"  {model.model_identifier} via {provider}: cost {span(costs)} {binding.cost.unit}, "
        f"price {span(prices)}, lowest margin {_money(worst.price - worst.cost)} "
        f"({describe(worst.request)}; {len(rows)} requests){flag}"
    )


def report(catalog: Catalog, today: dt.date, days: int) -> tuple[list[str], bool]:
    """The check's lines, and whether the catalogue has a violation (it would be refused)."""
    lines = [f"catalogue check on {today.isoformat()} (warning {days} days ahead)", ""]
    live = list(catalog.models.values())
    lines.append("provider cost against price, per binding, over every allowed request:")
    uncosted: list[str] = []
    losses: list[str] = []
    for model in live:
        for provider, binding in model.providers.items():
            if binding.cost is None:
                uncosted.append(f"  {model.model_identifier} via {provider}")
                continue
            lines.append(_binding_line(model, provider, binding))
            if binding.loss_ok:
                losses.append(f"  {model.model_identifier} via {provider}: {binding.loss_reason}")
    lines += ["", f"bindings admitted at a loss (loss_ok): {len(losses)}", *losses]
    lines += ["", f"bindings without a recorded provider cost (not checked): {len(uncosted)}", *uncosted]

    past: list[str] = []
    soon: list[str] = []
    horizon = today + dt.timedelta(days=days)
    for model in catalog.declared.values():
        for provider, binding in model.providers.items():
            end = binding.retire_after
            if end is None:
                continue
            where = f"  {model.model_identifier} via {provider} ({binding.model_id}): retire_after {end}"
            if end < today:
                past.append(where + " -- gone, not routed; remove it from the catalogue")
            elif end <= horizon:
                soon.append(where + f" -- {(end - today).days} days left")
    lines += ["", f"bindings past retire_after: {len(past)}", *past]
    lines += ["", f"bindings within {days} days of retire_after: {len(soon)}", *soon]
    retired = [f"  {r.message()}" for r in sorted(catalog.retired.values(), key=lambda r: r.model_identifier)]
    lines += ["", f"retired models: {len(retired)}", *retired]

    violations = margin_violations(live)
    lines += ["", f"violations: {len(violations)}", *(f"  {v}" for v in violations)]
    return lines, bool(violations)


@catalog_app.command("check")
def check(
    days: Annotated[
        int, typer.Option(min=0, help="Warn about retire_after dates this many days ahead.")
    ] = 30,
    catalog_dir: Annotated[
        Path | None, typer.Option(help="Extra catalogue files (default: GENPLANE_CATALOG_DIR).")
    ] = None,
    today: Annotated[
        str | None, typer.Option(help="Check as of this date (YYYY-MM-DD), e.g. to plan ahead.")
    ] = None,
) -> None:
    """Cost-vs-price margins, losses, coming shutdowns and retired models; exit 1 on a violation."""
    try:
        day = dt.date.fromisoformat(today) if today else today_utc()
    except ValueError as exc:
        raise typer.BadParameter(f"--today takes YYYY-MM-DD, not {today!r}") from exc
    extra = catalog_dir if catalog_dir is not None else get_settings().catalog_dir
    try:
        catalog = load_catalog(extra, today=day, strict=False)
    except ValueError as exc:  # not even readable: a violation too
        print(f"error: {exc}")
        raise typer.Exit(code=1) from exc
    lines, violated = report(catalog, day, days)
    print("\n".join(lines))
    if violated:
        raise typer.Exit(code=1)
