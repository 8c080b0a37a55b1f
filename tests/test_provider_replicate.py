"""Replicate's protocol quirks; the behaviours every adapter shares are in test_provider_contract."""

from __future__ import annotations

import httpx
import orjson

from genplane.providers.replicate import ReplicateAdapter
from tests import provider_contract as contract
from tests.fakes.replicate import API_HOST, CDN_HOST, FakeReplicate
from tests.provider_contract import VIDEO, job_builder, picture, raises

Rig = contract.Rig[FakeReplicate, ReplicateAdapter]
rig = contract.rig_fixture(contract.REPLICATE)
image_job = contract.REPLICATE.job
video_job = job_builder(generation_id="gen_v", model_identifier="bytedance/seedance-1-pro",
                        native_model_id="bytedance/seedance-1-pro", prompt="a paper boat on a river",
                        ratio="9:16", duration=5, resolution="1080p", generate_audio=True,
                        inputs=[picture("https://img.example/first.png")],
                        last_frame=picture("https://img.example/last.png"), **VIDEO)
TOKEN = contract.REPLICATE.key
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


async def test_official_model_request_and_outputs(rig: Rig) -> None:
    job = image_job()
    prediction_id = await rig.adapter().submit(job)

    [created] = rig.fake.created
    assert created["path"] == "/v1/models/black-forest-labs/flux-schnell/predictions"
    [post] = [r for r in rig.network.requests_to(API_HOST) if r.method == "POST"]
    assert post.headers["authorization"] == f"Bearer {TOKEN}" and "prefer" not in post.headers
    assert post.headers["content-type"] == "application/json" and orjson.loads(post.body) == created["body"]
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

    result = await rig.adapter().wait(job, prediction_id)
    assert len(result.outputs) == 2
    assert result.predict_time == 1.25
    for output in result.outputs:
        assert output.ext == "png" and output.content_type == "image/png" and output.data is None
        assert output.url is not None and httpx.URL(output.url).host == CDN_HOST


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
    await rig.adapter().submit(job)
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
    await rig.adapter().submit(image_job(native_model_id=VERSION, output_number=1))
    assert rig.fake.created[0]["path"] == "/v1/predictions"
    assert rig.fake.created[0]["body"]["version"] == VERSION


async def test_one_prediction_per_output_when_model_makes_one(rig: Rig) -> None:
    rig.fake.single_output = True
    job = image_job(native_model_id="black-forest-labs/flux-1.1-pro", output_number=3,
                    field_names={"generation_output_number": ""})
    prediction_id = await rig.adapter().submit(job)
    assert len(prediction_id.split(",")) == 3
    inputs = [c["body"]["input"] for c in rig.fake.created]
    assert [i["seed"] for i in inputs] == [7, 8, 9]  # distinct images, still reproducible
    assert all("num_outputs" not in i for i in inputs)

    result = await rig.adapter().wait(job, prediction_id)
    assert len(result.outputs) == 3
    assert len({o.url for o in result.outputs}) == 3


async def test_image_inputs_go_as_a_list_of_urls(rig: Rig) -> None:
    job = image_job(native_model_id="google/nano-banana", output_number=1,
                    inputs=[picture("https://img.example/a.png"), picture("https://img.example/b.png")])
    await rig.adapter().submit(job)
    assert rig.fake.created[0]["body"]["input"]["image_input"] == [
        "https://img.example/a.png",
        "https://img.example/b.png",
    ]
    single = image_job(native_model_id="black-forest-labs/flux-kontext-pro", output_number=1,
                       inputs=[picture("https://img.example/a.png")],
                       field_names={"generation_input_file": "input_image"})
    await rig.adapter().submit(single)
    assert rig.fake.created[1]["body"]["input"]["input_image"] == "https://img.example/a.png"


async def test_video_request_and_output(rig: Rig) -> None:
    rig.fake.video = True
    rig.fake.single_output = True
    job = video_job()
    prediction_id = await rig.adapter().submit(job)
    assert rig.fake.created[0]["body"]["input"] == {
        "prompt": "a paper boat on a river",
        "aspect_ratio": "9:16",
        "duration": 5,
        "resolution": "1080p",
        "generate_audio": True,
        "image": "https://img.example/first.png",
        "last_frame_image": "https://img.example/last.png",
    }
    result = await rig.adapter().wait(job, prediction_id)
    assert [(o.ext, o.content_type) for o in result.outputs] == [("mp4", "video/mp4")]


async def test_a_503_is_unavailable(rig: Rig) -> None:
    rig.fake.submit_error_status = 503
    err = await raises(rig.adapter().submit(image_job()))
    assert (err.error, err.retryable, err.http_status) == ("bse_provider_unavailable", True, 503)


async def test_cancel_of_a_batch_cancels_every_prediction(rig: Rig) -> None:
    rig.fake.queued_polls = 10**6
    job = image_job(output_number=2, field_names={"generation_output_number": ""})
    prediction_id = await rig.adapter().submit(job)
    assert await rig.adapter().cancel(prediction_id) is True
    assert rig.fake.canceled == prediction_id.split(",")


async def test_unknown_prediction_cannot_be_canceled(rig: Rig) -> None:
    assert await rig.adapter().cancel("doesnotexist") is False


async def test_malformed_model_id_is_a_catalogue_error(rig: Rig) -> None:
    err = await raises(rig.adapter().submit(image_job(native_model_id="flux-schnell")))
    assert err.error == "bse_model_not_configured"
    assert rig.fake.created == []
