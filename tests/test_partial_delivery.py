"""A provider that delivers fewer outputs than asked: the generation pays for what it got.

The delivered share is charged and the rest of the reservation refunded, in the transaction
that ends the generation; the ledger keeps both movements and still chains (the invariants
of tests/test_credits.py), and the record and the ``generation.completed`` event say how
many outputs were asked and how many were delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genplane.catalog.pricing import delivered_cost_millis, generation_cost_millis
from genplane.net.fetch import PinnedFetcher
from genplane.providers.base import ProviderJob, ProviderResult
from genplane.providers.local import LocalProvider
from genplane.webhooks.endpoints import add_endpoint
from tests.conftest import Caller, Harness
from tests.test_credits import IMAGE, IMAGE_PRICE, balance, check_ledger, ledger, wait_settled
from tests.test_worker_path import events_of


class Delivering(LocalProvider):
    """The local provider, returning the number of outputs a prompt ``deliver <n>: ...`` names."""

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        result = await super().wait(job, prediction_id)
        if not job.prompt.startswith("deliver "):
            return result
        wanted = int(job.prompt.split()[1].rstrip(":"))
        outputs = (result.outputs * wanted)[:wanted]  # fewer than asked, or more
        return ProviderResult(outputs=outputs, predict_time=result.predict_time)


async def _app(harness_factory: Callable[..., Any], database: dict[str, Any]) -> tuple[Harness, Caller]:
    """An app whose local provider delivers as told, and a caller with 1 credit whose account
    has a webhook endpoint (events are written only for accounts that have one)."""
    h: Harness = await harness_factory(**database)
    h.services.providers["local"] = Delivering()
    caller = await h.caller(credits="1")
    svc = h.services
    guard = PinnedFetcher(svc.http, ["127.0.0.1"])
    await add_endpoint(svc.db, svc.settings, guard, caller.account_id, "http://127.0.0.1:9/hook")
    return h, caller


async def _generate(caller: Caller, prompt: str, outputs: int) -> dict[str, Any]:
    r = await caller.create_image({"generation_prompt": prompt, "generation_output_number": outputs})
    assert r.status_code == 200, r.text
    record = await caller.wait(r.json()["data"]["generation_id"])
    assert record["generation_status"] == "succeeded", record
    return record


def _amounts(rows: list[Any], gid: str) -> dict[str, int]:
    mine = [r for r in rows if r.generation_id == gid]
    assert len(mine) == len({r.kind for r in mine}), "one entry of each kind per generation"
    return {r.kind: r.amount_millis for r in mine}


async def test_fewer_outputs_are_charged_per_delivered_output_and_the_rest_refunded(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h, caller = await _app(harness_factory, database)
    record = await _generate(caller, "deliver 1: four foxes", 4)
    gid = record["generation_id"]

    assert record["generation_output_number"] == 4
    assert record["generation_output_delivered"] == 1
    assert len(record["generation_output_file"]) == 1
    final = await balance(caller)
    assert final == 1000 - IMAGE_PRICE

    rows = await ledger(h, caller.account_id)
    expected = {"reserve": 4 * IMAGE_PRICE, "refund": 3 * IMAGE_PRICE, "charge": IMAGE_PRICE}
    assert _amounts(rows, gid) == expected
    check_ledger(rows, await wait_settled(h, caller.account_id), final)

    done = (await events_of(h, gid))["generation.completed"]
    assert done["generation_output_delivered"] == 1
    assert done["generation_output_file"] == record["generation_output_file"]
    assert done["credits_refunded"] is True
    listed = (await caller.get("/v1/content/list")).json()["data"]["generations"]
    assert [g["generation_output_delivered"] for g in listed if g["generation_id"] == gid] == [1]


async def test_a_full_delivery_is_charged_the_reservation_with_no_refund(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h, caller = await _app(harness_factory, database)
    record = await _generate(caller, "four foxes", 4)
    gid = record["generation_id"]

    assert (record["generation_output_number"], record["generation_output_delivered"]) == (4, 4)
    final = await balance(caller)
    assert final == 1000 - 4 * IMAGE_PRICE
    rows = await ledger(h, caller.account_id)
    assert _amounts(rows, gid) == {"reserve": 4 * IMAGE_PRICE, "charge": 4 * IMAGE_PRICE}
    check_ledger(rows, await wait_settled(h, caller.account_id), final)

    done = (await events_of(h, gid))["generation.completed"]
    assert done["generation_output_delivered"] == 4 and "credits_refunded" not in done


async def test_more_outputs_than_asked_are_charged_no_more_than_the_reservation(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h, caller = await _app(harness_factory, database)
    partial = await _generate(caller, "deliver 2: three foxes", 3)
    extra = await _generate(caller, "deliver 5: two foxes", 2)

    assert partial["generation_output_delivered"] == 2
    assert extra["generation_output_delivered"] == 2  # capped at what was asked, and paid for
    final = await balance(caller)
    assert final == 1000 - 2 * IMAGE_PRICE - 2 * IMAGE_PRICE
    rows = await ledger(h, caller.account_id)
    assert _amounts(rows, extra["generation_id"]) == {"reserve": 2 * IMAGE_PRICE, "charge": 2 * IMAGE_PRICE}
    check_ledger(rows, await wait_settled(h, caller.account_id), final)


async def test_the_delivered_share_is_priced_as_the_reservation_was(harness: Harness) -> None:
    """The share is ``generation_cost_millis`` of the delivered outputs (its rounding), and a
    share above the reservation (a price raised since) is cut to the reservation."""
    model = harness.services.catalog.models[IMAGE]
    reserved = generation_cost_millis(model, outputs=4)
    for delivered in range(1, 4):
        share = delivered_cost_millis(model, reserved, asked=4, delivered=delivered)
        assert share == generation_cost_millis(model, outputs=delivered) == delivered * IMAGE_PRICE
    assert delivered_cost_millis(model, reserved, asked=4, delivered=4) == reserved
    assert delivered_cost_millis(model, reserved, asked=4, delivered=9) == reserved
    assert delivered_cost_millis(model, 1, asked=4, delivered=3) == 1
