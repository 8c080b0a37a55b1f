"""Alibaba Cloud Model Studio (DashScope)'s protocol quirks; the behaviours every adapter
shares are in test_provider_contract."""

from __future__ import annotations

from genplane.providers.alibabacloud import AlibabaCloudAdapter
from genplane.providers.base import InputImage
from tests import provider_contract as contract
from tests.fakes.alibabacloud import FakeDashScope
from tests.provider_contract import job_builder, raises

Rig = contract.Rig[FakeDashScope, AlibabaCloudAdapter]
rig = contract.rig_fixture(contract.ALIBABACLOUD)
KEY = contract.ALIBABACLOUD.key
video_job = contract.ALIBABACLOUD.job
image_job = job_builder(generation_id="gen_img", model_identifier="alibaba/wan-2.5-image",
                        native_model_id="wan2.5-t2i-preview", prompt="a lantern festival",
                        output_format="png")


def picture(name: str) -> InputImage:
    return contract.picture(f"https://images.example.com/{name}.png")


# ------------------------------------------------------------------ wan images


async def test_wan_image_task_is_native_and_outputs_are_urls(rig: Rig) -> None:
    job = image_job(output_number=2,
                    specific={"generation_seed": 9, "generation_negative_prompt": "text, watermark"},
                    params={"prompt_extend": False, "watermark": False})
    result = await rig.run(job)

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
    assert polls[0].path.startswith("/api/v1/tasks/")
    assert "x-dashscope-async" not in polls[0].headers

    assert [(o.ext, o.content_type, o.data) for o in result.outputs] == [("png", "image/png", None)] * 2
    assert result.predict_time == 8.5


async def test_catalogue_overrides_for_an_edit_model(rig: Rig) -> None:
    job = image_job(native_model_id="wan2.5-i2i-preview", ratio="4:3", inputs=[picture("a"), picture("b")],
                    value_maps={"generation_ratio": {"4:3": "1280*960"}},
                    params={"input.function": "description_edit", "parameters.strength": 0.4})
    await rig.run(job)
    body = rig.fake.submits()[0].body
    assert rig.fake.submits()[0].path == "/api/v1/services/aigc/image2image/image-synthesis"
    assert body["input"]["images"] == ["https://images.example.com/a.png", "https://images.example.com/b.png"]
    assert body["input"]["function"] == "description_edit"
    assert body["parameters"]["size"] == "1280*960"
    assert body["parameters"]["strength"] == 0.4


async def test_sizes_follow_the_model_family(rig: Rig) -> None:
    await rig.run(image_job(native_model_id="wan2.2-t2i-flash"))
    await rig.run(image_job(ratio="5:4"))  # no preset: computed, sides in steps of 16
    await rig.run(image_job(native_model_id="wan2.2-t2i-plus", ratio="5:4"))
    sizes = [c.body["parameters"]["size"] for c in rig.fake.submits()]
    assert sizes == ["1280*720", "1520*1216", "1152*928"]


async def test_one_refused_image_fails_the_batch(rig: Rig) -> None:
    rig.fake.moderation = "output"
    err = await rig.fails(image_job(output_number=2))
    assert err.error == "bse_content_policy_violation" and not err.retryable and err.stops_chain


# ----------------------------------------------------------------- qwen-image


async def test_qwen_image_is_synchronous_one_call_per_image(rig: Rig) -> None:
    job = image_job(native_model_id="qwen-image-plus", ratio="9:16", output_number=2,
                    specific={"generation_seed": 3, "generation_negative_prompt": "blurry"},
                    params={"prompt_extend": False})
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


async def test_qwen_image_edit_sends_images_first(rig: Rig) -> None:
    job = image_job(native_model_id="qwen-image-edit", inputs=[picture("src")])
    await rig.run(job)
    body = rig.fake.submits()[0].body
    assert body["input"]["messages"][0]["content"] == [
        {"image": "https://images.example.com/src.png"},
        {"text": "a lantern festival"},
    ]
    assert "size" not in body["parameters"]  # an edit keeps the input's frame


# ----------------------------------------------------------------------- videos


async def test_text_to_video_task(rig: Rig) -> None:
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
    assert all(p.path == f"/api/v1/tasks/{task_id}" for p in rig.fake.polls())
    [out] = result.outputs
    assert (out.ext, out.content_type) == ("mp4", "video/mp4")


async def test_image_to_video_uses_resolution_and_img_url(rig: Rig) -> None:
    job = video_job(native_model_id="wan2.5-i2v-preview", resolution="720p", inputs=[picture("frame")],
                    generate_audio=True, field_names={"generation_generate_audio": "enable_audio"})
    await rig.run(job)
    body = rig.fake.submits()[0].body
    assert body["input"]["img_url"] == "https://images.example.com/frame.png"
    assert body["parameters"] == {"resolution": "720P", "duration": 10, "enable_audio": True}


async def test_resolution_value_map_wins_over_the_default_spelling(rig: Rig) -> None:
    job = video_job(native_model_id="wan2.2-i2v-flash", resolution="480p", inputs=[picture("frame")],
                    value_maps={"generation_resolution": {"480p": "480P_FAST"}})
    await rig.run(job)
    assert rig.fake.submits()[0].body["parameters"]["resolution"] == "480P_FAST"


async def test_first_and_last_frame_model(rig: Rig) -> None:
    job = video_job(native_model_id="wan2.1-kf2v-plus", duration=5, resolution="720p",
                    inputs=[picture("first")], last_frame=picture("last"))
    await rig.run(job)
    submit = rig.fake.submits()[0]
    assert submit.path == "/api/v1/services/aigc/image2video/video-synthesis"
    assert submit.body["input"]["first_frame_url"] == "https://images.example.com/first.png"
    assert submit.body["input"]["last_frame_url"] == "https://images.example.com/last.png"


async def test_a_last_frame_on_a_model_without_one_is_refused_before_any_call(rig: Rig) -> None:
    job = video_job(native_model_id="wan2.5-i2v-preview", inputs=[picture("a")], last_frame=picture("b"))
    err = await rig.fails(job)
    assert err.error == "bse_unsupported_parameter" and not rig.fake.calls


async def test_endpoint_can_be_named_by_the_catalogue(rig: Rig) -> None:
    job = image_job(native_model_id="qwen-image", params={"endpoint": "text2image/image-synthesis"})
    await rig.run(job)
    submit = rig.fake.submits()[0]
    assert submit.path == "/api/v1/services/aigc/text2image/image-synthesis"
    assert "endpoint" not in submit.body["parameters"]
    assert submit.body["parameters"]["size"] == "1664*928"  # Qwen-Image's own 16:9 size


async def test_an_unknown_task_is_a_retryable_error(rig: Rig) -> None:
    err = await raises(rig.adapter().wait(video_job(), "5b0e4c8f-0000-4000-8000-000000000000"))
    assert err.error == "bse_provider_error" and err.retryable


async def test_invalid_parameter_task_failure(rig: Rig) -> None:
    rig.fake.task_error = "InvalidParameter"
    err = await rig.fails(video_job())
    assert err.error == "bse_invalid_input" and not err.retryable
