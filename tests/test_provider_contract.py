"""The adapter contract, written once and run against every provider's fake.

Each test takes the cases that have the behaviour (tests/provider_contract.py says which
switch each provider has); what only one protocol does is in its own test file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from genplane.providers.base import PredictionLost
from genplane.providers.registry import build_providers
from genplane.settings import Settings
from tests.provider_contract import ATTEMPT_BOUND, CASES, ProviderCase, Rig, open_rig, put, raises

Case = ProviderCase[Any, Any]
AnyRig = Rig[Any, Any]
WRONG_KEY = "wrong:secret-value"


def cases(where: Callable[[Case], object] = lambda case: True) -> pytest.MarkDecorator:
    chosen = [case for case in CASES if where(case)]
    return pytest.mark.parametrize("case", chosen, ids=[case.name for case in chosen])


@pytest.fixture
async def rig(case: Case) -> AsyncIterator[AnyRig]:
    async with open_rig(case) as rig:
        yield rig


def polls(rig: AnyRig) -> int:
    assert rig.case.polls is not None
    return rig.case.polls(rig.fake)


def set_lifecycle(rig: AnyRig, queued: int, running: int = 0) -> None:
    put(rig.fake, **dict(zip(rig.case.lifecycle, (queued, running), strict=True)))


# -- configuration and credentials ----------------------------------------------------------


@cases()
async def test_configured_only_with_credentials(case: Case) -> None:
    async with httpx.AsyncClient() as client:
        adapter = case.adapter(case.settings(), client)
        assert adapter.configured() is True
        built = build_providers(case.settings(), client)[adapter.provider_id]
        assert type(built) is type(adapter) and built.configured()
        for name in case.required_settings:
            for blank in {"", Settings.model_fields[name].default}:  # empty, or never set
                assert case.adapter(case.settings(**{name: blank}), client).configured() is False, blank


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
async def test_a_key_of_blanks_is_no_key(case: Case) -> None:
    async with httpx.AsyncClient() as client:
        for name in case.required_settings:
            assert case.adapter(case.settings(**{name: "  "}), client).configured() is False, name


@cases()
async def test_a_wrong_key_is_provider_unavailable_and_never_echoed(rig: AnyRig) -> None:
    case = rig.case
    err = await rig.fails(case.job(), rig.adapter(**{case.key_setting: WRONG_KEY}))
    assert (err.error, err.retryable) == ("bse_provider_unavailable", True)
    assert err.http_status == case.wrong_key_status
    assert "secret-value" not in err.message and case.key not in err.message


# -- failures of the submit -----------------------------------------------------------------


@cases()
async def test_a_hung_submit_times_out(rig: AnyRig) -> None:
    rig.case.make_submit_hang(rig.fake)
    async with asyncio.timeout(ATTEMPT_BOUND):  # the adapter's own timeout ends it well before
        err = await raises(rig.adapter().submit(rig.case.job()))
    assert (err.error, err.retryable) == ("bse_provider_timeout", True)


@cases()
async def test_a_rate_limit_carries_retry_after(rig: AnyRig) -> None:
    rig.case.make_rate_limited(rig.fake, 7)
    err = await raises(rig.adapter().submit(rig.case.job()))
    assert (err.error, err.retryable, err.retry_after, err.http_status) == (
        "bse_provider_unavailable", True, 7.0, 429
    )
    assert await rig.adapter().submit(rig.case.job())  # the limit passed: the next one goes through


@cases()
async def test_a_server_error_is_a_retryable_provider_error(rig: AnyRig) -> None:
    rig.case.make_server_error(rig.fake)
    err = await raises(rig.adapter().submit(rig.case.job()))
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_error", True, 500)


@cases(lambda case: case.make_malformed)
async def test_a_malformed_answer_is_a_retryable_provider_error(rig: AnyRig) -> None:
    assert rig.case.make_malformed is not None
    rig.case.make_malformed(rig.fake)
    err = await raises(rig.adapter().submit(rig.case.job()))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "malformed" in err.message


@cases(lambda case: case.make_out_of_credits)
async def test_an_empty_account_is_credits_exhausted(rig: AnyRig) -> None:
    assert rig.case.make_out_of_credits is not None
    rig.case.make_out_of_credits(rig.fake)
    err = await raises(rig.adapter().submit(rig.case.job()))
    assert (err.error, err.retryable, err.http_status) == (
        "bse_provider_credits_exhausted", False, rig.case.credits_status
    )


# -- the outcome ----------------------------------------------------------------------------


@cases(lambda case: case.make_refusal)
async def test_moderation_is_a_content_policy_violation_that_stops_the_chain(rig: AnyRig) -> None:
    assert rig.case.make_refusal is not None
    words = rig.case.make_refusal(rig.fake)
    err = await rig.fails(rig.case.job())
    assert (err.error, err.retryable, err.stops_chain) == ("bse_content_policy_violation", False, True)
    assert err.http_status == rig.case.refusal_status
    assert all(word in err.message for word in words), err.message


@cases(lambda case: case.make_task_failure)
async def test_a_failed_task_is_a_retryable_provider_error(rig: AnyRig) -> None:
    assert rig.case.make_task_failure is not None
    words = rig.case.make_task_failure(rig.fake)
    err = await rig.fails(rig.case.job())
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert all(word in err.message for word in words), err.message


@cases(lambda case: case.make_outputs_expire)
async def test_output_urls_expire_so_the_worker_fetches_them_at_once(rig: AnyRig) -> None:
    assert rig.case.make_outputs_expire is not None
    job = rig.case.job()
    result = await rig.run(job)
    assert len(result.outputs) == job.output_number
    for output in result.outputs:
        assert output.url is not None and output.data is None
        fetched = await rig.client.get(output.url)  # what the worker downloads is what was said
        assert (fetched.status_code, fetched.headers["content-type"]) == (200, output.content_type)
    rig.case.make_outputs_expire(rig.fake)
    for output in (await rig.run(job)).outputs:
        assert output.url is not None
        assert (await rig.client.get(output.url)).status_code == 403


# -- polling --------------------------------------------------------------------------------


@cases(lambda case: case.polls)
async def test_queued_then_running_then_done_and_resumable_from_the_id_alone(rig: AnyRig) -> None:
    set_lifecycle(rig, queued=2, running=2)
    job = rig.case.job()
    prediction_id = await rig.adapter().submit(job)
    # A restart: a new client and adapter, nothing shared with the first but the id.
    async with httpx.AsyncClient(transport=rig.network) as client:
        fresh = rig.case.adapter(rig.case.settings(), client)
        async with asyncio.timeout(ATTEMPT_BOUND):
            assert len((await fresh.wait(job, prediction_id)).outputs) == job.output_number
    assert polls(rig) == 5  # 2 queued, 2 running, then the one that found it done


@cases(lambda case: case.make_bad_polls)
async def test_garbled_failed_and_hung_polls_are_waited_out(rig: AnyRig) -> None:
    assert rig.case.make_bad_polls is not None
    adapter, job = rig.adapter(), rig.case.job()
    prediction_id = await adapter.submit(job)
    bad = rig.case.make_bad_polls(rig.fake)  # none of them is the job's outcome
    async with asyncio.timeout(ATTEMPT_BOUND * (bad + 1)):
        assert len((await adapter.wait(job, prediction_id)).outputs) == job.output_number
    assert polls(rig) == bad + 1


@cases(lambda case: case.make_poll_hang)
async def test_polls_that_never_answer_are_asked_again_until_the_callers_deadline(rig: AnyRig) -> None:
    assert rig.case.make_poll_hang is not None
    adapter, job = rig.adapter(), rig.case.job()
    prediction_id = await adapter.submit(job)
    rig.case.make_poll_hang(rig.fake)
    # By design the adapter keeps polling; the worker's per-attempt deadline ends it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await adapter.wait(job, prediction_id)
    assert polls(rig) >= 2  # each hung poll timed out and was asked again


# -- cancel and results held in memory ------------------------------------------------------


@cases(lambda case: case.cancels)
async def test_cancel_reaches_the_provider_and_the_job_ends(rig: AnyRig) -> None:
    assert rig.case.cancels is not None
    set_lifecycle(rig, queued=10**6)
    adapter, job = rig.adapter(), rig.case.job()
    prediction_id = await adapter.submit(job)
    sent = len(rig.network.seen)
    assert await adapter.cancel(prediction_id) is True
    [canceled] = rig.case.cancels(rig.fake)
    assert canceled in prediction_id
    cancel_calls = rig.network.seen[sent:]
    assert cancel_calls  # each with the key (the fake refuses it otherwise)
    assert all(any(rig.case.key in value for value in call.headers.values()) for call in cancel_calls)
    async with asyncio.timeout(ATTEMPT_BOUND):
        err = await raises(adapter.wait(job, prediction_id))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "canceled" in err.message and "upstream" in err.message


@cases(lambda case: case.cancel_refused_once_running)
async def test_a_running_task_cannot_be_canceled(rig: AnyRig) -> None:
    assert rig.case.cancels is not None
    set_lifecycle(rig, queued=0, running=10**6)
    adapter, job = rig.adapter(), rig.case.job()
    task_id = await adapter.submit(job)
    with pytest.raises(TimeoutError):  # the polls find it running, and it runs on
        async with asyncio.timeout(0.2):
            await adapter.wait(job, task_id)
    assert await adapter.cancel(task_id) is False
    assert rig.case.cancels(rig.fake) == [task_id]  # asked, and refused


@cases(lambda case: case.polls and not case.cancels and case.cancel_sends_nothing)
async def test_cancel_without_a_cancel_call_sends_nothing(rig: AnyRig) -> None:
    adapter = rig.adapter()
    prediction_id = await adapter.submit(rig.case.job())
    sent = len(rig.network.seen)
    assert await adapter.cancel(prediction_id) is False
    assert len(rig.network.seen) == sent


@cases(lambda case: case.polls is None)
async def test_a_synchronous_result_is_held_in_memory_only(rig: AnyRig) -> None:
    adapter, job = rig.adapter(), rig.case.job()
    held = await adapter.submit(job)  # the provider answered here; wait only hands it over
    sent = len(rig.network.seen)
    lost = await raises(rig.adapter().wait(job, held))  # a restart: the held result is gone
    assert isinstance(lost, PredictionLost) and (lost.error, lost.retryable) == ("bse_provider_error", True)
    assert await adapter.cancel(held) is False  # nothing to cancel upstream: it only forgets
    await raises(adapter.wait(job, held))
    assert len(rig.network.seen) == sent  # neither wait nor cancel called the provider
