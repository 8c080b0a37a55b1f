"""Runway's protocol quirks; the behaviours every adapter shares are in test_provider_contract."""

from __future__ import annotations

import base64

import httpx
import pytest

from genplane.providers.base import InputImage
from genplane.providers.runway import RunwayAdapter, failure_error, pixel_ratio
from tests import provider_contract as contract
from tests.fakes.media import png_bytes
from tests.fakes.runway import CDN_HOST, FakeRunway
from tests.provider_contract import job_builder, picture, raises

Rig = contract.Rig[FakeRunway, RunwayAdapter]
rig = contract.rig_fixture(contract.RUNWAY)
KEY = contract.RUNWAY.key
video_job = contract.RUNWAY.job
image_job = job_builder(generation_id="gen_2", model_identifier="runway/gen4-image",
                        native_model_id="gen4_image", prompt="a red fox in the snow", output_format="png")


async def test_image_to_video_request_is_native_and_outputs_are_cdn_urls(rig: Rig) -> None:
    moderation = {"publicFigureThreshold": "low"}
    job = video_job(specific={"generation_seed": 42}, params={"contentModeration": moderation})
    result = await rig.run(job)

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


async def test_a_last_frame_makes_prompt_image_a_positioned_list(rig: Rig) -> None:
    job = video_job(native_model_id="veo3.1", ratio="9:16", resolution="1080p", duration=8,
                    generate_audio=True, last_frame=picture("https://example.com/z.png", (9, 9, 9)),
                    specific={"generation_negative_prompt": "blur"})
    await rig.run(job)
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
    await rig.run(job)
    call = rig.fake.submissions()[0]
    assert call.path == "/v1/text_to_video"
    assert call.body == {"model": "veo3", "promptText": "the fox starts running", "ratio": "1280:720",
                         "duration": 8}


async def test_a_large_input_goes_by_url_not_data_uri(rig: Rig) -> None:
    big = InputImage("https://example.com/big.png", b"\x89PNG" + b"\0" * (4 * 1024 * 1024), "image/png")
    await rig.run(video_job(inputs=[big]))
    assert rig.fake.submissions()[0].body["promptImage"] == "https://example.com/big.png"


async def test_text_to_image_makes_one_task_per_output_with_distinct_seeds(rig: Rig) -> None:
    job = image_job(output_number=3, specific={"generation_seed": 7},
                    inputs=[picture(), picture("https://example.com/b.png", (4, 5, 6))])
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
    result = await rig.run(job)
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
    result = await rig.run(video_job())
    assert len(rig.fake.polls) == 7
    assert result.outputs[0].url


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        ("SAFETY.OUTPUT.VIDEO", "bse_content_policy_violation", False),
        ("INPUT_PREPROCESSING.SAFETY.TEXT", "bse_content_policy_violation", False),
        ("ASSET.INVALID", "bse_invalid_input", False),
        ("INPUT_PREPROCESSING.IMAGE_TOO_SMALL", "bse_invalid_input", False),
        ("INPUT_PREPROCESSING.INTERNAL", "bse_provider_error", True),
        ("INTERNAL.BAD_OUTPUT.CODE01", "bse_provider_error", True),
    ],
)
async def test_failure_codes_map_to_contract_errors(rig: Rig, code: str, error: str, retryable: bool) -> None:
    rig.fake.failure_code = code
    failure = await rig.fails(video_job())
    assert (failure.error, failure.retryable) == (error, retryable)
    assert code in failure.message


def test_failure_without_a_code_is_a_retryable_provider_error() -> None:
    err = failure_error("", "")
    assert (err.error, err.retryable) == ("bse_provider_error", True)


async def test_a_task_canceled_upstream_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.cancel_upstream = True
    error = await rig.fails(video_job())
    assert (error.error, error.retryable) == ("bse_provider_error", True)
    assert "canceled upstream" in error.message


async def test_a_rejected_body_is_invalid_input(rig: Rig) -> None:
    error = await rig.fails(video_job(field_names={"generation_prompt": "prompt"}, inputs=[]))
    assert (error.error, error.retryable) == ("bse_invalid_input", False)
    assert "promptText" in error.message


async def test_cancel_deletes_every_task_of_the_job(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    adapter = rig.adapter()
    prediction_id = await adapter.submit(image_job(output_number=2))
    assert await adapter.cancel(prediction_id) is True
    assert rig.fake.cancels == prediction_id.split(",")
    assert {rig.fake.tasks[t].status for t in rig.fake.cancels} == {"CANCELLED"}


async def test_cancel_of_an_unknown_task_reports_false(rig: Rig) -> None:
    assert await rig.adapter().cancel("no-such-task") is False
    assert rig.fake.cancels == ["no-such-task"]


async def test_a_failed_second_submit_cancels_the_first_task(rig: Rig) -> None:
    rig.fake.queued_polls = 1000
    rig.fake.fail_nth_submit = 2
    error = await rig.fails(image_job(output_number=2))
    assert error.http_status == 500
    [first] = rig.fake.tasks
    assert rig.fake.cancels == [first]  # not left running (and billed) for a failed attempt


async def test_one_failed_task_cancels_the_rest(rig: Rig) -> None:
    adapter = rig.adapter()
    job = image_job(output_number=2)
    prediction_id = await adapter.submit(job)
    rig.fake.failure_code = "SAFETY.INPUT.TEXT"
    error = await raises(adapter.wait(job, prediction_id))
    assert error.error == "bse_content_policy_violation"
    assert rig.fake.cancels == prediction_id.split(",")[1:]
