"""The Cloudflare Workers AI adapter against a fake speaking the Workers AI REST protocol."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob, ProviderResult
from genplane.providers.cloudflare import CloudflareAdapter, dimensions
from genplane.providers.registry import build_providers
from genplane.settings import Settings
from tests.fakes.cloudflare import BASE_URL, HOST, FakeCloudflare
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork

TOKEN = "cf-test-token"
ACCOUNT = "acc0123456789"
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/bytedance/stable-diffusion-xl-lightning"


@dataclass
class Rig:
    fake: FakeCloudflare
    network: FakeNetwork
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> CloudflareAdapter:
        return CloudflareAdapter(self.settings, self.client)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cloudflare_api_token": TOKEN,
        "cloudflare_account_id": ACCOUNT,
        "cloudflare_base_url": BASE_URL,
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeCloudflare()
    network = FakeNetwork()
    fake.mount(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, make_settings())


def make_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "cloudflare/flux-schnell",
        "native_model_id": SCHNELL,
        "model_type": "image",
        "prompt": "a red fox in the snow",
        "ratio": "16:9",
        "output_format": "jpg",
        "output_number": 1,
    }
    values.update(overrides)
    return ProviderJob(**values)


async def run(adapter: CloudflareAdapter, job: ProviderJob) -> ProviderResult:
    prediction_id = await adapter.submit(job)
    return await adapter.wait(job, prediction_id)


async def fails_with(adapter: CloudflareAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run(adapter, job)
    return caught.value


async def test_flux_schnell_gets_only_what_its_schema_allows_and_base64_becomes_bytes(rig: Rig) -> None:
    job = make_job(specific={"generation_seed": 5, "generation_negative_prompt": "blur",
                             "generation_num_inference_steps": 6})
    result = await run(rig.adapter(), job)

    [call] = rig.fake.calls
    assert call.path == f"/client/v4/accounts/{ACCOUNT}/ai/run/{SCHNELL}"
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.headers["content-type"] == "application/json"
    # No size, seed or negative prompt: schnell's schema refuses unknown properties.
    assert call.fields == {"prompt": "a red fox in the snow", "steps": 6}
    [output] = result.outputs
    assert (output.ext, output.content_type, output.url) == ("jpg", "image/jpeg", None)
    assert output.data is not None and output.data[:3] == b"\xff\xd8\xff"


async def test_sdxl_answers_raw_png_and_n_outputs_are_n_calls(rig: Rig) -> None:
    source = png_bytes(color=(7, 8, 9))
    job = make_job(
        native_model_id=SDXL,
        ratio="9:16",
        output_number=3,
        specific={"generation_seed": 42, "generation_negative_prompt": "blur",
                  "generation_guidance_scale": 7.5, "generation_num_inference_steps": 8},
        inputs=[InputImage("https://example.com/a.png", source, "image/png")],
    )
    result = await run(rig.adapter(), job)

    assert len(rig.fake.calls) == 3
    assert sorted(c.fields["seed"] for c in rig.fake.calls) == [42, 43, 44]
    fields = next(c.fields for c in rig.fake.calls if c.fields["seed"] == 42)
    assert fields == {
        "prompt": "a red fox in the snow",
        "width": 768,
        "height": 1376,
        "seed": 42,
        "negative_prompt": "blur",
        "guidance": 7.5,
        "num_steps": 8,
        "image_b64": base64.b64encode(source).decode(),
    }
    assert [(o.ext, o.content_type) for o in result.outputs] == [("png", "image/png")] * 3
    assert all(o.data and o.data.startswith(b"\x89PNG") for o in result.outputs)


async def test_phoenix_answers_raw_jpeg(rig: Rig) -> None:
    result = await run(rig.adapter(), make_job(native_model_id="@cf/leonardo/phoenix-1.0", ratio="1:1"))
    assert (rig.fake.calls[0].fields["width"], rig.fake.calls[0].fields["height"]) == (1024, 1024)
    assert (result.outputs[0].ext, result.outputs[0].content_type) == ("jpg", "image/jpeg")


async def test_flux_2_is_multipart_with_reference_images_as_binary_parts(rig: Rig) -> None:
    first, second = png_bytes(color=(1, 2, 3)), png_bytes(color=(4, 5, 6))
    job = make_job(
        native_model_id="@cf/black-forest-labs/flux-2-dev",
        ratio="1:1",
        specific={"generation_seed": 9, "generation_num_inference_steps": 25},
        inputs=[InputImage("https://example.com/a.png", first, "image/png"),
                InputImage("https://example.com/b.png", second, "image/png")],
    )
    result = await run(rig.adapter(), job)

    [call] = rig.fake.calls
    assert call.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert call.fields == {"prompt": "a red fox in the snow", "width": "1024", "height": "1024",
                           "seed": "9", "steps": "25"}
    assert {name: (ctype, data) for name, (_, ctype, data) in call.files.items()} == {
        "input_image_0": ("image/png", first),
        "input_image_1": ("image/png", second),
    }
    assert result.outputs[0].ext == "jpg"


async def test_catalogue_overrides_names_values_and_params(rig: Rig) -> None:
    job = make_job(
        native_model_id="@cf/leonardo/lucid-origin",
        ratio="21:9",
        specific={"generation_seed": 3, "generation_num_inference_steps": 30},
        field_names={"generation_num_inference_steps": "steps", "generation_seed": ""},
        value_maps={"generation_ratio": {"21:9": "2048x880"}},
        params={"guidance": 3.5},
    )
    await run(rig.adapter(), job)
    assert rig.fake.calls[0].fields == {
        "prompt": "a red fox in the snow", "width": 2048, "height": 880, "steps": 30, "guidance": 3.5,
    }  # "" switched the seed off


def test_dimensions_are_about_one_megapixel_in_multiples_of_32() -> None:
    assert dimensions("1:1") == (1024, 1024)
    assert dimensions("16:9") == (1376, 768)
    for ratio in ("4:3", "3:2", "21:9", "9:21", "nonsense"):
        width, height = dimensions(ratio)
        assert width % 32 == 0 and height % 32 == 0
        assert 256 <= width <= 1920 and 256 <= height <= 1920


async def test_nsfw_refusal_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.nsfw = True
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_content_policy_violation", False, 400)
    assert error.stops_chain and "NSFW" in error.message


async def test_exhausted_daily_allocation_is_credits_exhausted(rig: Rig) -> None:
    rig.fake.out_of_neurons = True
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_credits_exhausted", False, 429)


async def test_capacity_429_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit, rig.fake.retry_after = 1, 7
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.retry_after) == ("bse_provider_unavailable", True, 7.0)


async def test_5xx_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.fail = 1
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_error", True, 500)


async def test_a_refused_body_is_invalid_input(rig: Rig) -> None:
    error = await fails_with(rig.adapter(), make_job(params={"seed": 1}))  # schnell has no seed
    assert (error.error, error.retryable) == ("bse_invalid_input", False)
    assert "additional properties" in error.message


async def test_an_unknown_model_does_not_stop_the_chain(rig: Rig) -> None:
    error = await fails_with(rig.adapter(), make_job(native_model_id="@cf/nobody/no-such-model"))
    assert (error.error, error.retryable, error.stops_chain) == ("bse_provider_unavailable", True, False)


@pytest.mark.parametrize("switch", ["malformed", "failed_envelope"])
async def test_garbled_or_failed_envelopes_are_retryable_provider_errors(rig: Rig, switch: str) -> None:
    setattr(rig.fake, switch, True)
    error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable) == ("bse_provider_error", True)


async def test_wrong_token_is_provider_unavailable_and_never_echoes_it(rig: Rig) -> None:
    adapter = CloudflareAdapter(make_settings(cloudflare_api_token="cf-wrong-secret"), rig.client)
    error = await fails_with(adapter, make_job())
    assert (error.error, error.http_status) == ("bse_provider_unavailable", 401)
    assert "cf-wrong-secret" not in error.message


async def test_a_hung_call_times_out(rig: Rig) -> None:
    rig.fake.hang = True
    async with asyncio.timeout(5):
        error = await fails_with(rig.adapter(), make_job())
    assert (error.error, error.retryable) == ("bse_provider_timeout", True)


async def test_one_failed_call_fails_the_job_and_holds_nothing(rig: Rig) -> None:
    rig.fake.fail = 1
    adapter = rig.adapter()
    with pytest.raises(ProviderError):
        await adapter.submit(make_job(output_number=3))
    assert adapter.held._results == {}


async def test_calls_for_several_outputs_run_concurrently(rig: Rig) -> None:
    rig.fake.delay = 0.05
    result = await run(rig.adapter(), make_job(output_number=4))
    assert len(result.outputs) == 4
    assert rig.fake.most_in_flight == 4  # all four calls were open at once


async def test_cancel_sends_nothing_and_reports_false(rig: Rig) -> None:
    adapter = rig.adapter()
    job = make_job()
    prediction_id = await adapter.submit(job)
    sent = len(rig.network.seen)
    assert await adapter.cancel(prediction_id) is False
    assert len(rig.network.seen) == sent  # Workers AI has nothing to cancel
    with pytest.raises(ProviderError):
        await adapter.wait(job, prediction_id)  # the held result was dropped


async def test_a_restart_loses_the_result_so_the_worker_submits_again(rig: Rig) -> None:
    job = make_job()
    prediction_id = await rig.adapter().submit(job)
    with pytest.raises(ProviderError) as caught:
        await rig.adapter().wait(job, prediction_id)  # a new process: a fresh adapter
    assert (caught.value.error, caught.value.retryable) == ("bse_provider_error", True)
    assert len(rig.fake.calls) == 1  # wait never calls the provider


def test_configured_needs_token_and_account() -> None:
    client = httpx.AsyncClient(transport=FakeNetwork())
    assert CloudflareAdapter(make_settings(), client).configured() is True
    assert CloudflareAdapter(make_settings(cloudflare_api_token=None), client).configured() is False
    assert CloudflareAdapter(make_settings(cloudflare_api_token=""), client).configured() is False
    assert CloudflareAdapter(make_settings(cloudflare_account_id=""), client).configured() is False


async def test_registry_builds_the_adapter(rig: Rig) -> None:
    providers = build_providers(rig.settings, rig.client)
    assert isinstance(providers["cloudflare"], CloudflareAdapter)
    assert providers["cloudflare"].configured()
    assert HOST in BASE_URL
