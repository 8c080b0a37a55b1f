"""The Runway adapter against a fake speaking Runway's task protocol."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob, ProviderResult
from genplane.providers.registry import build_providers
from genplane.providers.runway import RunwayAdapter, failure_error, pixel_ratio
from genplane.settings import Settings
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork
from tests.fakes.runway import CDN_HOST, HOST, FakeRunway

KEY = "key_runway_test"


@dataclass
class Rig:
    fake: FakeRunway
    network: FakeNetwork
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> RunwayAdapter:
        return RunwayAdapter(self.settings, self.client)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "runway_api_key": KEY,
        "runway_base_url": f"https://{HOST}",
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeRunway()
    network = FakeNetwork()
    fake.mount(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, make_settings())


def image(color: tuple[int, int, int] = (1, 2, 3), url: str = "https://example.com/a.png") -> InputImage:
    return InputImage(url, png_bytes(color=color), "image/png")


def video_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "runway/gen4-turbo",
        "native_model_id": "gen4_turbo",
        "model_type": "video",
        "prompt": "the fox starts running",
        "ratio": "16:9",
        "output_format": "mp4",
        "output_number": 1,
        "duration": 5,
        "resolution": "720p",
        "inputs": [image()],
    }
    values.update(overrides)
    return ProviderJob(**values)


def image_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_2",
        "model_identifier": "runway/gen4-image",
        "native_model_id": "gen4_image",
        "model_type": "image",
        "prompt": "a red fox in the snow",
        "ratio": "16:9",
        "output_format": "png",
        "output_number": 1,
    }
    values.update(overrides)
    return ProviderJob(**values)


async def run(adapter: RunwayAdapter, job: ProviderJob) -> ProviderResult:
    prediction_id = await adapter.submit(job)
    return await adapter.wait(job, prediction_id)


async def fails_with(adapter: RunwayAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run(adapter, job)
    return caught.value


async def test_image_to_video_request_is_native_and_outputs_are_cdn_urls(rig: Rig) -> None:
    moderation = {"publicFigureThreshold": "low"}
    job = video_job(specific={"generation_seed": 42}, params={"contentModeration": moderation})
    result = await run(rig.adapter(), job)

    [call] = rig.fake.submissions()
    assert call.path == "/v1/image_to_video"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["x-runway-version"] == "2024-11-06"
    body = dict(call.body)
    prompt_image = body.pop("promptImage")
    assert body == {
        "model": "gen4_turbo",
        "promptText": "the fox starts running",
        "ratio": "1280:720",
        "seed": 42,
        "duration": 5,
        "contentModeration": {"publicFigureThreshold": "low"},
    }
    # The bytes the worker fetched go inline, so Runway sees exactly what was checked.
    assert prompt_image.startswith("data:image/png;base64,")
    assert base64.b64decode(prompt_image.split(",", 1)[1]) == png_bytes(color=(1, 2, 3))

    [output] = result.outputs
    assert (output.ext, output.content_type, output.data) == ("mp4", "video/mp4", None)
    assert output.url is not None and httpx.URL(output.url).host == CDN_HOST
    downloaded = await rig.client.get(output.url)
    assert downloaded.status_code == 200 and downloaded.content[4:8] == b"ftyp"


async def test_a_last_frame_makes_prompt_image_a_positioned_list(rig: Rig) -> None:
    job = video_job(native_model_id="veo3.1", ratio="9:16", resolution="1080p", duration=8,
                    generate_audio=True, last_frame=image((9, 9, 9), "https://example.com/z.png"),
                    specific={"generation_negative_prompt": "blur"})
    await run(rig.adapter(), job)
    body = rig.fake.submissions()[0].body
    assert body["ratio"] == "1080:1920"  # Veo at 1080p
    assert body["audio"] is True and body["duration"] == 8
    assert body["negativePrompt"] == "blur"
    first, last = body["promptImage"]
    assert first["position"] == "first" and last["position"] == "last"
    assert base64.b64decode(last["uri"].split(",", 1)[1]) == png_bytes(color=(9, 9, 9))


async def test_without_an_input_image_video_goes_to_text_to_video(rig: Rig) -> None:
    job = video_job(native_model_id="veo3", inputs=[], duration=8, specific={"generation_seed": 4},
                    field_names={"generation_seed": ""})  # Veo takes no seed: the catalogue says so
    await run(rig.adapter(), job)
    call = rig.fake.submissions()[0]
    assert call.path == "/v1/text_to_video"
    assert call.body == {"model": "veo3", "promptText": "the fox starts running", "ratio": "1280:720",
                         "duration": 8}


async def test_a_large_input_goes_by_url_not_data_uri(rig: Rig) -> None:
    big = InputImage("https://example.com/big.png", b"\x89PNG" + b"\0" * (4 * 1024 * 1024), "image/png")
    await run(rig.adapter(), video_job(inputs=[big]))
    assert rig.fake.submissions()[0].body["promptImage"] == "https://example.com/big.png"


async def test_text_to_image_makes_one_task_per_output_with_distinct_seeds(rig: Rig) -> None:
    job = image_job(output_number=3, specific={"generation_seed": 7},
                    inputs=[image(), image((4, 5, 6), "https://example.com/b.png")])
    adapter = rig.adapter()
    prediction_id = await adapter.submit(job)
    result = await adapter.wait(job, prediction_id)

    calls = rig.fake.submissions()
    assert len(prediction_id.split(",")) == 3
    assert [c.path for c in calls] == ["/v1/text_to_image"] * 3
    assert [c.body["seed"] for c in calls] == [7, 8, 9]
    first = calls[0].body
    assert first["model"] == "gen4_image" and first["ratio"] == "1920:1080"
    assert "duration" not in first and "promptImage" not in first
    assert [ref["uri"][:22] for ref in first["referenceImages"]] == ["data:image/png;base64,"] * 2
    assert [(o.ext, o.content_type) for o in result.outputs] == [("png", "image/png")] * 3


async def test_catalogue_overrides_names_values_and_params(rig: Rig) -> None:
    job = image_job(
        native_model_id="gemini_image3_pro",
        ratio="21:9",
        output_number=4,
        field_names={"generation_output_number": "outputCount", "generation_output_format": "outputFormat"},
        value_maps={"generation_ratio": {"21:9": "1536:672"}, "generation_output_format": {"jpg": "jpeg"}},
        output_format="jpg",
        params={"contentModeration": {"publicFigureThreshold": "auto"}},
    )
    result = await run(rig.adapter(), job)
    [call] = rig.fake.submissions()  # one task makes all four on an outputCount model
    assert call.body["ratio"] == "1536:672"
    assert call.body["outputCount"] == 4 and call.body["outputFormat"] == "jpeg"
    assert call.body["contentModeration"] == {"publicFigureThreshold": "auto"}
    assert len(result.outputs) == 4


def test_unified_ratios_become_each_family_s_pixels() -> None:
    assert pixel_ratio(video_job(ratio="4:3")) == "1104:832"
    assert pixel_ratio(video_job(ratio="21:9")) == "1584:672"
    assert pixel_ratio(video_job(native_model_id="gen3a_turbo", ratio="9:16")) == "768:1280"
    assert pixel_ratio(video_job(native_model_id="veo3.1", ratio="16:9", resolution="720p")) == "1280:720"
    assert pixel_ratio(image_job(ratio="3:4")) == "1080:1440"
    assert pixel_ratio(image_job(ratio="1:1", resolution="720p")) == "720:720"
    assert pixel_ratio(image_job(ratio="1360:768")) == "1360:768"  # already pixels


async def test_queued_throttled_running_then_succeeded(rig: Rig) -> None:
    rig.fake.queued_polls, rig.fake.throttled_polls, rig.fake.running_polls = 2, 1, 3
    result = await run(rig.adapter(), video_job())
    assert len(rig.fake.polls) == 7
    assert result.outputs[0].url


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        ("SAFETY.INPUT.TEXT", "bse_content_policy_violation", False),
        ("SAFETY.OUTPUT.VIDEO", "bse_content_policy_violation", False),
        ("INPUT_PREPROCESSING.SAFETY.TEXT", "bse_content_policy_violation", False),
        ("ASSET.INVALID", "bse_invalid_input", False),
        ("INPUT_PREPROCESSING.IMAGE_TOO_SMALL", "bse_invalid_input", False),
        ("INPUT_PREPROCESSING.INTERNAL", "bse_provider_error", True),
        ("INTERNAL.BAD_OUTPUT.CODE01", "bse_provider_error", True),
        ("INTERNAL", "bse_provider_error", True),
    ],
)
async def test_failure_codes_map_to_contract_errors(rig: Rig, code: str, error: str, retryable: bool) -> None:
    rig.fake.failure_code = code
    failure = await fails_with(rig.adapter(), video_job())
    assert (failure.error, failure.retryable) == (error, retryable)
    assert code in failure.message


def test_failure_without_a_code_is_a_retryable_provider_error() -> None:
    err = failure_error("", "")
    assert (err.error, err.retryable) == ("bse_provider_error", True)


async def test_a_task_canceled_upstream_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.cancel_upstream = True
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable) == ("bse_provider_error", True)
    assert "canceled upstream" in error.message


async def test_5xx_on_submit(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_error", True, 500)


async def test_429_on_submit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit_submit, rig.fake.retry_after = 1, 7
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable, error.retry_after) == ("bse_provider_unavailable", True, 7.0)


async def test_out_of_credits_is_told_apart_from_a_bad_parameter(rig: Rig) -> None:
    rig.fake.out_of_credits = True
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_credits_exhausted", False, 400)


async def test_a_rejected_body_is_invalid_input(rig: Rig) -> None:
    error = await fails_with(rig.adapter(), video_job(field_names={"generation_prompt": "prompt"}, inputs=[]))
    assert (error.error, error.retryable) == ("bse_invalid_input", False)
    assert "promptText" in error.message


async def test_wrong_key_is_provider_unavailable_and_never_echoes_the_key(rig: Rig) -> None:
    adapter = RunwayAdapter(make_settings(runway_api_key="key_wrong_secret"), rig.client)
    error = await fails_with(adapter, video_job())
    assert (error.error, error.http_status) == ("bse_provider_unavailable", 401)
    assert "key_wrong_secret" not in error.message


async def test_a_hung_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submit = True
    async with asyncio.timeout(5):
        error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable) == ("bse_provider_timeout", True)


async def test_a_hung_poll_is_retried_until_the_callers_deadline(rig: Rig) -> None:
    adapter = rig.adapter()
    job = video_job()
    prediction_id = await adapter.submit(job)
    rig.fake.hang_poll = True
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.2):
            await adapter.wait(job, prediction_id)
    assert len(rig.fake.polls) >= 2  # each hung poll timed out and was asked again


async def test_garbled_and_5xx_polls_are_waited_out(rig: Rig) -> None:
    rig.fake.malformed_polls, rig.fake.poll_errors = 2, 1
    result = await run(rig.adapter(), video_job())
    assert result.outputs[0].url
    assert len(rig.fake.polls) == 4


async def test_outputs_expire_so_the_worker_must_fetch_them_at_once(rig: Rig) -> None:
    rig.fake.files.ttl_seconds = 0.05
    result = await run(rig.adapter(), video_job())
    url = result.outputs[0].url
    assert url is not None
    assert (await rig.client.get(url)).status_code == 200
    await asyncio.sleep(0.1)
    assert (await rig.client.get(url)).status_code == 403


async def test_cancel_deletes_every_task_and_wait_then_fails(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    adapter = rig.adapter()
    job = image_job(output_number=2)
    prediction_id = await adapter.submit(job)
    assert await adapter.cancel(prediction_id) is True
    assert rig.fake.cancels == prediction_id.split(",")
    assert {rig.fake.tasks[t].status for t in rig.fake.cancels} == {"CANCELLED"}
    delete = next(c for c in rig.fake.calls if c.method == "DELETE")
    assert delete.headers["authorization"] == f"Bearer {KEY}"
    error = await fails_with_wait(adapter, job, prediction_id)
    assert (error.error, error.retryable) == ("bse_provider_error", True)
    assert "canceled or deleted upstream" in error.message


async def fails_with_wait(adapter: RunwayAdapter, job: ProviderJob, prediction_id: str) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.wait(job, prediction_id)
    return caught.value


async def test_cancel_of_an_unknown_task_reports_false(rig: Rig) -> None:
    assert await rig.adapter().cancel("no-such-task") is False
    assert rig.fake.cancels == ["no-such-task"]


async def test_a_failed_second_submit_cancels_the_first_task(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    rig.fake.fail_nth_submit = 2
    error = await fails_with(rig.adapter(), image_job(output_number=2))
    assert error.http_status == 500
    [first] = rig.fake.tasks
    assert rig.fake.cancels == [first]  # not left running (and billed) for a failed attempt


async def test_one_failed_task_cancels_the_rest(rig: Rig) -> None:
    adapter = rig.adapter()
    job = image_job(output_number=2)
    prediction_id = await adapter.submit(job)
    rig.fake.failure_code = "SAFETY.INPUT.TEXT"
    error = await fails_with_wait(adapter, job, prediction_id)
    assert error.error == "bse_content_policy_violation"
    assert rig.fake.cancels == prediction_id.split(",")[1:]


def test_configured_needs_the_key() -> None:
    client = httpx.AsyncClient(transport=FakeNetwork())
    assert RunwayAdapter(make_settings(), client).configured() is True
    assert RunwayAdapter(make_settings(runway_api_key=None), client).configured() is False
    assert RunwayAdapter(make_settings(runway_api_key=""), client).configured() is False


async def test_wait_resumes_from_the_prediction_id_alone(rig: Rig) -> None:
    rig.fake.running_polls = 2
    job = image_job(output_number=2)
    prediction_id = await rig.adapter().submit(job)
    result = await rig.adapter().wait(job, prediction_id)  # a new process: a fresh adapter
    assert len(result.outputs) == 2
    assert set(rig.fake.polls) == set(prediction_id.split(","))


async def test_registry_builds_the_adapter(rig: Rig) -> None:
    providers = build_providers(rig.settings, rig.client)
    assert isinstance(providers["runway"], RunwayAdapter)
    assert providers["runway"].configured()
