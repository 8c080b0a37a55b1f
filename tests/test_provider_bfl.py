"""The BFL adapter against a fake speaking BFL's wire protocol."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob
from genplane.providers.bfl import BflAdapter, dimensions
from genplane.settings import Settings
from tests.fakes.bfl import FakeBfl
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork


@dataclass
class Rig:
    fake: FakeBfl
    network: FakeNetwork
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> BflAdapter:
        return BflAdapter(self.settings, self.client)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bfl_api_key": "bfl-test-key",
        "bfl_base_url": "https://api.bfl.test",
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeBfl()
    network = FakeNetwork()
    fake.mount(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, make_settings())


def make_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "bfl/flux-1.1-pro",
        "native_model_id": "flux-pro-1.1",
        "model_type": "image",
        "prompt": "a red fox in the snow",
        "ratio": "16:9",
        "output_format": "jpg",
        "output_number": 1,
    }
    values.update(overrides)
    return ProviderJob(**values)


async def run(adapter: BflAdapter, job: ProviderJob) -> Any:
    async with asyncio.timeout(5):  # a regression that polls forever fails instead of hanging
        prediction_id = await adapter.submit(job)
        return await adapter.wait(job, prediction_id)


async def fails_with(adapter: BflAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run(adapter, job)
    return caught.value


async def test_success_maps_the_job_and_returns_the_signed_samples(rig: Rig) -> None:
    job = make_job(
        output_number=2,
        specific={"generation_seed": 42},
        params={"safety_tolerance": 2, "prompt_upsampling": False},
    )
    adapter = rig.adapter()
    prediction_id = await adapter.submit(job)
    result = await adapter.wait(job, prediction_id)

    assert len(prediction_id.split(",")) == 2
    assert [s["path"] for s in rig.fake.submissions] == ["/v1/flux-pro-1.1"] * 2
    assert all(s["headers"]["x-key"] == "bfl-test-key" for s in rig.fake.submissions)
    first, second = (s["body"] for s in rig.fake.submissions)
    assert first == {
        "prompt": "a red fox in the snow",
        "width": 1376,
        "height": 768,
        "output_format": "jpeg",
        "seed": 42,
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }
    assert second["seed"] == 43  # N tasks, N different pictures
    # Polls go to the regional host named in polling_url, not the global one.
    assert set(rig.fake.polls) == {"api.us1.bfl.test"}

    assert len(result.outputs) == 2
    for output in result.outputs:
        assert output.ext == "jpg" and output.content_type == "image/jpeg"
        assert output.data is None and output.url is not None
        assert httpx.URL(output.url).host == "delivery.bfl.test"
        downloaded = await rig.client.get(output.url)
        assert downloaded.status_code == 200 and downloaded.content[:2] == b"\xff\xd8"
    assert result.predict_time == 3.5


async def test_kontext_sends_aspect_ratio_and_input_images_as_base64(rig: Rig) -> None:
    first, second = png_bytes(color=(1, 2, 3)), png_bytes(color=(4, 5, 6))
    job = make_job(
        native_model_id="flux-kontext-pro",
        ratio="9:16",
        output_format="png",
        inputs=[
            InputImage("https://example.com/a.png", first, "image/png"),
            InputImage("https://example.com/b.png", second, "image/png"),
        ],
    )
    result = await run(rig.adapter(), job)

    body = rig.fake.submissions[0]["body"]
    assert rig.fake.submissions[0]["path"] == "/v1/flux-kontext-pro"
    assert body["aspect_ratio"] == "9:16" and "width" not in body
    assert body["output_format"] == "png"
    assert base64.b64decode(body["input_image"]) == first
    assert base64.b64decode(body["input_image_2"]) == second
    assert result.outputs[0].ext == "png" and result.outputs[0].content_type == "image/png"


async def test_catalogue_overrides_names_values_and_params(rig: Rig) -> None:
    job = make_job(
        native_model_id="flux-2-pro",
        ratio="21:9",
        specific={"generation_seed": 5, "generation_negative_prompt": "blur"},
        field_names={"generation_seed": "noise_seed", "generation_negative_prompt": "negative_prompt"},
        value_maps={"generation_ratio": {"21:9": "1440x608"}, "generation_output_format": {"jpg": "webp"}},
        params={"safety_tolerance": 5},
    )
    result = await run(rig.adapter(), job)

    body = rig.fake.submissions[0]["body"]
    assert (body["width"], body["height"]) == (1440, 608)
    assert body["output_format"] == "webp"
    assert body["noise_seed"] == 5 and "seed" not in body
    assert body["negative_prompt"] == "blur"
    assert body["safety_tolerance"] == 5
    assert result.outputs[0].ext == "webp"


async def test_ratio_name_can_switch_a_width_height_model_to_aspect_ratio(rig: Rig) -> None:
    job = make_job(field_names={"generation_ratio": "aspect_ratio"})
    await run(rig.adapter(), job)
    body = rig.fake.submissions[0]["body"]
    assert body["aspect_ratio"] == "16:9" and "width" not in body


def test_dimensions_are_about_one_megapixel_in_multiples_of_32() -> None:
    assert dimensions("1:1") == (1024, 1024)
    assert dimensions("9:16") == (768, 1376)
    for ratio in ("4:3", "3:2", "21:9", "9:21", "nonsense"):
        width, height = dimensions(ratio)
        assert width % 32 == 0 and height % 32 == 0
        assert 256 <= width <= 1440 and 256 <= height <= 1440


async def test_queued_then_running_then_ready(rig: Rig) -> None:
    rig.fake.pending_polls, rig.fake.running_polls = 2, 3
    result = await run(rig.adapter(), make_job())
    assert len(rig.fake.polls) == 6
    assert result.outputs[0].url


@pytest.mark.parametrize("outcome", ["Request Moderated", "Content Moderated"])
async def test_moderated_tasks_are_content_policy_violations(rig: Rig, outcome: str) -> None:
    rig.fake.outcome = outcome
    error = await fails_with(rig.adapter(), make_job())
    assert error.error == "bse_content_policy_violation"
    assert error.retryable is False and error.stops_chain
    assert outcome in error.message and "Derivative Works" in error.message


async def test_a_prompt_refused_at_submit_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.moderate_submit = True
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_content_policy_violation", False, 400)


async def test_an_invalid_request_is_invalid_input(rig: Rig) -> None:
    error = await fails_with(rig.adapter(), make_job(params={"prompt": None}))
    assert (error.error, error.retryable, error.http_status) == ("bse_invalid_input", False, 422)


@pytest.mark.parametrize("outcome", ["Error", "Task not found"])
async def test_failed_or_lost_tasks_are_retryable_provider_errors(rig: Rig, outcome: str) -> None:
    rig.fake.outcome = outcome
    error = await fails_with(rig.adapter(), make_job())
    assert error.error == "bse_provider_error" and error.retryable is True


async def test_5xx_on_submit(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_error", True, 500)


async def test_429_on_submit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit_submit, rig.fake.retry_after = 1, 7
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.retry_after) == ("bse_provider_unavailable", True, 7.0)


async def test_a_429_on_a_later_task_is_waited_out_so_no_task_is_orphaned(rig: Rig) -> None:
    rig.fake.rate_limit_after, rig.fake.rate_limit_submit, rig.fake.retry_after = 1, 2, 0
    result = await run(rig.adapter(), make_job(output_number=3))
    assert len(rig.fake.submissions) == 5  # accepted, 429, 429, accepted, accepted
    assert len(rig.fake.tasks) == 3 and len(result.outputs) == 3


async def test_out_of_credits(rig: Rig) -> None:
    rig.fake.out_of_credits = True
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable) == ("bse_provider_credits_exhausted", False)


async def test_wrong_key_is_provider_unavailable_and_never_echoes_the_key(rig: Rig) -> None:
    adapter = BflAdapter(make_settings(bfl_api_key="wrong-secret-key"), rig.client)
    error = await fails_with(adapter, make_job())
    assert (error.error, error.http_status) == ("bse_provider_unavailable", 403)
    assert "wrong-secret-key" not in error.message


async def test_a_hung_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submit = True
    async with asyncio.timeout(5):
        error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable) == ("bse_provider_timeout", True)


async def test_a_hung_poll_is_retried_until_the_callers_deadline(rig: Rig) -> None:
    adapter = rig.adapter()
    job = make_job()
    prediction_id = await adapter.submit(job)
    rig.fake.hang_poll = True
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.2):
            await adapter.wait(job, prediction_id)
    assert len(rig.fake.polls) >= 2  # each hung poll timed out and was asked again


async def test_garbled_and_5xx_polls_are_waited_out(rig: Rig) -> None:
    rig.fake.malformed_polls, rig.fake.poll_errors = 2, 1
    result = await run(rig.adapter(), make_job())
    assert result.outputs[0].url
    assert len(rig.fake.polls) == 4


async def test_samples_expire_so_the_worker_must_fetch_them_at_once(rig: Rig) -> None:
    rig.fake.files.ttl_seconds = 0.05
    result = await run(rig.adapter(), make_job())
    url = result.outputs[0].url
    assert url is not None
    assert (await rig.client.get(url)).status_code == 200
    await asyncio.sleep(0.1)
    assert (await rig.client.get(url)).status_code == 403


async def test_cancel_is_not_offered(rig: Rig) -> None:
    adapter = rig.adapter()
    prediction_id = await adapter.submit(make_job())
    sent = len(rig.network.seen)
    assert await adapter.cancel(prediction_id) is False
    assert len(rig.network.seen) == sent  # BFL has no cancel endpoint to call


def test_configured_needs_the_key() -> None:
    client = httpx.AsyncClient(transport=FakeNetwork())
    assert BflAdapter(make_settings(), client).configured() is True
    assert BflAdapter(make_settings(bfl_api_key=None), client).configured() is False
    assert BflAdapter(make_settings(bfl_api_key=""), client).configured() is False


async def test_wait_resumes_from_the_prediction_id_alone(rig: Rig) -> None:
    job = make_job(output_number=3)
    prediction_id = await rig.adapter().submit(job)
    assert prediction_id.count("@api.us1.bfl.test") == 3

    result = await rig.adapter().wait(job, prediction_id)  # a new process: a fresh adapter
    assert len(result.outputs) == 3
    assert set(rig.fake.polls) == {"api.us1.bfl.test"}


async def test_without_a_polling_url_the_configured_host_is_polled(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    prediction_id = await rig.adapter().submit(job)
    assert "@" not in prediction_id
    await rig.adapter().wait(job, prediction_id)
    assert set(rig.fake.polls) == {"api.bfl.test"}


async def test_the_key_is_never_sent_to_a_foreign_polling_host(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    task_id = await rig.adapter().submit(job)
    async with asyncio.timeout(5):
        await rig.adapter().wait(job, f"{task_id}@collector.example")
    assert rig.network.requests_to("collector.example") == []
    assert set(rig.fake.polls) == {"api.bfl.test"}
