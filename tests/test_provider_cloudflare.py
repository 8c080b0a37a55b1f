"""Cloudflare Workers AI's protocol quirks; the behaviours every adapter shares are in
test_provider_contract."""

from __future__ import annotations

import base64

from genplane.providers.cloudflare import CloudflareAdapter, dimensions
from tests import provider_contract as contract
from tests.fakes.cloudflare import FakeCloudflare
from tests.provider_contract import picture, raises

Rig = contract.Rig[FakeCloudflare, CloudflareAdapter]
rig = contract.rig_fixture(contract.CLOUDFLARE)
make_job = contract.CLOUDFLARE.job
TOKEN = contract.CLOUDFLARE.key
ACCOUNT = contract.CLOUDFLARE.settings_values["cloudflare_account_id"]
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
SDXL = "@cf/bytedance/stable-diffusion-xl-lightning"


async def test_flux_schnell_gets_only_what_its_schema_allows_and_base64_becomes_bytes(rig: Rig) -> None:
    job = make_job(specific={"generation_seed": 5, "generation_negative_prompt": "blur",
                             "generation_num_inference_steps": 6})
    result = await rig.run(job)

    [call] = rig.fake.calls
    assert call.path == f"/client/v4/accounts/{ACCOUNT}/ai/run/{SCHNELL}"
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.headers["content-type"] == "application/json"
    # No size, seed or negative prompt: schnell's schema refuses unknown properties.
    assert call.fields == {"prompt": "a red fox in the snow", "steps": 6}
    [output] = result.outputs
    assert (output.ext, output.content_type, output.url) == ("jpg", "image/jpeg", None)
    assert output.data is not None and output.data[:3] == b"\xff\xd8\xff"


async def test_sdxl_answers_raw_png_and_n_outputs_are_n_calls(rig: Rig) -> None:
    source = picture(color=(7, 8, 9))
    job = make_job(
        native_model_id=SDXL,
        ratio="9:16",
        output_number=3,
        specific={"generation_seed": 42, "generation_negative_prompt": "blur",
                  "generation_guidance_scale": 7.5, "generation_num_inference_steps": 8},
        inputs=[source],
    )
    result = await rig.run(job)

    assert len(rig.fake.calls) == 3
    assert sorted(c.fields["seed"] for c in rig.fake.calls) == [42, 43, 44]
    fields = next(c.fields for c in rig.fake.calls if c.fields["seed"] == 42)
    assert fields == {
        "prompt": "a red fox in the snow",
        "width": 768,
        "height": 1376,
        "seed": 42,
        "negative_prompt": "blur",
        "guidance": 7.5,
        "num_steps": 8,
        "image_b64": base64.b64encode(source.data).decode(),
    }
    assert [(o.ext, o.content_type) for o in result.outputs] == [("png", "image/png")] * 3
    assert all(o.data and o.data.startswith(b"\x89PNG") for o in result.outputs)


async def test_phoenix_answers_raw_jpeg(rig: Rig) -> None:
    result = await rig.run(make_job(native_model_id="@cf/leonardo/phoenix-1.0", ratio="1:1"))
    assert (rig.fake.calls[0].fields["width"], rig.fake.calls[0].fields["height"]) == (1024, 1024)
    assert (result.outputs[0].ext, result.outputs[0].content_type) == ("jpg", "image/jpeg")


async def test_flux_2_is_multipart_with_reference_images_as_binary_parts(rig: Rig) -> None:
    first, second = picture(), picture("https://example.com/b.png", (4, 5, 6))
    job = make_job(native_model_id="@cf/black-forest-labs/flux-2-dev", ratio="1:1",
                   specific={"generation_seed": 9, "generation_num_inference_steps": 25},
                   inputs=[first, second])
    result = await rig.run(job)

    [call] = rig.fake.calls
    assert call.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert call.fields == {"prompt": "a red fox in the snow", "width": "1024", "height": "1024",
                           "seed": "9", "steps": "25"}
    assert {name: (ctype, data) for name, (_, ctype, data) in call.files.items()} == {
        "input_image_0": ("image/png", first.data),
        "input_image_1": ("image/png", second.data),
    }
    assert result.outputs[0].ext == "jpg"


async def test_catalogue_overrides_names_values_and_params(rig: Rig) -> None:
    job = make_job(native_model_id="@cf/leonardo/lucid-origin", ratio="21:9",
                   specific={"generation_seed": 3, "generation_num_inference_steps": 30},
                   field_names={"generation_num_inference_steps": "steps", "generation_seed": ""},
                   value_maps={"generation_ratio": {"21:9": "2048x880"}}, params={"guidance": 3.5})
    await rig.run(job)
    assert rig.fake.calls[0].fields == {
        "prompt": "a red fox in the snow", "width": 2048, "height": 880, "steps": 30, "guidance": 3.5,
    }  # "" switched the seed off


def test_dimensions_are_about_one_megapixel_in_multiples_of_32() -> None:
    assert dimensions("1:1") == (1024, 1024)
    assert dimensions("16:9") == (1376, 768)
    for ratio in ("4:3", "3:2", "21:9", "9:21", "nonsense"):
        width, height = dimensions(ratio)
        assert width % 32 == 0 and height % 32 == 0
        assert 256 <= width <= 1920 and 256 <= height <= 1920


async def test_a_refused_body_is_invalid_input(rig: Rig) -> None:
    error = await rig.fails(make_job(params={"seed": 1}))  # schnell has no seed
    assert (error.error, error.retryable) == ("bse_invalid_input", False)
    assert "additional properties" in error.message


async def test_an_unknown_model_does_not_stop_the_chain(rig: Rig) -> None:
    error = await rig.fails(make_job(native_model_id="@cf/nobody/no-such-model"))
    assert (error.error, error.retryable, error.stops_chain) == ("bse_provider_unavailable", True, False)


async def test_a_failed_envelope_is_a_retryable_provider_error(rig: Rig) -> None:
    rig.fake.failed_envelope = True  # HTTP 200 with success: false
    error = await rig.fails(make_job())
    assert (error.error, error.retryable) == ("bse_provider_error", True)


async def test_one_failed_call_fails_the_job_and_holds_nothing(rig: Rig) -> None:
    rig.fake.fail = 1
    adapter = rig.adapter()
    await raises(adapter.submit(make_job(output_number=3)))
    assert adapter.held._results == {}


async def test_calls_for_several_outputs_run_concurrently(rig: Rig) -> None:
    rig.fake.delay = 0.05
    result = await rig.run(make_job(output_number=4))
    assert len(result.outputs) == 4
    assert rig.fake.most_in_flight == 4  # all four calls were open at once
