"""BytePlus ModelArk's protocol quirks; the behaviours every adapter shares are in
test_provider_contract."""

from __future__ import annotations

from genplane.providers.base import InputImage
from genplane.providers.byteplus import BytePlusAdapter
from tests import provider_contract as contract
from tests.fakes.byteplus import FakeBytePlus

Rig = contract.Rig[FakeBytePlus, BytePlusAdapter]
rig = contract.rig_fixture(contract.BYTEPLUS)
KEY = contract.BYTEPLUS.key
image_job = contract.BYTEPLUS_SEEDREAM.job
video_job = contract.BYTEPLUS.job


def picture(name: str = "in") -> InputImage:
    return contract.picture(f"https://images.example.com/{name}.png")


# ------------------------------------------------------------------------ images


async def test_image_request_is_native_and_outputs_are_urls(rig: Rig) -> None:
    job = image_job(output_number=2, specific={"generation_seed": 7}, inputs=[picture()])
    result = await rig.run(job)

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
    result = await rig.run(job)
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


# ------------------------------------------------------------------------ videos


async def test_video_request_is_native_and_goes_queued_running_done(rig: Rig) -> None:
    job = video_job(inputs=[picture("first")], last_frame=picture("last"), generate_audio=True,
                    specific={"generation_seed": 42}, params={"camera_fixed": True},
                    value_maps={"generation_ratio": {"16:9": "adaptive"}})
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
    assert all(p.path == f"/api/v3/contents/generations/tasks/{task_id}" for p in polls)
    [out] = result.outputs
    assert (out.ext, out.content_type) == ("mp4", "video/mp4")
    assert result.predict_time == 7.0


async def test_several_inputs_are_reference_images(rig: Rig) -> None:
    job = video_job(native_model_id="seedance-1-0-lite-i2v-250428", inputs=[picture("a"), picture("b")])
    await rig.run(job)
    roles = [c.get("role") for c in rig.fake.submits()[0].body["content"]]
    assert roles == [None, "reference_image", "reference_image"]


async def test_invalid_parameter_task_failure_is_invalid_input(rig: Rig) -> None:
    rig.fake.task_error = "InvalidParameter.Duration"
    err = await rig.fails(video_job())
    assert err.error == "bse_invalid_input" and not err.retryable
