"""fal's protocol quirks; the behaviours every adapter shares are in test_provider_contract."""

from __future__ import annotations

import httpx
import pytest

from genplane.providers import fal
from genplane.providers.base import ProviderError
from genplane.providers.fal import FalAdapter, app_id
from tests import provider_contract as contract
from tests.fakes.fal import CDN_HOST, QUEUE_HOST, FakeFal
from tests.provider_contract import VIDEO, job_builder, picture, raises

Rig = contract.Rig[FakeFal, FalAdapter]
rig = contract.rig_fixture(contract.FAL)
image_job = contract.FAL.job
video_job = job_builder(generation_id="gen_v", model_identifier="bytedance/seedance-1-pro",
                        native_model_id="fal-ai/bytedance/seedance/v1/pro/image-to-video",
                        prompt="waves on rocks", duration=5, resolution="1080p", generate_audio=False,
                        inputs=[picture("https://img.example/first.png")],
                        last_frame=picture("https://img.example/last.png"), **VIDEO)
KEY = contract.FAL.key


def test_app_id_drops_the_endpoint_sub_path() -> None:
    assert app_id("fal-ai/flux/dev") == "fal-ai/flux"
    assert app_id("fal-ai/flux-pro/v1.1-ultra") == "fal-ai/flux-pro"
    assert app_id("fal-ai/bytedance/seedance/v1/pro/text-to-video") == "fal-ai/bytedance"
    assert app_id("fal-ai/nano-banana") == "fal-ai/nano-banana"
    assert app_id("workflows/someone/my-flow/run") == "workflows/someone/my-flow"
    assert app_id("12345-my-app") == "12345/my-app"
    with pytest.raises(ProviderError):
        app_id("flux")


async def test_request_mapping_and_outputs(rig: Rig) -> None:
    job = image_job()
    prediction_id = await rig.adapter().submit(job)

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

    result = await rig.adapter().wait(job, prediction_id)
    # Status was read under the app id, without the endpoint's sub-path.
    assert rig.fake.status_paths == [f"fal-ai/flux/requests/{submitted['request_id']}/status"]
    assert result.predict_time == 1.5
    assert len(result.outputs) == 2
    for output in result.outputs:
        assert (output.ext, output.content_type, output.data) == ("jpg", "image/jpeg", None)
        assert output.url is not None and httpx.URL(output.url).host == CDN_HOST


async def test_ratios_without_a_preset_are_sent_as_width_and_height(rig: Rig) -> None:
    await rig.adapter().submit(image_job(ratio="21:9", output_number=1))
    size = rig.fake.submitted[0]["body"]["image_size"]
    assert size["width"] % 16 == 0 and size["height"] % 16 == 0
    assert abs(size["width"] / size["height"] - 21 / 9) < 0.05
    # fal bills each started megapixel: 1568x672, the nearest size to one, was billed as two.
    assert size["width"] * size["height"] <= 1024 * 1024


@pytest.mark.parametrize("ratio", ["21:9", "9:21", "3:2", "2:3", "4:5", "5:4", "2:1", "1:2"])
def test_sizes_without_a_preset_stay_within_one_billed_megapixel(ratio: str) -> None:
    width, height = fal.dimensions(ratio)
    assert width * height <= 1024 * 1024 and width % 16 == 0 and height % 16 == 0
    assert width * height > 0.9 * 1024 * 1024  # as large as the megapixel allows
    w, h = (int(part) for part in ratio.split(":"))
    assert abs(width / height - w / h) / (w / h) < 0.05


async def test_catalogue_overrides(rig: Rig) -> None:
    job = image_job(native_model_id="fal-ai/ideogram/v3", output_number=1, output_format="png",
                    field_names={"generation_ratio": "aspect_ratio", "generation_negative_prompt": ""},
                    value_maps={"generation_output_format": {"png": "PNG"}},
                    params={"enable_safety_checker": True, "safety_tolerance": "2"},
                    inputs=[picture("https://img.example/ref.png")])
    await rig.adapter().submit(job)
    assert rig.fake.submitted[0]["path"] == "/fal-ai/ideogram/v3"
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
    prediction_id = await rig.adapter().submit(job)
    app, _, ids = prediction_id.partition("|")
    assert app == "fal-ai/flux" and len(ids.split(",")) == 3
    assert [s["body"]["seed"] for s in rig.fake.submitted] == [11, 12, 13]
    assert all("num_images" not in s["body"] for s in rig.fake.submitted)
    assert len((await rig.adapter().wait(job, prediction_id)).outputs) == 3


async def test_video_request_and_output(rig: Rig) -> None:
    rig.fake.video = True
    job = video_job()
    prediction_id = await rig.adapter().submit(job)
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
    result = await rig.adapter().wait(job, prediction_id)
    assert [(o.ext, o.content_type) for o in result.outputs] == [("mp4", "video/mp4")]


async def test_duration_value_map_wins_over_the_string_default(rig: Rig) -> None:
    job = video_job(native_model_id="fal-ai/veo3", duration=8, inputs=[], last_frame=None,
                    value_maps={"generation_duration": {"8": "8s"}})
    await rig.adapter().submit(job)
    assert rig.fake.submitted[0]["body"]["duration"] == "8s"


async def test_a_503_is_unavailable(rig: Rig) -> None:
    rig.fake.submit_error_status = 503
    err = await raises(rig.adapter().submit(image_job()))
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_unavailable", True, 503)


async def test_nsfw_flagged_outputs_are_dropped(rig: Rig) -> None:
    rig.fake.nsfw_flags = [True, False]
    job = image_job(output_number=2)
    result = await rig.adapter().wait(job, await rig.adapter().submit(job))
    assert len(result.outputs) == 1


async def test_every_output_flagged_is_a_content_policy_violation(rig: Rig) -> None:
    rig.fake.nsfw_flags = [True, True]
    job = image_job(output_number=2)
    err = await rig.fails(job)
    assert (err.error, err.retryable) == ("bse_content_policy_violation", False)


async def test_a_runner_failure_keeps_the_result_endpoint_s_500(rig: Rig) -> None:
    rig.fake.fail_error = "CUDA error: an illegal memory access was encountered"
    assert (await rig.fails(image_job())).http_status == 500


async def test_cancel_after_completion_is_not_accepted(rig: Rig) -> None:
    job = image_job(output_number=1)
    prediction_id = await rig.adapter().submit(job)
    await rig.adapter().wait(job, prediction_id)
    assert await rig.adapter().cancel(prediction_id) is False


async def test_malformed_prediction_id(rig: Rig) -> None:
    err = await raises(rig.adapter().wait(image_job(), "no-separator"))
    assert (err.error, err.retryable) == ("bse_provider_error", False)
