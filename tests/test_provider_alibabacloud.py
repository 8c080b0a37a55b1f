"""The Alibaba Cloud Model Studio (DashScope) adapter against a fake DashScope server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from genplane.providers.alibabacloud import AlibabaCloudAdapter
from genplane.providers.base import InputImage, ProviderError, ProviderJob, ProviderResult
from genplane.providers.registry import build_http_client, build_providers
from genplane.settings import Settings
from tests.fakes.alibabacloud import HOST, FakeDashScope
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork

KEY = "sk-test-key"


@dataclass
class Rig:
    fake: FakeDashScope
    client: httpx.AsyncClient
    settings: Settings

    def adapter(self) -> AlibabaCloudAdapter:
        return AlibabaCloudAdapter(self.settings, self.client)


def settings(key: str | None = KEY, timeout: float = 0.3) -> Settings:
    return Settings(
        alibabacloud_api_key=key,
        alibabacloud_base_url=f"https://{HOST}",
        provider_poll_interval_seconds=0.01,
        provider_request_timeout_seconds=timeout,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeDashScope(api_key=KEY)
    network = FakeNetwork()
    fake.install(network)
    s = settings()
    async with build_http_client(s, network) as client:
        yield Rig(fake, client, s)


def image_job(**kw: Any) -> ProviderJob:
    values: dict[str, Any] = dict(
        generation_id="gen_img",
        model_identifier="alibaba/wan-2.5-image",
        native_model_id="wan2.5-t2i-preview",
        model_type="image",
        prompt="a lantern festival",
        ratio="16:9",
        output_format="png",
        output_number=1,
    )
    values.update(kw)
    return ProviderJob(**values)


def video_job(**kw: Any) -> ProviderJob:
    values: dict[str, Any] = dict(
        generation_id="gen_vid",
        model_identifier="alibaba/wan-2.5",
        native_model_id="wan2.5-t2v-preview",
        model_type="video",
        prompt="a paper boat on a river",
        ratio="16:9",
        output_format="mp4",
        output_number=1,
        duration=10,
        resolution="1080p",
    )
    values.update(kw)
    return ProviderJob(**values)


def picture(name: str) -> InputImage:
    url = f"https://images.example.com/{name}.png"
    return InputImage(url=url, data=png_bytes(), content_type="image/png")


async def run(adapter: AlibabaCloudAdapter, job: ProviderJob) -> ProviderResult:
    return await adapter.wait(job, await adapter.submit(job))


async def failure(adapter: AlibabaCloudAdapter, job: ProviderJob) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await run(adapter, job)
    return info.value


# ------------------------------------------------------------------ wan images


async def test_wan_image_task_is_native_and_outputs_are_urls(rig: Rig) -> None:
    rig.fake.queued_polls, rig.fake.running_polls = 1, 1
    job = image_job(
        output_number=2,
        specific={"generation_seed": 9, "generation_negative_prompt": "text, watermark"},
        params={"prompt_extend": False, "watermark": False},
    )
    result = await run(rig.adapter(), job)

    [submit] = rig.fake.submits()
    assert submit.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert submit.headers["authorization"] == f"Bearer {KEY}"
    assert submit.headers["x-dashscope-async"] == "enable"
    assert submit.body == {
        "model": "wan2.5-t2i-preview",
        "input": {"prompt": "a lantern festival", "negative_prompt": "text, watermark"},
        "parameters": {"seed": 9, "size": "1696*960", "n": 2, "prompt_extend": False, "watermark": False},
    }
    polls = rig.fake.polls()
    assert len(polls) == 3 and polls[0].path.startswith("/api/v1/tasks/")
    assert "x-dashscope-async" not in polls[0].headers

    assert [(o.ext, o.content_type, o.data) for o in result.outputs] == [("png", "image/png", None)] * 2
    assert result.predict_time == 8.5
    got = await rig.client.get(result.outputs[0].url or "")
    assert got.status_code == 200 and got.content.startswith(b"\x89PNG")


async def test_catalogue_overrides_for_an_edit_model(rig: Rig) -> None:
    job = image_job(
        native_model_id="wan2.5-i2i-preview",
        ratio="4:3",
        inputs=[picture("a"), picture("b")],
        value_maps={"generation_ratio": {"4:3": "1280*960"}},
        params={"input.function": "description_edit", "parameters.strength": 0.4},
    )
    await run(rig.adapter(), job)
    body = rig.fake.submits()[0].body
    assert rig.fake.submits()[0].path == "/api/v1/services/aigc/image2image/image-synthesis"
    assert body["input"]["images"] == ["https://images.example.com/a.png", "https://images.example.com/b.png"]
    assert body["input"]["function"] == "description_edit"
    assert body["parameters"]["size"] == "1280*960"
    assert body["parameters"]["strength"] == 0.4


async def test_sizes_follow_the_model_family(rig: Rig) -> None:
    await run(rig.adapter(), image_job(native_model_id="wan2.2-t2i-flash"))
    await run(rig.adapter(), image_job(ratio="5:4"))  # no preset: computed, sides in steps of 16
    await run(rig.adapter(), image_job(native_model_id="wan2.2-t2i-plus", ratio="5:4"))
    sizes = [c.body["parameters"]["size"] for c in rig.fake.submits()]
    assert sizes == ["1280*720", "1520*1216", "1152*928"]


async def test_one_refused_image_fails_the_batch(rig: Rig) -> None:
    rig.fake.moderation = "output"
    err = await failure(rig.adapter(), image_job(output_number=2))
    assert err.error == "bse_content_policy_violation" and not err.retryable and err.stops_chain


# ----------------------------------------------------------------- qwen-image


async def test_qwen_image_is_synchronous_one_call_per_image(rig: Rig) -> None:
    job = image_job(
        native_model_id="qwen-image-plus",
        ratio="9:16",
        output_number=2,
        specific={"generation_seed": 3, "generation_negative_prompt": "blurry"},
        params={"prompt_extend": False},
    )
    adapter = rig.adapter()
    prediction_id = await adapter.submit(job)
    submits = rig.fake.submits()
    assert len(submits) == 2
    for call in submits:
        assert call.path == "/api/v1/services/aigc/multimodal-generation/generation"
        assert "x-dashscope-async" not in call.headers
        assert call.body["model"] == "qwen-image-plus"
        [message] = call.body["input"]["messages"]
        assert message == {"role": "user", "content": [{"text": "a lantern festival"}]}
        params = call.body["parameters"]
        assert params["size"] == "928*1664" and params["negative_prompt"] == "blurry"
        assert params["prompt_extend"] is False
    assert sorted(c.body["parameters"]["seed"] for c in submits) == [3, 4]

    result = await adapter.wait(job, prediction_id)
    assert [o.ext for o in result.outputs] == ["png", "png"]
    assert not rig.fake.polls()
    # Held in memory only: a fresh process cannot collect it and says so (retryably).
    with pytest.raises(ProviderError) as info:
        await rig.adapter().wait(job, prediction_id)
    assert info.value.error == "bse_provider_error" and info.value.retryable


async def test_qwen_image_edit_sends_images_first(rig: Rig) -> None:
    job = image_job(native_model_id="qwen-image-edit", inputs=[picture("src")])
    await run(rig.adapter(), job)
    body = rig.fake.submits()[0].body
    assert body["input"]["messages"][0]["content"] == [
        {"image": "https://images.example.com/src.png"},
        {"text": "a lantern festival"},
    ]
    assert "size" not in body["parameters"]  # an edit keeps the input's frame


async def test_qwen_image_moderation(rig: Rig) -> None:
    rig.fake.moderation = "input"
    err = await failure(rig.adapter(), image_job(native_model_id="qwen-image-max"))
    assert err.error == "bse_content_policy_violation" and "DataInspectionFailed" in err.message


# ----------------------------------------------------------------------- videos


async def test_text_to_video_task(rig: Rig) -> None:
    rig.fake.queued_polls, rig.fake.running_polls = 2, 2
    specific = {"generation_seed": 5, "generation_negative_prompt": "rain"}
    job = video_job(generate_audio=True, specific=specific)
    adapter = rig.adapter()
    task_id = await adapter.submit(job)
    result = await adapter.wait(job, task_id)

    [submit] = rig.fake.submits()
    assert submit.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert submit.headers["x-dashscope-async"] == "enable"
    assert submit.body == {
        "model": "wan2.5-t2v-preview",
        "input": {"prompt": "a paper boat on a river", "negative_prompt": "rain"},
        "parameters": {"seed": 5, "size": "1920*1080", "duration": 10, "audio": True},
    }
    assert len(rig.fake.polls()) == 5
    assert all(p.path == f"/api/v1/tasks/{task_id}" for p in rig.fake.polls())
    [out] = result.outputs
    assert (out.ext, out.content_type) == ("mp4", "video/mp4")
    got = await rig.client.get(out.url or "")
    assert got.status_code == 200 and got.content[4:8] == b"ftyp"


async def test_image_to_video_uses_resolution_and_img_url(rig: Rig) -> None:
    job = video_job(
        native_model_id="wan2.5-i2v-preview",
        resolution="720p",
        inputs=[picture("frame")],
        generate_audio=True,
        field_names={"generation_generate_audio": "enable_audio"},
    )
    await run(rig.adapter(), job)
    body = rig.fake.submits()[0].body
    assert body["input"]["img_url"] == "https://images.example.com/frame.png"
    assert body["parameters"] == {"resolution": "720P", "duration": 10, "enable_audio": True}


async def test_resolution_value_map_wins_over_the_default_spelling(rig: Rig) -> None:
    job = video_job(
        native_model_id="wan2.2-i2v-flash",
        resolution="480p",
        inputs=[picture("frame")],
        value_maps={"generation_resolution": {"480p": "480P_FAST"}},
    )
    await run(rig.adapter(), job)
    assert rig.fake.submits()[0].body["parameters"]["resolution"] == "480P_FAST"


async def test_first_and_last_frame_model(rig: Rig) -> None:
    job = video_job(
        native_model_id="wan2.1-kf2v-plus",
        duration=5,
        resolution="720p",
        inputs=[picture("first")],
        last_frame=picture("last"),
    )
    await run(rig.adapter(), job)
    submit = rig.fake.submits()[0]
    assert submit.path == "/api/v1/services/aigc/image2video/video-synthesis"
    assert submit.body["input"]["first_frame_url"] == "https://images.example.com/first.png"
    assert submit.body["input"]["last_frame_url"] == "https://images.example.com/last.png"


async def test_a_last_frame_on_a_model_without_one_is_refused_before_any_call(rig: Rig) -> None:
    job = video_job(native_model_id="wan2.5-i2v-preview", inputs=[picture("a")], last_frame=picture("b"))
    err = await failure(rig.adapter(), job)
    assert err.error == "bse_unsupported_parameter" and not rig.fake.calls


async def test_endpoint_can_be_named_by_the_catalogue(rig: Rig) -> None:
    job = image_job(native_model_id="qwen-image", params={"endpoint": "text2image/image-synthesis"})
    await run(rig.adapter(), job)
    submit = rig.fake.submits()[0]
    assert submit.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert "endpoint" not in submit.body["parameters"]
    assert submit.body["parameters"]["size"] == "1664*928"  # Qwen-Image's own 16:9 size


async def test_wait_resumes_from_the_task_id_alone(rig: Rig) -> None:
    rig.fake.queued_polls = 1
    task_id = await rig.adapter().submit(video_job())
    fresh = AlibabaCloudAdapter(settings(), rig.client)
    assert (await fresh.wait(video_job(), task_id)).outputs[0].url


async def test_an_unknown_task_is_a_retryable_error(rig: Rig) -> None:
    with pytest.raises(ProviderError) as info:
        await rig.adapter().wait(video_job(), "5b0e4c8f-0000-4000-8000-000000000000")
    assert info.value.error == "bse_provider_error" and info.value.retryable


async def test_video_output_moderation(rig: Rig) -> None:
    rig.fake.moderation = "output"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_content_policy_violation" and not err.retryable


async def test_other_task_failures_are_retryable(rig: Rig) -> None:
    rig.fake.task_error = "InternalError.Algo"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_error" and err.retryable and "InternalError.Algo" in err.message


async def test_invalid_parameter_task_failure(rig: Rig) -> None:
    rig.fake.task_error = "InvalidParameter"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_invalid_input" and not err.retryable


# -------------------------------------------------------------- submit failures


async def test_wrong_key(rig: Rig) -> None:
    err = await failure(AlibabaCloudAdapter(settings(key="sk-wrong"), rig.client), video_job())
    assert err.error == "bse_provider_unavailable" and err.retryable and err.http_status == 401
    assert "sk-wrong" not in err.message


async def test_arrearage_is_credits_exhausted_despite_the_400(rig: Rig) -> None:
    rig.fake.arrearage = True
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_credits_exhausted" and not err.retryable and err.http_status == 400


async def test_input_moderation_on_submit(rig: Rig) -> None:
    rig.fake.moderation = "input"
    err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_content_policy_violation" and err.stops_chain


async def test_server_error_on_submit(rig: Rig) -> None:
    rig.fake.fail_submit = 1
    err = await failure(rig.adapter(), video_job())
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_error", True, 500)


async def test_throttling_carries_retry_after(rig: Rig) -> None:
    rig.fake.rate_limit, rig.fake.retry_after = 1, "12"
    err = await failure(rig.adapter(), image_job())
    assert err.error == "bse_provider_unavailable" and err.retryable and err.retry_after == 12


async def test_hung_submit_times_out(rig: Rig) -> None:
    rig.fake.hang_submit = True
    async with asyncio.timeout(3):
        err = await failure(rig.adapter(), video_job())
    assert err.error == "bse_provider_timeout" and err.retryable


async def test_malformed_submit_answer(rig: Rig) -> None:
    rig.fake.malformed = "submit"
    err = await failure(rig.adapter(), image_job())
    assert err.error == "bse_provider_error" and err.retryable


# ---------------------------------------------------------------- poll trouble


async def test_polls_wait_out_throttling_garbage_and_a_hang(rig: Rig) -> None:
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.rate_limit, rig.fake.malformed, rig.fake.hang_polls = 1, "poll", 1
    async with asyncio.timeout(5):
        result = await adapter.wait(video_job(), task_id)
    assert result.outputs[0].url
    assert len(rig.fake.polls()) == 4  # throttled, hung, garbled, then the answer


async def test_a_provider_that_never_answers_polls_keeps_wait_going(rig: Rig) -> None:
    # The worker's per-attempt deadline ends this; the adapter keeps polling.
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.hang_polls = 1000
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await adapter.wait(video_job(), task_id)
    assert len(rig.fake.polls()) >= 2


async def test_outputs_expire(rig: Rig) -> None:
    rig.fake.output_ttl = 0.0
    result = await run(rig.adapter(), image_job())
    await asyncio.sleep(0.01)
    assert (await rig.client.get(result.outputs[0].url or "")).status_code == 403


# ----------------------------------------------------------------------- cancel


async def test_cancel_a_pending_task(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    assert await adapter.cancel(task_id) is True
    assert rig.fake.cancel_calls == [task_id]
    call = rig.fake.calls[-1]
    assert (call.method, call.path) == ("POST", f"/api/v1/tasks/{task_id}/cancel")
    assert call.headers["authorization"] == f"Bearer {KEY}"
    with pytest.raises(ProviderError) as info:
        async with asyncio.timeout(5):
            await adapter.wait(video_job(), task_id)
    assert info.value.error == "bse_provider_error" and info.value.retryable
    assert "canceled upstream" in info.value.message


async def test_a_running_task_cannot_be_canceled(rig: Rig) -> None:
    rig.fake.running_polls = 1000
    adapter = rig.adapter()
    task_id = await adapter.submit(video_job())
    rig.fake.tasks[task_id]["polls"] = 1
    assert await adapter.cancel(task_id) is False
    assert rig.fake.cancel_calls == [task_id]


async def test_cancel_of_a_synchronous_call_sends_nothing(rig: Rig) -> None:
    adapter = rig.adapter()
    prediction_id = await adapter.submit(image_job(native_model_id="qwen-image-max"))
    assert await adapter.cancel(prediction_id) is False
    assert not rig.fake.cancel_calls


# ------------------------------------------------------------------- configured


async def test_configured_needs_the_key(rig: Rig) -> None:
    assert rig.adapter().configured()
    assert not AlibabaCloudAdapter(settings(key=None), rig.client).configured()


async def test_registry_builds_the_adapter(rig: Rig) -> None:
    assert isinstance(build_providers(rig.settings, rig.client)["alibabacloud"], AlibabaCloudAdapter)
