"""The Replicate adapter against a fake that speaks Replicate's prediction API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob
from genplane.providers.replicate import ReplicateAdapter
from genplane.settings import Settings
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork
from tests.fakes.replicate import API_HOST, CDN_HOST, FakeReplicate

TOKEN = "r8_fake_token"
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


def settings(token: str | None = TOKEN, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "replicate_api_token": token,
        "replicate_base_url": f"https://{API_HOST}",
        "provider_poll_interval_seconds": 0.01,
        "provider_request_timeout_seconds": 0.3,
    }
    values.update(over)
    return Settings(**values)


@dataclass
class Rig:
    fake: FakeReplicate
    network: FakeNetwork
    client: httpx.AsyncClient
    adapter: ReplicateAdapter

    def fresh_adapter(self, token: str = TOKEN) -> ReplicateAdapter:
        return ReplicateAdapter(settings(token), self.client)

    def create_headers(self) -> httpx.Headers:
        posts = [r for r in self.network.requests_to(API_HOST) if r.method == "POST"]
        return posts[0].headers


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeReplicate(token=TOKEN)
    network = FakeNetwork()
    fake.install(network)
    async with httpx.AsyncClient(transport=network) as client:
        yield Rig(fake, network, client, ReplicateAdapter(settings(), client))


def image_job(**over: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_1",
        "model_identifier": "bfl/flux-schnell",
        "native_model_id": "black-forest-labs/flux-schnell",
        "model_type": "image",
        "prompt": "a red fox in snow",
        "ratio": "16:9",
        "output_format": "png",
        "output_number": 2,
        "specific": {"generation_seed": 7, "generation_negative_prompt": "blurry"},
    }
    values.update(over)
    return ProviderJob(**values)


def video_job(**over: Any) -> ProviderJob:
    values: dict[str, Any] = {
        "generation_id": "gen_v",
        "model_identifier": "bytedance/seedance-1-pro",
        "native_model_id": "bytedance/seedance-1-pro",
        "model_type": "video",
        "prompt": "a paper boat on a river",
        "ratio": "9:16",
        "output_format": "mp4",
        "output_number": 1,
        "duration": 5,
        "resolution": "1080p",
        "generate_audio": True,
        "inputs": [InputImage("https://img.example/first.png", png_bytes(), "image/png")],
        "last_frame": InputImage("https://img.example/last.png", png_bytes(), "image/png"),
    }
    values.update(over)
    return ProviderJob(**values)


async def expect_error(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await awaitable
    return caught.value


# -- success and request mapping -------------------------------------------------------


async def test_official_model_request_and_outputs(rig: Rig) -> None:
    job = image_job()
    prediction_id = await rig.adapter.submit(job)

    assert len(rig.fake.created) == 1
    created = rig.fake.created[0]
    assert created["path"] == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert rig.create_headers()["authorization"] == f"Bearer {TOKEN}"
    assert "prefer" not in rig.create_headers()
    assert created["body"] == {
        "input": {
            "prompt": "a red fox in snow",
            "aspect_ratio": "16:9",
            "output_format": "png",
            "num_outputs": 2,
            "seed": 7,
            "negative_prompt": "blurry",
        }
    }
    assert prediction_id in rig.fake.predictions

    result = await rig.adapter.wait(job, prediction_id)
    assert len(result.outputs) == 2
    assert result.predict_time == 1.25
    for output in result.outputs:
        assert output.ext == "png" and output.content_type == "image/png" and output.data is None
        assert output.url is not None and httpx.URL(output.url).host == CDN_HOST
        downloaded = await rig.client.get(output.url)
        assert downloaded.status_code == 200 and downloaded.content.startswith(b"\x89PNG")


async def test_catalogue_overrides_version_pinned_model(rig: Rig) -> None:
    job = image_job(
        native_model_id=f"someone/sdxl-variant:{VERSION}",
        output_format="jpg",
        output_number=1,
        field_names={"generation_ratio": "aspect", "generation_negative_prompt": ""},
        value_maps={
            "generation_ratio": {"16:9": "landscape"},
            "generation_output_format": {"jpg": "jpeg"},
        },
        params={"go_fast": False, "megapixels": "1"},
    )
    await rig.adapter.submit(job)
    created = rig.fake.created[0]
    assert created["path"] == "/v1/predictions"
    assert created["body"] == {
        "version": VERSION,
        "input": {
            "prompt": "a red fox in snow",
            "aspect": "landscape",
            "output_format": "jpeg",
            "seed": 7,
            "go_fast": False,
            "megapixels": "1",
        },
    }


async def test_bare_version_id_runs_through_predictions(rig: Rig) -> None:
    await rig.adapter.submit(image_job(native_model_id=VERSION, output_number=1))
    assert rig.fake.created[0]["path"] == "/v1/predictions"
    assert rig.fake.created[0]["body"]["version"] == VERSION


async def test_one_prediction_per_output_when_model_makes_one(rig: Rig) -> None:
    rig.fake.single_output = True
    job = image_job(
        native_model_id="black-forest-labs/flux-1.1-pro",
        output_number=3,
        field_names={"generation_output_number": ""},
    )
    prediction_id = await rig.adapter.submit(job)
    assert len(prediction_id.split(",")) == 3
    inputs = [c["body"]["input"] for c in rig.fake.created]
    assert [i["seed"] for i in inputs] == [7, 8, 9]  # distinct images, still reproducible
    assert all("num_outputs" not in i for i in inputs)

    result = await rig.adapter.wait(job, prediction_id)
    assert len(result.outputs) == 3
    assert len({o.url for o in result.outputs}) == 3


async def test_image_inputs_go_as_a_list_of_urls(rig: Rig) -> None:
    job = image_job(
        native_model_id="google/nano-banana",
        output_number=1,
        inputs=[
            InputImage("https://img.example/a.png", png_bytes(), "image/png"),
            InputImage("https://img.example/b.png", png_bytes(), "image/png"),
        ],
    )
    await rig.adapter.submit(job)
    assert rig.fake.created[0]["body"]["input"]["image_input"] == [
        "https://img.example/a.png",
        "https://img.example/b.png",
    ]
    single = image_job(
        native_model_id="black-forest-labs/flux-kontext-pro",
        output_number=1,
        inputs=[InputImage("https://img.example/a.png", png_bytes(), "image/png")],
        field_names={"generation_input_file": "input_image"},
    )
    await rig.adapter.submit(single)
    assert rig.fake.created[1]["body"]["input"]["input_image"] == "https://img.example/a.png"


async def test_video_request_and_output(rig: Rig) -> None:
    rig.fake.video = True
    rig.fake.single_output = True
    job = video_job()
    prediction_id = await rig.adapter.submit(job)
    assert rig.fake.created[0]["body"]["input"] == {
        "prompt": "a paper boat on a river",
        "aspect_ratio": "9:16",
        "duration": 5,
        "resolution": "1080p",
        "generate_audio": True,
        "image": "https://img.example/first.png",
        "last_frame_image": "https://img.example/last.png",
    }
    result = await rig.adapter.wait(job, prediction_id)
    assert [(o.ext, o.content_type) for o in result.outputs] == [("mp4", "video/mp4")]


async def test_queued_then_running_then_done(rig: Rig) -> None:
    rig.fake.queued_polls = 2
    rig.fake.running_polls = 3
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    result = await rig.adapter.wait(job, prediction_id)
    assert len(result.outputs) == 1
    assert rig.fake.polls == 6  # 2 starting + 3 processing + the one that found it done


async def test_wait_resumes_from_the_id_alone(rig: Rig) -> None:
    rig.fake.queued_polls = 1
    job = image_job()
    prediction_id = await rig.adapter.submit(job)
    # A restart: a new client and adapter, nothing shared but the id.
    async with httpx.AsyncClient(transport=rig.network) as client:
        result = await ReplicateAdapter(settings(), client).wait(job, prediction_id)
    assert len(result.outputs) == 2


async def test_outputs_expire_on_the_file_host(rig: Rig) -> None:
    rig.fake.files.ttl_seconds = 0.2
    job = image_job(output_number=1)
    result = await rig.adapter.wait(job, await rig.adapter.submit(job))
    url = result.outputs[0].url
    assert url is not None
    assert (await rig.client.get(url)).status_code == 200
    await asyncio.sleep(0.3)
    assert (await rig.client.get(url)).status_code == 403


# -- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (500, "bse_provider_error", True),
        (503, "bse_provider_unavailable", True),
        (402, "bse_provider_credits_exhausted", False),
    ],
)
async def test_submit_http_errors(rig: Rig, status: int, error: str, retryable: bool) -> None:
    rig.fake.submit_error_status = status
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable, err.http_status) == (error, retryable, status)


async def test_rate_limit_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limited_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.http_status, err.retry_after) == ("bse_provider_unavailable", 429, 2.0)
    assert await rig.adapter.submit(image_job())  # the limit passed


async def test_wrong_token_is_unavailable_and_never_echoed(rig: Rig) -> None:
    err = await expect_error(rig.fresh_adapter("r8_wrong_secret").submit(image_job()))
    assert (err.error, err.http_status) == ("bse_provider_unavailable", 401)
    assert "r8_wrong_secret" not in err.message


async def test_hang_on_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable) == ("bse_provider_timeout", True)


async def test_hung_polls_are_waited_out(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.hang_polls = 2
    result = await rig.adapter.wait(job, prediction_id)
    assert len(result.outputs) == 1


async def test_poll_that_never_answers_keeps_waiting_until_the_deadline(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.hang_polls = 10**6
    # By design the adapter keeps polling; the worker's per-attempt deadline ends it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await rig.adapter.wait(job, prediction_id)


async def test_malformed_json(rig: Rig) -> None:
    rig.fake.malformed_submits = 1
    err = await expect_error(rig.adapter.submit(image_job()))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "malformed" in err.message

    job = image_job(output_number=1)
    prediction_id = await rig.adapter.submit(job)
    rig.fake.malformed_polls = 2  # a garbled status answer is not the job's outcome
    assert len((await rig.adapter.wait(job, prediction_id)).outputs) == 1


async def test_nsfw_refusal_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.moderate = True
    job = image_job()
    err = await expect_error(rig.adapter.wait(job, await rig.adapter.submit(job)))
    assert (err.error, err.retryable, err.stops_chain) == ("bse_content_policy_violation", False, True)


async def test_model_failure_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.fail_error = "CUDA out of memory (E1001)"
    job = image_job()
    err = await expect_error(rig.adapter.wait(job, await rig.adapter.submit(job)))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "CUDA out of memory" in err.message


async def test_cancel_sends_the_cancel_call(rig: Rig) -> None:
    rig.fake.queued_polls = 10**6
    job = image_job()
    prediction_id = await rig.adapter.submit(job)
    assert await rig.adapter.cancel(prediction_id) is True
    assert rig.fake.canceled == [prediction_id]
    posted = [r for r in rig.network.requests_to(API_HOST) if r.url.endswith("/cancel")]
    assert posted[0].headers["authorization"] == f"Bearer {TOKEN}"
    err = await expect_error(rig.adapter.wait(job, prediction_id))
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "canceled upstream" in err.message


async def test_cancel_of_a_batch_cancels_every_prediction(rig: Rig) -> None:
    rig.fake.queued_polls = 10**6
    job = image_job(output_number=2, field_names={"generation_output_number": ""})
    prediction_id = await rig.adapter.submit(job)
    assert await rig.adapter.cancel(prediction_id) is True
    assert rig.fake.canceled == prediction_id.split(",")


async def test_unknown_prediction_cannot_be_canceled(rig: Rig) -> None:
    assert await rig.adapter.cancel("doesnotexist") is False


async def test_configured_only_with_a_token() -> None:
    async with httpx.AsyncClient() as client:
        assert ReplicateAdapter(settings(), client).configured() is True
        assert ReplicateAdapter(settings(token=None), client).configured() is False
        assert ReplicateAdapter(settings(token="  "), client).configured() is False


async def test_malformed_model_id_is_a_catalogue_error(rig: Rig) -> None:
    err = await expect_error(rig.adapter.submit(image_job(native_model_id="flux-schnell")))
    assert err.error == "bse_model_not_configured"
    assert rig.fake.created == []


async def test_request_body_is_json_with_input_object(rig: Rig) -> None:
    await rig.adapter.submit(image_job(output_number=1))
    posted = next(r for r in rig.network.requests_to(API_HOST) if r.method == "POST")
    assert posted.headers["content-type"] == "application/json"
    assert orjson.loads(posted.body)["input"]["prompt"] == "a red fox in snow"
