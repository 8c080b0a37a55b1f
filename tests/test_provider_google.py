"""Google's protocol quirks (Imagen, Gemini image models, Veo); the behaviours every adapter
shares are in test_provider_contract."""

from __future__ import annotations

import base64

import httpx
import pytest

from genplane.providers.base import InputImage, ProviderError, ProviderJob
from genplane.providers.google import SYNC_PREFIX, GoogleAdapter, protocol
from tests import provider_contract as contract
from tests.fakes.google import FakeGoogle, video_bytes
from tests.fakes.media import image_bytes, png_bytes
from tests.provider_contract import pil_format, raises

Rig = contract.Rig[FakeGoogle, GoogleAdapter]
rig = contract.rig_fixture(contract.GOOGLE)
KEY = contract.GOOGLE.key
imagen_job = contract.GOOGLE_IMAGEN.job
veo_job = contract.GOOGLE.job


def gemini_job(**overrides: object) -> ProviderJob:
    defaults = {"model_identifier": "google/nano-banana", "native_model_id": "gemini-2.5-flash-image",
                "output_format": "png"}
    return imagen_job(**{**defaults, **overrides})


# -- protocol choice ----------------------------------------------------------------


def test_protocol_follows_the_model_id_unless_the_catalogue_says_otherwise() -> None:
    assert protocol(imagen_job()) == "predict"
    assert protocol(gemini_job(native_model_id="models/gemini-3-pro-image-preview")) == "generateContent"
    assert protocol(veo_job()) == "predictLongRunning"
    assert protocol(imagen_job(native_model_id="my-tuned-model", params={"api": "predict"})) == "predict"
    with pytest.raises(ProviderError) as caught:
        protocol(imagen_job(params={"api": "streamGenerateContent"}))
    assert (caught.value.error, caught.value.retryable) == ("bse_model_not_configured", False)


# -- Imagen -------------------------------------------------------------------------


async def test_imagen_maps_the_job_and_decodes_predictions(rig: Rig) -> None:
    job = imagen_job(output_number=2, params={"personGeneration": "allow_adult"})
    adapter = rig.adapter()
    prediction_id = await adapter.submit(job)
    result = await adapter.wait(job, prediction_id)

    [sent] = rig.fake.requests
    assert sent["path"] == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert sent["headers"]["x-goog-api-key"] == KEY
    assert sent["json"] == {
        "instances": [{"prompt": "a lighthouse at dusk"}],
        "parameters": {
            "includeRaiReason": True,
            "sampleCount": 2,
            "aspectRatio": "16:9",
            "outputOptions": {"mimeType": "image/jpeg"},
            "personGeneration": "allow_adult",
        },
    }
    assert prediction_id.startswith(SYNC_PREFIX)
    assert [(o.ext, o.content_type, o.url) for o in result.outputs] == [("jpg", "image/jpeg", None)] * 2
    assert all(pil_format(o.data) == "JPEG" for o in result.outputs)


async def test_imagen_splits_more_than_four_outputs_into_calls(rig: Rig) -> None:
    result = await rig.run(imagen_job(output_number=6, output_format="png"))
    assert sorted(r["json"]["parameters"]["sampleCount"] for r in rig.fake.requests) == [2, 4]
    assert len(result.outputs) == 6 and all(o.ext == "png" for o in result.outputs)


async def test_imagen_webp_is_left_to_the_worker_since_imagen_cannot_write_it(rig: Rig) -> None:
    """Imagen has no WebP; the adapter passes its PNG on, typed by content (the worker converts)."""
    result = await rig.run(imagen_job(output_format="webp"))
    assert "outputOptions" not in rig.fake.requests[0]["json"]["parameters"]
    assert (result.outputs[0].ext, result.outputs[0].content_type) == ("png", "image/png")
    assert pil_format(result.outputs[0].data) == "PNG"


async def test_imagen_catalogue_overrides(rig: Rig) -> None:
    job = imagen_job(resolution="2k", field_names={"generation_negative_prompt": "negativePrompt"},
                     value_maps={"generation_ratio": {"16:9": "4:3"}, "generation_resolution": {"2k": "2K"}},
                     specific={"generation_negative_prompt": "fog", "generation_seed": 5},
                     params={"outputOptions": {"compressionQuality": 80}})
    await rig.run(job)
    parameters = rig.fake.requests[0]["json"]["parameters"]
    assert parameters["aspectRatio"] == "4:3"
    assert parameters["sampleImageSize"] == "2K"
    assert parameters["negativePrompt"] == "fog"
    assert "seed" not in parameters  # the Gemini API refuses Imagen seeds: only when the catalogue names it
    assert parameters["outputOptions"] == {"mimeType": "image/jpeg", "compressionQuality": 80}


async def test_imagen_filtered_images_are_content_policy_violations(rig: Rig) -> None:
    rig.fake.moderate_image = True
    err = await rig.fails(imagen_job())
    assert err.error == "bse_content_policy_violation" and "usage guidelines" in err.message


async def test_imagen_takes_no_input_images(rig: Rig) -> None:
    job = imagen_job(inputs=[InputImage("https://example.com/a.png", png_bytes(), "image/png")])
    err = await rig.fails(job)
    assert (err.error, err.retryable) == ("bse_unsupported_parameter", False)
    assert rig.fake.requests == []


# -- Gemini image models ------------------------------------------------------------


async def test_gemini_sends_text_and_images_and_skips_thought_drafts(rig: Rig) -> None:
    first, second = png_bytes(color=(9, 9, 9)), image_bytes("webp")
    job = gemini_job(
        output_number=2,
        ratio="21:9",
        specific={"generation_seed": 41},
        inputs=[
            InputImage("https://example.com/a.png", first, "image/png"),
            InputImage("https://example.com/b.webp", second, "image/webp"),
        ],
    )
    result = await rig.run(job)

    assert len(rig.fake.requests) == 2  # one picture per call
    bodies = sorted((r["json"] for r in rig.fake.requests), key=lambda b: b["generationConfig"]["seed"])
    assert rig.fake.requests[0]["path"] == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert bodies[0] == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "a lighthouse at dusk"},
                    {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(first).decode()}},
                    {"inlineData": {"mimeType": "image/webp", "data": base64.b64encode(second).decode()}},
                ],
            }
        ],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "21:9"},
            "seed": 41,
        },
    }
    assert bodies[1]["generationConfig"]["seed"] == 42
    # The thought draft is a JPEG; the answer is the PNG.
    assert [(o.ext, pil_format(o.data)) for o in result.outputs] == [("png", "PNG")] * 2


async def test_gemini_output_is_typed_by_its_content(rig: Rig) -> None:
    """Gemini answers PNG whatever was asked; the adapter says so (the worker converts)."""
    result = await rig.run(gemini_job(output_format="jpg"))
    assert (result.outputs[0].ext, pil_format(result.outputs[0].data)) == ("png", "PNG")


async def test_gemini_params_merge_into_config_and_top_level(rig: Rig) -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    job = gemini_job(
        native_model_id="models/gemini-3-pro-image-preview",
        resolution="4K",
        params={
            "imageConfig": {"personGeneration": "ALLOW_ADULT"},
            "responseModalities": ["IMAGE"],
            "safetySettings": safety,
        },
    )
    await rig.run(job)
    sent = rig.fake.requests[0]
    assert sent["path"] == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert sent["json"]["safetySettings"] == safety
    assert sent["json"]["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "4K", "personGeneration": "ALLOW_ADULT"},
    }


async def test_gemini_unknown_config_field_is_invalid_input(rig: Rig) -> None:
    err = await rig.fails(gemini_job(params={"sampleCount": 2}))
    assert (err.error, err.retryable, err.http_status) == ("bse_invalid_input", False, 400)


async def test_gemini_refusals(rig: Rig) -> None:
    rig.fake.moderate_prompt = True
    err = await rig.fails(gemini_job())
    assert (err.error, err.retryable) == ("bse_content_policy_violation", False)
    assert "PROHIBITED_CONTENT" in err.message

    rig.fake.moderate_prompt, rig.fake.moderate_image = False, True
    err = await rig.fails(gemini_job())
    assert err.error == "bse_content_policy_violation" and "IMAGE_SAFETY" in err.message

    rig.fake.moderate_image, rig.fake.text_only = False, True
    err = await rig.fails(gemini_job())
    assert (err.error, err.retryable) == ("bse_provider_error", True)
    assert "poem" in err.message


# -- Veo ----------------------------------------------------------------------------


async def test_veo_maps_the_job_polls_and_downloads_with_the_key(rig: Rig) -> None:
    first, last = png_bytes(color=(1, 2, 3)), image_bytes("jpg")
    job = veo_job(ratio="9:16", specific={"generation_negative_prompt": "rain", "generation_seed": 7},
                  generate_audio=True,
                  inputs=[InputImage("https://example.com/first.png", first, "image/png")],
                  last_frame=InputImage("https://example.com/last.jpg", last, "image/jpeg"),
                  params={"personGeneration": "allow_adult"})
    adapter = rig.adapter()
    name = await adapter.submit(job)
    assert name.startswith("models/veo-3.0-generate-001/operations/")
    result = await adapter.wait(job, name)

    [sent] = rig.fake.requests
    assert sent["path"] == "/v1beta/models/veo-3.0-generate-001:predictLongRunning"
    assert sent["headers"]["x-goog-api-key"] == KEY
    assert sent["json"] == {
        "instances": [
            {
                "prompt": "a lighthouse at dusk",
                "image": {"bytesBase64Encoded": base64.b64encode(first).decode(), "mimeType": "image/png"},
                "lastFrame": {
                    "bytesBase64Encoded": base64.b64encode(last).decode(),
                    "mimeType": "image/jpeg",
                },
            }
        ],
        "parameters": {
            "aspectRatio": "9:16",
            "durationSeconds": 8,
            "resolution": "1080p",
            "negativePrompt": "rain",
            "personGeneration": "allow_adult",
        },
    }
    [download] = rig.fake.downloads
    assert download["headers"]["x-goog-api-key"] == KEY and download["query"] == {"alt": "media"}
    [output] = result.outputs
    assert (output.ext, output.content_type, output.url) == ("mp4", "video/mp4", None)
    assert output.data == video_bytes()


async def test_veo_seed_and_audio_only_when_the_catalogue_names_them(rig: Rig) -> None:
    job = veo_job(
        generate_audio=False,
        specific={"generation_seed": 7},
        field_names={
            "generation_seed": "seed",
            "generation_generate_audio": "generateAudio",
            "generation_duration": "durationSeconds",
        },
        value_maps={"generation_duration": {"8": 6}},
    )
    await rig.run(job)
    parameters = rig.fake.requests[0]["json"]["parameters"]
    assert (parameters["seed"], parameters["generateAudio"], parameters["durationSeconds"]) == (7, False, 6)


async def test_veo_redirected_download_goes_to_the_worker_without_the_key(rig: Rig) -> None:
    rig.fake.download_redirect = True
    [output] = (await rig.run(veo_job())).outputs
    assert output.data is None and output.url is not None
    assert httpx.URL(output.url).host == rig.fake.storage_host
    assert rig.network.requests_to(rig.fake.storage_host) == []  # the adapter did not follow it
    assert (await rig.client.get(output.url)).content == video_bytes()
    rig.fake.download_ttl = -1.0  # signed URLs expire
    [output] = (await rig.run(veo_job())).outputs
    assert (await rig.client.get(output.url or "")).status_code == 403


async def test_veo_flaky_download_is_retried(rig: Rig) -> None:
    rig.fake.download_errors = 2
    result = await rig.run(veo_job())
    assert result.outputs[0].data == video_bytes()
    assert len(rig.fake.downloads) == 3


@pytest.mark.parametrize(
    ("outcome", "code", "retryable", "words"),
    [
        ("policy_error", "bse_content_policy_violation", False, "usage guidelines"),
        ("cancelled", "bse_provider_error", True, "canceled upstream"),
    ],
)
async def test_veo_outcomes(rig: Rig, outcome: str, code: str, retryable: bool, words: str) -> None:
    rig.fake.video_outcome = outcome
    err = await rig.fails(veo_job())
    assert (err.error, err.retryable) == (code, retryable)
    assert words in err.message


async def test_veo_unknown_or_malformed_operation(rig: Rig) -> None:
    err = await raises(rig.adapter().wait(veo_job(), "models/veo-3.0-generate-001/operations/nope"))
    assert err.http_status == 404
    err = await raises(rig.adapter().wait(veo_job(), "models/../../admin"))
    assert err.retryable is False
    assert rig.fake.polls == 1  # the malformed name was never sent
