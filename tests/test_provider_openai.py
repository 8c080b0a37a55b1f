"""The OpenAI adapter (Images API and Videos API) against a fake speaking OpenAI's protocol."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from genplane.providers.base import InputImage, ProviderError, ProviderJob, ProviderResult
from genplane.providers.openai import IMAGE_PREFIX, OpenAIAdapter, nearest_size
from genplane.settings import Settings
from tests.fakes.media import image_bytes, png_bytes
from tests.fakes.network import FakeNetwork
from tests.fakes.openai import FakeOpenAI, video_bytes


@dataclass
class Rig:
    fake: FakeOpenAI
    network: FakeNetwork
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> OpenAIAdapter:
        return OpenAIAdapter(self.settings, self.client)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": "sk-test-key",
        "openai_base_url": "https://api.openai.test",
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.5,
        "image_attempt_deadline_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    video_bytes()  # render the fake's MP4 once, outside any request's timeout
    fake = FakeOpenAI()
    network = FakeNetwork()
    fake.mount(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, make_settings())


def image_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "openai/gpt-image-1",
        "native_model_id": "gpt-image-1",
        "model_type": "image",
        "prompt": "a lighthouse at dusk",
        "ratio": "16:9",
        "output_format": "jpg",
        "output_number": 1,
    }
    values.update(overrides)
    return ProviderJob(**values)


def video_job(**overrides: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "model_identifier": "openai/sora-2",
        "native_model_id": "sora-2",
        "model_type": "video",
        "output_format": "mp4",
        "duration": 8,
        "resolution": "720p",
    }
    values.update(overrides)
    return image_job(**values)


async def run(adapter: OpenAIAdapter, job: ProviderJob) -> ProviderResult:
    async with asyncio.timeout(5):  # a regression that polls forever fails instead of hanging
        prediction_id = await adapter.submit(job)
        return await adapter.wait(job, prediction_id)


async def fails_with(adapter: OpenAIAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await run(adapter, job)
    return caught.value


# -- images -------------------------------------------------------------------------


async def test_image_generation_maps_the_job_and_decodes_base64(rig: Rig) -> None:
    job = image_job(output_number=2, params={"quality": "medium", "moderation": "low"})
    adapter = rig.adapter()
    prediction_id = await adapter.submit(job)
    result = await adapter.wait(job, prediction_id)

    [sent] = rig.fake.requests
    assert sent["path"] == "/v1/images/generations"
    assert sent["headers"]["authorization"] == "Bearer sk-test-key"
    assert sent["json"] == {
        "model": "gpt-image-1",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "1536x1024",
        "output_format": "jpeg",
        "quality": "medium",
        "moderation": "low",
    }
    assert prediction_id.startswith(IMAGE_PREFIX)
    assert len(result.outputs) == 2
    for output in result.outputs:
        assert (output.ext, output.content_type) == ("jpg", "image/jpeg")
        assert output.url is None and output.data is not None and output.data[:2] == b"\xff\xd8"


async def test_input_images_go_to_edits_as_multipart_image_array(rig: Rig) -> None:
    first, second = png_bytes(color=(9, 9, 9)), image_bytes("webp")
    job = image_job(
        ratio="9:16",
        output_format="png",
        inputs=[
            InputImage("https://example.com/a.png", first, "image/png"),
            InputImage("https://example.com/b.webp", second, "image/webp"),
        ],
    )
    result = await run(rig.adapter(), job)

    [sent] = rig.fake.requests
    assert sent["path"] == "/v1/images/edits"
    assert sent["headers"]["content-type"].startswith("multipart/form-data")
    assert sent["form"] == {
        "model": "gpt-image-1",
        "prompt": "a lighthouse at dusk",
        "n": "1",
        "size": "1024x1536",
        "output_format": "png",
    }
    assert [(f["name"], f["content_type"], f["data"]) for f in sent["files"]] == [
        ("image[]", "image/png", first),
        ("image[]", "image/webp", second),
    ]
    assert result.outputs[0].ext == "png"


async def test_a_single_input_image_is_one_image_part(rig: Rig) -> None:
    job = image_job(inputs=[InputImage("https://example.com/a.png", png_bytes(), "image/png")])
    await run(rig.adapter(), job)
    assert [f["name"] for f in rig.fake.requests[0]["files"]] == ["image"]


async def test_dalle3_makes_one_image_per_call_and_asks_for_base64(rig: Rig) -> None:
    job = image_job(native_model_id="dall-e-3", output_number=3, output_format="png")
    result = await run(rig.adapter(), job)

    assert len(rig.fake.requests) == 3
    for sent in rig.fake.requests:
        assert sent["json"] == {
            "model": "dall-e-3",
            "prompt": "a lighthouse at dusk",
            "n": 1,
            "size": "1792x1024",
            "response_format": "b64_json",
        }
    assert [o.ext for o in result.outputs] == ["png"] * 3
    assert all(o.data and o.data.startswith(b"\x89PNG") for o in result.outputs)


async def test_catalogue_overrides_values_and_params(rig: Rig) -> None:
    job = image_job(
        value_maps={"generation_ratio": {"16:9": "auto"}, "generation_output_format": {"jpg": "webp"}},
        params={"background": "transparent"},
    )
    result = await run(rig.adapter(), job)
    sent = rig.fake.requests[0]["json"]
    assert (sent["size"], sent["output_format"], sent["background"]) == ("auto", "webp", "transparent")
    # The extension follows the bytes actually received.
    assert (result.outputs[0].ext, result.outputs[0].content_type) == ("webp", "image/webp")


async def test_dalle_urls_are_passed_on_when_the_catalogue_asks_for_them(rig: Rig) -> None:
    rig.fake.files.ttl_seconds = 0.1
    job = image_job(native_model_id="dall-e-3", output_format="png", params={"response_format": "url"})
    result = await run(rig.adapter(), job)
    url = result.outputs[0].url
    assert url is not None and httpx.URL(url).host == "images.openai.test"
    assert (await rig.client.get(url)).status_code == 200
    await asyncio.sleep(0.15)
    assert (await rig.client.get(url)).status_code == 403  # expired, as the real URLs do after an hour


def test_nearest_size() -> None:
    sizes = ((1024, 1024), (1536, 1024), (1024, 1536))
    assert nearest_size("1:1", sizes) == "1024x1024"
    assert nearest_size("4:3", sizes) == "1536x1024"
    assert nearest_size("21:9", sizes) == "1536x1024"
    assert nearest_size("2:3", sizes) == "1024x1536"
    assert nearest_size("9:16", ((1280, 720), (720, 1280))) == "720x1280"


@pytest.mark.parametrize("model", ["gpt-image-1", "dall-e-3"])
async def test_refused_prompts_are_content_policy_violations(rig: Rig, model: str) -> None:
    rig.fake.moderate_submit = True
    error = await fails_with(rig.adapter(), image_job(native_model_id=model))
    assert (error.error, error.retryable, error.http_status) == ("bse_content_policy_violation", False, 400)


async def test_image_5xx(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    error = await fails_with(rig.adapter(), image_job())
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_error", True, 500)


async def test_rate_limit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit_submit, rig.fake.retry_after = 1, 3
    error = await fails_with(rig.adapter(), image_job())
    assert (error.error, error.retryable, error.retry_after) == ("bse_provider_unavailable", True, 3.0)


@pytest.mark.parametrize("job", [image_job(), video_job()], ids=["image", "video"])
async def test_an_empty_account_is_credits_exhausted_not_a_rate_limit(rig: Rig, job: ProviderJob) -> None:
    rig.fake.insufficient_quota = True
    error = await fails_with(rig.adapter(), job)
    assert (error.error, error.retryable, error.http_status) == ("bse_provider_credits_exhausted", False, 429)


async def test_a_wrong_key_is_provider_unavailable(rig: Rig) -> None:
    adapter = OpenAIAdapter(make_settings(openai_api_key="sk-wrong-secret"), rig.client)
    error = await fails_with(adapter, image_job())
    assert (error.error, error.http_status) == ("bse_provider_unavailable", 401)
    assert "sk-wrong-secret" not in error.message


async def test_a_hung_image_call_times_out(rig: Rig) -> None:
    rig.fake.hang_submit = True
    async with asyncio.timeout(5):
        error = await fails_with(rig.adapter(), image_job())
    assert (error.error, error.retryable) == ("bse_provider_timeout", True)


async def test_malformed_image_answer(rig: Rig) -> None:
    rig.fake.malformed_submit = True
    error = await fails_with(rig.adapter(), image_job())
    assert (error.error, error.retryable) == ("bse_provider_error", True)


async def test_image_results_do_not_survive_a_restart(rig: Rig) -> None:
    job = image_job()
    prediction_id = await rig.adapter().submit(job)
    with pytest.raises(ProviderError) as caught:
        await rig.adapter().wait(job, prediction_id)  # another process: the held result is gone
    assert (caught.value.error, caught.value.retryable) == ("bse_provider_error", True)


async def test_cancelling_an_image_sends_nothing(rig: Rig) -> None:
    adapter = rig.adapter()
    job = image_job()
    prediction_id = await adapter.submit(job)
    sent = len(rig.network.seen)
    assert await adapter.cancel(prediction_id) is False
    assert len(rig.network.seen) == sent
    with pytest.raises(ProviderError):
        await adapter.wait(job, prediction_id)  # the held result was dropped


# -- video --------------------------------------------------------------------------

SORA_FIELDS = {"model": "sora-2", "prompt": "a lighthouse at dusk", "size": "1280x720", "seconds": "8"}


async def test_video_queued_running_completed_and_downloaded(rig: Rig) -> None:
    rig.fake.pending_polls, rig.fake.running_polls = 2, 2
    job = video_job()
    adapter = rig.adapter()
    video_id = await adapter.submit(job)
    result = await adapter.wait(job, video_id)

    create = rig.fake.requests[0]
    assert (create["method"], create["path"]) == ("POST", "/v1/videos")
    assert create["headers"]["authorization"] == "Bearer sk-test-key"
    assert create["json"] == SORA_FIELDS
    assert video_id.startswith("video_")
    assert rig.fake.polls == 5
    download = rig.fake.requests[-1]
    assert download["path"] == f"/v1/videos/{video_id}/content"
    assert download["headers"]["authorization"] == "Bearer sk-test-key"
    assert download["headers"]["accept"] == "application/binary"
    [output] = result.outputs
    assert (output.ext, output.content_type, output.url) == ("mp4", "video/mp4", None)
    assert output.data == video_bytes()
    assert result.predict_time == 42.0


async def test_pro_sizes_durations_and_catalogue_params(rig: Rig) -> None:
    job = video_job(native_model_id="sora-2-pro", ratio="9:16", resolution="1080p", duration=12,
                    params={"seconds": "12"})
    await run(rig.adapter(), job)
    assert rig.fake.requests[0]["json"] == {
        "model": "sora-2-pro", "prompt": "a lighthouse at dusk", "size": "1024x1792", "seconds": "12"
    }


async def test_an_input_image_is_fitted_to_the_size_and_uploaded_as_input_reference(rig: Rig) -> None:
    picture = image_bytes("jpg", 300, 200)
    job = video_job(inputs=[InputImage("https://example.com/a.jpg", picture, "image/jpeg")])
    result = await run(rig.adapter(), job)

    create = rig.fake.requests[0]
    assert create["form"] == SORA_FIELDS
    [reference] = create["files"]
    assert reference["name"] == "input_reference" and reference["content_type"] == "image/png"
    with Image.open(io.BytesIO(reference["data"])) as picture:
        assert picture.size == (1280, 720)  # the fake, like the API, refuses any other size
    assert result.outputs[0].data == video_bytes()


@pytest.mark.parametrize(
    ("outcome", "code", "retryable"),
    [("moderated", "bse_content_policy_violation", False), ("failed", "bse_provider_error", True)],
)
async def test_failed_videos(rig: Rig, outcome: str, code: str, retryable: bool) -> None:
    rig.fake.video_outcome = outcome
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable) == (code, retryable)


async def test_a_video_prompt_refused_at_creation(rig: Rig) -> None:
    rig.fake.moderate_submit = True
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.retryable) == ("bse_content_policy_violation", False)


async def test_video_creation_failures(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    assert (await fails_with(rig.adapter(), video_job())).error == "bse_provider_error"
    rig.fake.rate_limit_submit = 1
    assert (await fails_with(rig.adapter(), video_job())).error == "bse_provider_unavailable"
    rig.fake.hang_submit = True
    async with asyncio.timeout(5):
        assert (await fails_with(rig.adapter(), video_job())).error == "bse_provider_timeout"


async def test_garbled_polls_and_a_failed_download_are_tried_again(rig: Rig) -> None:
    rig.fake.malformed_polls, rig.fake.content_errors = 2, 1
    result = await run(rig.adapter(), video_job())
    assert result.outputs[0].data == video_bytes()
    assert rig.fake.polls == 3


async def test_a_hung_poll_is_retried_until_the_callers_deadline(rig: Rig) -> None:
    adapter = rig.adapter()
    job = video_job()
    video_id = await adapter.submit(job)
    rig.fake.hang_poll = True
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await adapter.wait(job, video_id)
    assert rig.fake.polls >= 2


async def test_expired_video_content_is_a_provider_error(rig: Rig) -> None:
    rig.fake.content_ttl = -1
    error = await fails_with(rig.adapter(), video_job())
    assert (error.error, error.http_status) == ("bse_provider_error", 404)


async def test_cancel_deletes_finished_videos_and_cannot_stop_running_ones(rig: Rig) -> None:
    rig.fake.pending_polls = 100
    adapter = rig.adapter()
    job = video_job()
    running = await adapter.submit(job)
    assert await adapter.cancel(running) is False  # the API has no cancel; DELETE refuses a running job
    assert rig.fake.deletes == [running]
    assert running in rig.fake.videos

    rig.fake.pending_polls = 0
    finished = await adapter.submit(job)
    await adapter.wait(job, finished)
    assert await adapter.cancel(finished) is True
    assert rig.fake.deletes == [running, finished]
    assert finished not in rig.fake.videos


async def test_wait_resumes_from_the_video_id_alone(rig: Rig) -> None:
    rig.fake.pending_polls = 1
    job = video_job()
    video_id = await rig.adapter().submit(job)
    result = await rig.adapter().wait(job, video_id)  # a fresh adapter, as after a restart
    assert result.outputs[0].data == video_bytes()


def test_configured_needs_the_key() -> None:
    client = httpx.AsyncClient(transport=FakeNetwork())
    assert OpenAIAdapter(make_settings(), client).configured() is True
    assert OpenAIAdapter(make_settings(openai_api_key=None), client).configured() is False
