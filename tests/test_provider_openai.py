"""OpenAI's protocol quirks (Images API and Videos API); the behaviours every adapter shares
are in test_provider_contract."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from genplane.providers.base import InputImage
from genplane.providers.openai import IMAGE_PREFIX, OpenAIAdapter, nearest_size
from tests import provider_contract as contract
from tests.fakes.media import image_bytes, png_bytes
from tests.fakes.openai import FakeOpenAI, video_bytes

Rig = contract.Rig[FakeOpenAI, OpenAIAdapter]
rig = contract.rig_fixture(contract.OPENAI)
image_job = contract.OPENAI_IMAGES.job
video_job = contract.OPENAI.job


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
    result = await rig.run(job)

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
    await rig.run(job)
    assert [f["name"] for f in rig.fake.requests[0]["files"]] == ["image"]


async def test_dalle3_makes_one_image_per_call_and_asks_for_base64(rig: Rig) -> None:
    job = image_job(native_model_id="dall-e-3", output_number=3, output_format="png")
    result = await rig.run(job)

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
    result = await rig.run(job)
    sent = rig.fake.requests[0]["json"]
    assert (sent["size"], sent["output_format"], sent["background"]) == ("auto", "webp", "transparent")
    # The extension follows the bytes actually received.
    assert (result.outputs[0].ext, result.outputs[0].content_type) == ("webp", "image/webp")


async def test_dalle_urls_are_passed_on_when_the_catalogue_asks_for_them(rig: Rig) -> None:
    job = image_job(native_model_id="dall-e-3", output_format="png", params={"response_format": "url"})
    url = (await rig.run(job)).outputs[0].url
    assert url is not None and httpx.URL(url).host == "images.openai.test"
    assert (await rig.client.get(url)).status_code == 200
    rig.fake.files.ttl_seconds = -1.0  # expired, as the real URLs are after an hour
    url = (await rig.run(job)).outputs[0].url
    assert url is not None and (await rig.client.get(url)).status_code == 403


def test_nearest_size() -> None:
    sizes = ((1024, 1024), (1536, 1024), (1024, 1536))
    assert nearest_size("1:1", sizes) == "1024x1024"
    assert nearest_size("4:3", sizes) == "1536x1024"
    assert nearest_size("21:9", sizes) == "1536x1024"
    assert nearest_size("2:3", sizes) == "1024x1536"
    assert nearest_size("9:16", ((1280, 720), (720, 1280))) == "720x1280"


async def test_dalle3_refusals_are_content_policy_violations_too(rig: Rig) -> None:
    rig.fake.moderate_submit = True
    error = await rig.fails(image_job(native_model_id="dall-e-3"))
    assert (error.error, error.retryable, error.http_status) == ("bse_content_policy_violation", False, 400)


# -- video --------------------------------------------------------------------------

SORA_FIELDS = {"model": "sora-2", "prompt": "a lighthouse at dusk", "size": "1280x720", "seconds": "8"}


async def test_video_is_created_polled_and_downloaded_with_the_key(rig: Rig) -> None:
    job = video_job()
    adapter = rig.adapter()
    video_id = await adapter.submit(job)
    result = await adapter.wait(job, video_id)

    create = rig.fake.requests[0]
    assert (create["method"], create["path"]) == ("POST", "/v1/videos")
    assert create["headers"]["authorization"] == "Bearer sk-test-key"
    assert create["json"] == SORA_FIELDS
    assert video_id.startswith("video_")
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
    await rig.run(job)
    assert rig.fake.requests[0]["json"] == {
        "model": "sora-2-pro", "prompt": "a lighthouse at dusk", "size": "1024x1792", "seconds": "12"
    }


async def test_an_input_image_is_fitted_to_the_size_and_uploaded_as_input_reference(rig: Rig) -> None:
    picture = image_bytes("jpg", 300, 200)
    job = video_job(inputs=[InputImage("https://example.com/a.jpg", picture, "image/jpeg")])
    result = await rig.run(job)

    create = rig.fake.requests[0]
    assert create["form"] == SORA_FIELDS
    [reference] = create["files"]
    assert reference["name"] == "input_reference" and reference["content_type"] == "image/png"
    with Image.open(io.BytesIO(reference["data"])) as fitted:
        assert fitted.size == (1280, 720)  # the fake, like the API, refuses any other size
    assert result.outputs[0].data == video_bytes()


async def test_expired_video_content_is_a_provider_error(rig: Rig) -> None:
    rig.fake.content_ttl = -1
    error = await rig.fails(video_job())
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
