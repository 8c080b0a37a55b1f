"""The fal adapter against a fake that speaks fal's queue API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob
from genplane.providers.fal import FalAdapter, app_id
from genplane.settings import Settings
from tests.fakes.fal import CDN_HOST, QUEUE_HOST, FakeFal
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork

KEY = "fal-key-id:fal-key-secret"


def settings(key: str | None = KEY, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "fal_key": key,
        "fal_queue_url": f"https://{QUEUE_HOST}",
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.3,
    }
    values.update(over)
    return Settings(**values)


@dataclass
class Rig:
    fake: FakeFal
    network: FakeNetwork
    client: httpx.AsyncClient
    adapter: FalAdapter


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeFal(key=KEY)
    network = FakeNetwork()
    fake.install(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, FalAdapter(settings(), client))


def image_job(**over: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "bfl/flux-schnell",
        "native_model_id": "fal-ai/flux/schnell",
        "model_type": "image",
        "prompt": "a lighthouse at dusk",
        "ratio": "16:9",
        "output_format": "jpg",
        "output_number": 2,
        "specific": {"generation_seed": 11, "generation_negative_prompt": "text"},
    }
    values.update(over)
    return ProviderJob(**values)


def video_job(**over: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_v",
        "model_identifier": "bytedance/seedance-1-pro",
        "native_model_id": "fal-ai/bytedance/seedance/v1/pro/image-to-video",
        "model_type": "video",
        "prompt": "waves on rocks",
        "ratio": "16:9",
        "output_format": "mp4",
        "output_number": 1,
        "duration": 5,
        "resolution": "1080p",
        "generate_audio": False,
        "inputs": [InputImage("https://img.example/first.png", png_bytes(), "image/png")],
        "last_frame": InputImage("https://img.example/last.png", png_bytes(), "image/png"),
    }
    values.update(over)
    return ProviderJob(**values)


async def expect_error(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await awaitable
    return caught.value


# -- the app id rule ---------------------------------------------------------------------


def test_app_id_drops_the_endpoint_sub_path() -> None:
    assert app_id("fal-ai/flux/dev") == "fal-ai/flux"
    assert app_id("fal-ai/flux-pro/v1.1-ultra") == "fal-ai/flux-pro"
    assert app_id("fal-ai/bytedance/seedance/v1/pro/text-to-video") == "fal-ai/bytedance"
    assert app_id("fal-ai/nano-banana") == "fal-ai/nano-banana"
    assert app_id("workflows/someone/my-flow/run") == "workflows/someone/my-flow"
    assert app_id("12345-my-app") == "12345/my-app"
    with pytest.raises(ProviderError):
        app_id("flux")


# -- success and request mapping -----------------------------------------------------------


async def test_request_mapping_and_outputs(rig: Rig) -> None:
    job = image_job()
    prediction_id = await rig.adapter.submit(job)

    submitted = rig.fake.submitted[0]
    assert submitted["path"] == "/fal-ai/flux/schnell"
    assert prediction_id == f"fal-ai/flux|{submitted['request_id']}"
    post = next(r for r in rig.network.requests_to(QUEUE_HOST) if r.method == "POST")
    assert post.headers["authorization"] == f"Key {KEY}"
    assert submitted["body"] == {
        "prompt": "a lighthouse at dusk",
        "image_size": "landscape_16_9",
        "output_format": "jpeg",
        "num_images": 2,
        "seed": 11,
        "negative_prompt": "text",
    }

    result = await rig.adapter.wait(job, prediction_id)
    # Status was read under the app id, without the endpoint's sub-path.
    assert rig.fake.status_paths == [f"fal-ai/flux/requests/{submitted['request_id']}/status"]
    assert result.predict_time == 1.5
    assert len(result.outputs) == 2
    for output in result.outputs:
        assert (output.ext, output.content_type, output.data) == ("jpg", "image/jpeg", None)
        assert output.url is not None and httpx.URL(output.url).host == CDN_HOST
        downloaded = await rig.client.get(output.url)
        assert downloaded.status_code == 200 and downloaded.content.startswith(b"\xff\xd8")


async def test_ratios_without_a_preset_are_sent_as_width_and_height(rig: Rig) -> None:
    await rig.adapter.submit(image_job(ratio="21:9", output_number=1))
    size = rig.fake.submitted[0]["body"]["image_size"]
    assert size["width"] % 16 == 0 and size["height"] % 16 == 0
    assert abs(size["width"] / size["height"] - 21 / 9) < 0.05


async def test_catalogue_overrides(rig: Rig) -> None:
    job = image_job(
        native_model_id="fal-ai/imagen4/preview",
        output_number=1,
        output_format="png",
        field_names={"generation_ratio": "aspect_ratio", "generation_negative_prompt": ""},
        value_maps={"generation_output_format": {"png": "PNG"}},
        params={"enable_safety_checker": True, "safety_tolerance": "2"},
        inputs=[InputImage("https://img.example/ref.png", png_bytes(), "image/png")],
    )
    await rig.adapter.submit(job)
    assert rig.fake.submitted[0]["path"] == "/fal-ai/imagen4/preview"
    assert rig.fake.submitted[0]["body"] == {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "16:9",
        "output_format": "PNG",
        "seed": 11,
        "image_urls": ["https://img.example/ref.png"],
        "enable_safety_checker": True,
        "safety_tolerance": "2",
    }


async def test_one_request_per_output_when_the_model_makes_one(rig: Rig) -> None:
    job = image_job(output_number=3, field_names={"generation_output_number": ""})
    prediction_id = await rig.adapter.submit(job)
    app, _, ids = prediction_id.partition("|")
    assert app == "fal-ai/flux" and len(ids.split(",")) == 3
    assert [s["body"]["seed"] for s in rig.fake.submitted] == [11, 12, 13]
    assert all("num_images" not in s["body"] for s in rig.fake.submitted)
    assert len((await rig.adapter.wait(job, prediction_id)).outputs) == 3


async def test_video_request_and_output(rig: Rig) -> None:
    rig.fake.video = True
    job = video_job()
    prediction_id = await rig.adapter.submit(job)
    assert prediction_id.startswith("fal-ai/bytedance|")
    assert rig.fake.submitted[0]["body"] == {
        "prompt": "waves on rocks",
        "aspect_ratio": "16:9",
        "image_url": "https://img.example/first.png",
        "duration": "5",
        "resolution": "1080p",
        "generate_audio": False,
        "end_image_url": "https://img.example/last.png",
    }
    result = await rig.adapter.wait(job, prediction_id)
    assert [(o.ext, o.content_type) for o in result.outputs] == [("mp4", "video/mp4")]


async def test_duration_value_map_wins_over_the_string_default(rig: Rig) -> None:
    job = video_job(
        native_model_id="fal-ai/veo3",
        duration=8,
        inputs=[],
        last_frame=None,
        value_maps={"generation_duration": {"8": "8s"}},
    )
    await rig.adapter.submit(job)
    assert rig.fake.submitted[0]["body"]["duration"] == "8s"


async def test_queued_then_running_then_done(rig: Rig) -> None:
    rig.fake.queued_polls = 2
    rig.fake.running_polls = 2
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    result = await rig.adapter.wait(job, prediction_id)
    assert len(result.outputs) == 1
    assert len(rig.fake.status_paths) == 5


async def test_wait_resumes_from_the_id_alone(rig: Rig) -> None:
    rig.fake.queued_polls = 1
    job = image_job()
    prediction_id = await rig.adapter.submit(job)
    async with httpx.AsyncClient(transport=rig.network) as client:
        result = await FalAdapter(settings(), client).wait(job, prediction_id)
    assert len(result.outputs) == 2


async def test_outputs_expire_on_the_cdn(rig: Rig) -> None:
    rig.fake.files.ttl_seconds = 0.2
    job = image_job(output_number=1)
    url = (await rig.adapter.wait(job, await rig.adapter.submit(job))).outputs[0].url
    assert url is not None
    assert (await rig.client.get(url)).status_code == 200
    await asyncio.sleep(0.3)
    assert (await rig.client.get(url)).status_code == 403


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [(500, "bse_provider_error"), (503, "bse_provider_unavailable")]
)
async def test_submit_server_errors(rig: Rig, status: int, error: str) -> None:
    rig.fake.submit_error_status = status
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable, err.http_status) == (error, True, status)


async def test_rate_limit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limited_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.http_status, err.retry_after) == ("bse_provider_unavailable", 429, 2.0)


async def test_exhausted_balance_is_credits_exhausted(rig: Rig) -> None:
    rig.fake.out_of_balance = True
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_credits_exhausted", False, 403)


async def test_wrong_key_is_unavailable_and_never_echoed(rig: Rig) -> None:
    adapter = FalAdapter(settings("wrong:secret-value"), rig.client)
    err = await expect_error(adapter.submit(image_job()))
    assert (err.error, err.http_status) == ("bse_provider_unavailable", 401)
    assert "secret-value" not in err.message


async def test_hang_on_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable) == ("bse_provider_timeout", True)


async def test_hung_status_polls_are_waited_out(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.hang_polls = 2
    assert len((await rig.adapter.wait(job, prediction_id)).outputs) == 1


async def test_status_that_never_answers_keeps_waiting_until_the_deadline(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.hang_polls = 10**6
    with pytest.raises(TimeoutError):  # the worker's per-attempt deadline ends it
        async with asyncio.timeout(1.0):
            await rig.adapter.wait(job, prediction_id)


async def test_malformed_json(rig: Rig) -> None:
    rig.fake.malformed_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable) == ("bse_provider_error", True)

    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.malformed_polls = 2
    assert len((await rig.adapter.wait(job, prediction_id)).outputs) == 1


async def test_content_checker_refusal_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.moderate = True
    job = image_job()
    err = await expect_error(rig.adapter.wait(job, await rig.adapter.submit(job)))
    assert (err.error, err.retryable, err.stops_chain) == ("bse_content_policy_violation", False, True)
    assert err.http_status == 422


async def test_nsfw_flagged_outputs_are_dropped(rig: Rig) -> None:
    rig.fake.nsfw_flags = [True, False]
    job = image_job(output_number=2)
    result = await rig.adapter.wait(job, await rig.adapter.submit(job))
    assert len(result.outputs) == 1


async def test_every_output_flagged_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.nsfw_flags = [True, True]
    job = image_job(output_number=2)
    err = await expect_error(rig.adapter.wait(job, await rig.adapter.submit(job)))
    assert (err.error, err.retryable) == ("bse_content_policy_violation", False)


async def test_runner_failure_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.fail_error = "CUDA error: an illegal memory access was encountered"
    job = image_job()
    err = await expect_error(rig.adapter.wait(job, await rig.adapter.submit(job)))
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_error", True, 500)
    assert "illegal memory access" in err.message


async def test_cancel_uses_the_app_path_and_the_job_ends_canceled(rig: Rig) -> None:
    rig.fake.queued_polls = 10**6
    job = image_job()
    prediction_id = await rig.adapter.submit(job)
    request_id = prediction_id.split("|")[1]
    assert await rig.adapter.cancel(prediction_id) is True
    assert rig.fake.canceled == [request_id]
    put = next(r for r in rig.network.requests_to(QUEUE_HOST) if r.method == "PUT")
    assert httpx.URL(put.url).path == f"/fal-ai/flux/requests/{request_id}/cancel"
    assert put.headers["authorization"] == f"Key {KEY}"
    err = await expect_error(rig.adapter.wait(job, prediction_id))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "canceled upstream" in err.message


async def test_cancel_after_completion_is_not_accepted(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    await rig.adapter.wait(job, prediction_id)
    assert await rig.adapter.cancel(prediction_id) is False


async def test_malformed_prediction_id(rig: Rig) -> None:
    err = await expect_error(rig.adapter.wait(image_job(), "no-separator"))
    assert (err.error, err.retryable) == ("bse_provider_error", False)


async def test_configured_only_with_a_key() -> None:
    async with httpx.AsyncClient() as client:
        assert FalAdapter(settings(), client).configured() is True
        assert FalAdapter(settings(key=None), client).configured() is False
        assert FalAdapter(settings(key=""), client).configured() is False
