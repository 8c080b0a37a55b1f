"""The BytePlus ModelArk adapter against a fake Ark server speaking the same protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob
from genplane.providers.byteplus import BytePlusAdapter
from genplane.providers.registry import build_http_client, build_providers
from genplane.settings import Settings
from tests.fakes.byteplus import HOST, FakeBytePlus
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork

KEY = "ark-test-key"


@dataclass
class Rig:
    fake: FakeBytePlus
    network: FakeNetwork
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> BytePlusAdapter:
        return BytePlusAdapter(self.settings, self.client)


def settings(key: str | None = KEY, timeout: float = 5.0) -> Settings:
    return Settings(
        byteplus_api_key=key,
        byteplus_base_url=f"https://{HOST}",
        provider_poll_interval_seconds=0.01,
        provider_request_timeout_seconds=timeout,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeBytePlus(api_key=KEY)
    network = FakeNetwork()
    fake.install(network)
    s = settings(timeout=0.3)
    async with build_http_client(s, network) as client:
        yield Rig(fake, network, client, s)


def image_job(**kw: Any) -> ProviderJob:
    values: dict[str, Any] = dict(
        generation_id="gen_img",
        model_identifier="bytedance/seedream-4",
        native_model_id="seedream-4-0-250828",
        model_type="image",
        prompt="a red fox in snow",
        ratio="16:9",
        output_format="jpg",
        output_number=1,
    )
    values.update(kw)
    return ProviderJob(**values)


def video_job(**kw: Any) -> ProviderJob:
    values: dict[str, Any] = dict(
        generation_id="gen_vid",
        model_identifier="bytedance/seedance-1-pro",
        native_model_id="seedance-1-0-pro-250528",
        model_type="video",
        prompt="waves at dusk",
        ratio="16:9",
        output_format="mp4",
        output_number=1,
        duration=5,
        resolution="1080p",
    )
    values.update(kw)
    return ProviderJob(**values)


def picture(name: str = "in") -> InputImage:
    url = f"https://images.example.com/{name}.png"
    return InputImage(url=url, data=png_bytes(), content_type="image/png")


async def run(adapter: BytePlusAdapter, job: ProviderJob) -> Any:
    prediction_id = await adapter.submit(job)
    return await adapter.wait(job, prediction_id)


async def failure(adapter: BytePlusAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await run(adapter, job)
    return info.value


# ------------------------------------------------------------------------ images


async def test_image_request_is_native_and_outputs_are_urls(rig: Rig) -> None:
    job = image_job(output_number=2, specific={"generation_seed": 7}, inputs=[picture()])
    result = await run(rig.adapter(), job)

    submits = rig.fake.submits()
    assert len(submits) == 2  # one image per call: two concurrent calls
    for call in submits:
        assert call.path == "/api/v3/images/generations"
        assert call.headers["authorization"] == f"Bearer {KEY}"
        body = call.body
        assert body["model"] == "seedream-4-0-250828"
        assert body["prompt"] == "a red fox in snow"
        assert body["size"] == "2560x1440"
        assert body["response_format"] == "url"
        assert body["watermark"] is False
        assert body["image"] == picture().data_uri
        assert "negative_prompt" not in body and "output_format" not in body
    assert sorted(c.body["seed"] for c in submits) == [7, 8]

    assert len(result.outputs) == 2
    for out in result.outputs:
        assert out.ext == "jpg" and out.content_type == "image/jpeg" and out.data is None
        got = await rig.client.get(out.url)
        assert got.status_code == 200 and got.content[:2] == b"\xff\xd8"


async def test_image_catalogue_overrides_reach_the_body(rig: Rig) -> None:
    job = image_job(
        ratio="1:1",
        output_format="png",
        inputs=[picture("a"), picture("b")],
        specific={"generation_negative_prompt": "blurry"},
        params={"response_format": "b64_json", "sequential_image_generation": "disabled"},
        field_names={
            "generation_output_format": "output_format",
            "generation_negative_prompt": "negative_prompt",
        },
        value_maps={"generation_ratio": {"1:1": "1K"}, "generation_output_format": {"png": "png"}},
    )
    result = await run(rig.adapter(), job)
    body = rig.fake.submits()[0].body
    assert body["size"] == "1K"
    assert body["output_format"] == "png"
    assert body["negative_prompt"] == "blurry"
    assert body["sequential_image_generation"] == "disabled"
    assert body["response_format"] == "b64_json"
    assert body["image"] == [picture("a").data_uri, picture("b").data_uri]
    assert "seed" not in body
    [out] = result.outputs
    assert out.url is None and out.data is not None and out.data[:2] == b"\xff\xd8"
    assert (out.ext, out.content_type) == ("jpg", "image/jpeg")


@pytest.mark.parametrize("where", ["input", "output"])
async def test_image_moderation_is_a_content_policy_violation(rig: Rig, where: str) -> None:
    rig.fake.moderation = where
    err = await failure(rig.adapter(), image_job())
    assert err.error == "bse_content_policy_violation"
    assert not err.retryable and err.stops_chain
    assert "SensitiveContentDetected" in err.message


async def test_image_result_is_lost_in_a_restart(rig: Rig) -> None:
    prediction_id = await rig.adapter().submit(image_job())
    with pytest.raises(ProviderError) as info:
        await rig.adapter().wait(image_job(), prediction_id)
    assert info.value.error == "bse_provider_error" and info.value.retryable


# ------------------------------------------------------------ submit failures


async def test_wrong_key_is_provider_unavailable(rig: Rig) -> None:
    s = settings(key="ark-wrong")
    err = await failure(BytePlusAdapter(s, rig.client), image_job())
    assert err.error == "bse_provider_unavailable" and err.retryable and err.http_status == 401
    assert "ark-wrong" not in err.message


async def test_account_overdue_is_credits_exhausted(rig: Rig) -> None:
    rig.fake.account_overdue = True
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_credits_exhausted" and not err.retryable


async def test_server_error_on_submit_is_retryable(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    err = await failure(rig.adapter(), video_job())
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_error", True, 500)
    # The next submit goes through.
    assert (await run(rig.adapter(), video_job())).outputs


async def test_rate_limit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit, rig.fake.retry_after = 1, "7"
    err = await failure(rig.adapter(), image_job())
    assert err.error == "bse_provider_unavailable" and err.retryable
    assert err.retry_after == 7 and err.http_status == 429


async def test_hung_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submit = True
    async with asyncio.timeout(3):
        err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_timeout" and err.retryable


async def test_malformed_submit_answer_is_a_provider_error(rig: Rig) -> None:
    rig.fake.malformed = "submit"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_error" and err.retryable and "malformed" in err.message


# ------------------------------------------------------------------------ videos


async def test_video_request_is_native_and_goes_queued_running_done(rig: Rig) -> None:
    rig.fake.queued_polls, rig.fake.running_polls = 2, 2
    job = video_job(
        inputs=[picture("first")],
        last_frame=picture("last"),
        generate_audio=True,
        specific={"generation_seed": 42},
        params={"camera_fixed": True},
        value_maps={"generation_ratio": {"16:9": "adaptive"}},
    )
    adapter = rig.adapter()
    task_id = await adapter.submit(job)
    assert task_id.startswith("cgt-")
    result = await adapter.wait(job, task_id)

    [submit] = rig.fake.submits()
    assert submit.path == "/api/v3/contents/generations/tasks"
    assert submit.headers["authorization"] == f"Bearer {KEY}"
    body = submit.body
    assert body["model"] == "seedance-1-0-pro-250528"
    assert body["content"] == [
        {"type": "text", "text": "waves at dusk"},
        {"type": "image_url", "image_url": {"url": picture("first").data_uri}, "role": "first_frame"},
        {"type": "image_url", "image_url": {"url": picture("last").data_uri}, "role": "last_frame"},
    ]
    assert (body["ratio"], body["duration"], body["resolution"]) == ("adaptive", 5, "1080p")
    assert body["generate_audio"] is True and body["seed"] == 42
    assert body["watermark"] is False and body["camera_fixed"] is True

    polls = [c for c in rig.fake.calls if c.method == "GET"]
    assert len(polls) == 5 and all(p.path == f"/api/v3/contents/generations/tasks/{task_id}" for p in polls)
    [out] = result.outputs
    assert (out.ext, out.content_type) == ("mp4", "video/mp4")
    assert result.predict_time == 7.0
    got = await rig.client.get(out.url)
    assert got.status_code == 200 and got.content[4:8] == b"ftyp"


async def test_several_inputs_are_reference_images(rig: Rig) -> None:
    job = video_job(native_model_id="seedance-1-0-lite-i2v-250428", inputs=[picture("a"), picture("b")])
    await run(rig.adapter(), job)
    roles = [c.get("role") for c in rig.fake.submits()[0].body["content"]]
    assert roles == [None, "reference_image", "reference_image"]


async def test_wait_resumes_from_the_task_id_alone(rig: Rig) -> None:
    rig.fake.queued_polls = 1
    task_id = await rig.adapter().submit(video_job())
    fresh = BytePlusAdapter(settings(timeout=0.3), rig.client)  # as after a restart
    result = await fresh.wait(video_job(), task_id)
    assert result.outputs[0].url


async def test_output_moderation_fails_the_task(rig: Rig) -> None:
    rig.fake.moderation, rig.fake.running_polls = "output", 1
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_content_policy_violation" and not err.retryable
    assert "OutputVideoSensitiveContentDetected" in err.message


async def test_other_task_failures_are_retryable_provider_errors(rig: Rig) -> None:
    rig.fake.task_error = "InternalServiceError"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_error" and err.retryable


async def test_invalid_parameter_task_failure_is_invalid_input(rig: Rig) -> None:
    rig.fake.task_error = "InvalidParameter.Duration"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_invalid_input" and not err.retryable


async def test_polls_wait_out_rate_limits_and_garbled_answers(rig: Rig) -> None:
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.rate_limit, rig.fake.retry_after = 2, "0"
    rig.fake.malformed = "poll"
    result = await adapter.wait(video_job(), task_id)
    assert result.outputs[0].url
    assert len([c for c in rig.fake.calls if c.method == "GET"]) == 4


async def test_a_hung_poll_is_retried(rig: Rig) -> None:
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.hang_polls = 1
    async with asyncio.timeout(5):
        result = await adapter.wait(video_job(), task_id)
    assert result.outputs[0].url
    assert len([c for c in rig.fake.calls if c.method == "GET"]) == 2


async def test_a_provider_that_never_answers_polls_keeps_wait_going(rig: Rig) -> None:
    # The worker's per-attempt deadline ends this; the adapter itself keeps polling.
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.hang_polls = 1000
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await adapter.wait(video_job(), task_id)
    assert len([c for c in rig.fake.calls if c.method == "GET"]) >= 2


async def test_outputs_expire_at_the_cdn(rig: Rig) -> None:
    rig.fake.output_ttl = 0.0
    result = await run(rig.adapter(), video_job())
    await asyncio.sleep(0.01)
    got = await rig.client.get(result.outputs[0].url)
    assert got.status_code == 403  # the worker must download before this happens


# ------------------------------------------------------------------------ cancel


async def test_cancel_a_queued_task(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    assert await adapter.cancel(task_id) is True
    assert rig.fake.cancel_calls == [task_id]
    delete = next(c for c in rig.fake.calls if c.method == "DELETE")
    assert delete.path == f"/api/v3/contents/generations/tasks/{task_id}"
    assert delete.headers["authorization"] == f"Bearer {KEY}"
    err = await asyncio.wait_for(_wait_error(adapter, task_id), 5)
    assert err.error == "bse_provider_error" and err.retryable and "canceled upstream" in err.message


async def _wait_error(adapter: BytePlusAdapter, task_id: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await adapter.wait(video_job(), task_id)
    return info.value


async def test_a_running_task_cannot_be_canceled(rig: Rig) -> None:
    rig.fake.running_polls = 1000
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.tasks[task_id]["polls"] = 1  # it started
    assert await adapter.cancel(task_id) is False
    assert rig.fake.cancel_calls == [task_id]


async def test_cancel_of_a_synchronous_image_sends_nothing(rig: Rig) -> None:
    adapter = rig.adapter()
    prediction_id = await adapter.submit(image_job())
    assert await adapter.cancel(prediction_id) is False
    assert not [c for c in rig.fake.calls if c.method == "DELETE"]


# ------------------------------------------------------------------- configured


async def test_configured_needs_the_key(rig: Rig) -> None:
    assert rig.adapter().configured()
    assert not BytePlusAdapter(settings(key=None), rig.client).configured()
    assert not BytePlusAdapter(settings(key=""), rig.client).configured()


async def test_registry_builds_the_adapter(rig: Rig) -> None:
    providers = build_providers(rig.settings, rig.client)
    assert isinstance(providers["byteplus"], BytePlusAdapter)

