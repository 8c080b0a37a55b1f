"""BFL's protocol quirks; the behaviours every adapter shares are in test_provider_contract."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from genplane.providers.bfl import BflAdapter, dimensions
from tests import provider_contract as contract
from tests.fakes.bfl import FakeBfl
from tests.provider_contract import picture

Rig = contract.Rig[FakeBfl, BflAdapter]
rig = contract.rig_fixture(contract.BFL)
make_job = contract.BFL.job


async def test_success_maps_the_job_and_returns_the_signed_samples(rig: Rig) -> None:
    job = make_job(output_number=2, specific={"generation_seed": 42},
                   params={"safety_tolerance": 2, "prompt_upsampling": False})
    prediction_id = await rig.adapter().submit(job)
    result = await rig.adapter().wait(job, prediction_id)  # a fresh adapter: all it has is the id

    # Each task's polling URL travels in the id: the usual one as the host it is rebuilt
    # from identically, which keeps the id within its 200 characters (the record shows it).
    assert prediction_id.count("@api.us1.bfl.test") == 2 and "://" not in prediction_id
    assert rig.fake.poll_urls and all(
        url.startswith("https://api.us1.bfl.test/v1/get_result?id=") for url in rig.fake.poll_urls
    )
    assert [s["path"] for s in rig.fake.submissions] == ["/v1/flux-pro-1.1"] * 2
    assert all(s["headers"]["x-key"] == "bfl-test-key" for s in rig.fake.submissions)
    first, second = (s["body"] for s in rig.fake.submissions)
    assert first == {
        "prompt": "a red fox in the snow",
        "width": 1376,
        "height": 768,
        "output_format": "jpeg",
        "seed": 42,
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }
    assert second["seed"] == 43  # N tasks, N different pictures
    # Polls go to the regional host named in polling_url, not the global one.
    assert set(rig.fake.polls) == {"api.us1.bfl.test"}

    assert len(result.outputs) == 2
    for output in result.outputs:
        assert output.ext == "jpg" and output.content_type == "image/jpeg"
        assert output.data is None and output.url is not None
        assert httpx.URL(output.url).host == "delivery.bfl.test"
    assert result.predict_time == 3.5


async def test_kontext_sends_aspect_ratio_and_input_images_as_base64(rig: Rig) -> None:
    first, second = picture(color=(1, 2, 3)), picture("https://example.com/b.png", (4, 5, 6))
    job = make_job(native_model_id="flux-kontext-pro", ratio="9:16", output_format="png",
                   inputs=[first, second])
    result = await rig.run(job)

    body = rig.fake.submissions[0]["body"]
    assert rig.fake.submissions[0]["path"] == "/v1/flux-kontext-pro"
    assert body["aspect_ratio"] == "9:16" and "width" not in body
    assert body["output_format"] == "png"
    assert base64.b64decode(body["input_image"]) == first.data
    assert base64.b64decode(body["input_image_2"]) == second.data
    assert result.outputs[0].ext == "png" and result.outputs[0].content_type == "image/png"


async def test_catalogue_overrides_names_values_and_params(rig: Rig) -> None:
    job = make_job(
        native_model_id="flux-2-pro",
        ratio="21:9",
        specific={"generation_seed": 5, "generation_negative_prompt": "blur"},
        field_names={"generation_seed": "noise_seed", "generation_negative_prompt": "negative_prompt"},
        value_maps={"generation_ratio": {"21:9": "1440x608"}, "generation_output_format": {"jpg": "webp"}},
        params={"safety_tolerance": 5},
    )
    result = await rig.run(job)

    body = rig.fake.submissions[0]["body"]
    assert (body["width"], body["height"]) == (1440, 608)
    assert body["output_format"] == "webp"
    assert body["noise_seed"] == 5 and "seed" not in body
    assert body["negative_prompt"] == "blur"
    assert body["safety_tolerance"] == 5
    assert result.outputs[0].ext == "webp"


async def test_ratio_name_can_switch_a_width_height_model_to_aspect_ratio(rig: Rig) -> None:
    job = make_job(field_names={"generation_ratio": "aspect_ratio"})
    await rig.run(job)
    body = rig.fake.submissions[0]["body"]
    assert body["aspect_ratio"] == "16:9" and "width" not in body


def test_dimensions_are_about_one_megapixel_in_multiples_of_32() -> None:
    assert dimensions("1:1") == (1024, 1024)
    assert dimensions("9:16") == (768, 1376)
    for ratio in ("4:3", "3:2", "21:9", "9:21", "nonsense"):
        width, height = dimensions(ratio)
        assert width % 32 == 0 and height % 32 == 0
        assert 256 <= width <= 1440 and 256 <= height <= 1440


@pytest.mark.parametrize("outcome", ["Request Moderated", "Content Moderated"])
async def test_moderated_tasks_are_content_policy_violations(rig: Rig, outcome: str) -> None:
    rig.fake.outcome = outcome
    error = await rig.fails(make_job())
    assert error.error == "bse_content_policy_violation"
    assert error.retryable is False and error.stops_chain
    assert outcome in error.message and "Derivative Works" in error.message


async def test_an_invalid_request_is_invalid_input(rig: Rig) -> None:
    error = await rig.fails(make_job(params={"prompt": None}))
    assert (error.error, error.retryable, error.http_status) == ("bse_invalid_input", False, 422)


async def test_a_lost_task_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.outcome = "Task not found"
    error = await rig.fails(make_job())
    assert error.error == "bse_provider_error" and error.retryable is True


async def test_a_429_on_a_later_task_is_waited_out_so_no_task_is_orphaned(rig: Rig) -> None:
    rig.fake.rate_limit_after, rig.fake.rate_limit_submit, rig.fake.retry_after = 1, 2, 0
    result = await rig.run(make_job(output_number=3))
    assert len(rig.fake.submissions) == 5  # accepted, 429, 429, accepted, accepted
    assert len(rig.fake.tasks) == 3 and len(result.outputs) == 3


async def test_without_a_polling_url_the_configured_host_is_polled(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    prediction_id = await rig.adapter().submit(job)
    assert "@" not in prediction_id
    await rig.adapter().wait(job, prediction_id)
    assert set(rig.fake.polls) == {"api.bfl.test"}


async def test_the_key_is_never_sent_to_a_foreign_polling_host(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    task_id = await rig.adapter().submit(job)
    async with asyncio.timeout(5):
        await rig.adapter().wait(job, f"{task_id}@collector.example")
    assert rig.network.requests_to("collector.example") == []
    assert set(rig.fake.polls) == {"api.bfl.test"}


async def test_each_task_is_polled_at_its_polling_url_exactly_as_given(rig: Rig) -> None:
    # BFL: poll the returned polling_url as given, never a URL rebuilt from the id
    # (https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use). The fake
    # knows a task only at that URL, so a rebuilt /v1/get_result?id=... finds nothing.
    rig.fake.polling_url_template = "https://{host}/v1/get_result?id={id}&cluster=us1-b"
    job = make_job(output_number=2)
    prediction_id = await rig.adapter().submit(job)
    result = await rig.adapter().wait(job, prediction_id)

    handed_out = {task.polling_url for task in rig.fake.tasks.values()}
    assert len(handed_out) == 2 and set(rig.fake.poll_urls) == handed_out
    assert len(result.outputs) == 2
    assert prediction_id.count("&cluster=us1-b") == 2  # an unusual URL is kept whole


async def test_a_comma_in_a_polling_url_does_not_split_the_task(rig: Rig) -> None:
    rig.fake.polling_url_template = "https://{host}/v1/get_result?id={id}&shards=a,b"
    job = make_job(output_number=2)
    prediction_id = await rig.adapter().submit(job)
    assert prediction_id.count(",") == 1
    result = await rig.adapter().wait(job, prediction_id)
    assert len(result.outputs) == 2
    assert all("shards=a%2Cb" in url for url in rig.fake.poll_urls)


async def test_an_id_written_with_only_the_polling_host_is_still_polled_there(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    task_id = await rig.adapter().submit(job)
    await rig.adapter().wait(job, f"{task_id}@api.us1.bfl.test")
    assert set(rig.fake.polls) == {"api.us1.bfl.test"}


async def test_the_key_is_never_sent_to_a_foreign_polling_url(rig: Rig) -> None:
    rig.fake.omit_polling_url = True
    job = make_job()
    task_id = await rig.adapter().submit(job)
    async with asyncio.timeout(5):
        await rig.adapter().wait(job, f"{task_id}@https://collector.example/v1/get_result?id={task_id}")
    assert rig.network.requests_to("collector.example") == []
    assert set(rig.fake.polls) == {"api.bfl.test"}
