"""The self-hosted adapter's protocol quirks (OpenAI-compatible images and ComfyUI); the
behaviours every adapter shares are in test_provider_contract."""

from __future__ import annotations

from genplane.providers.base import InputImage
from genplane.providers.comfyui import DEFAULT_WORKFLOW, fill, placeholders
from genplane.providers.selfhosted import SYNC_PREFIX, SelfHostedAdapter, dimensions
from tests import provider_contract as contract
from tests.fakes.media import image_bytes, png_bytes
from tests.fakes.selfhosted import FakeSelfHosted
from tests.provider_contract import pil_format, raises

Rig = contract.Rig[FakeSelfHosted, SelfHostedAdapter]
rig = contract.rig_fixture(contract.SELFHOSTED_OPENAI)
job = contract.SELFHOSTED.job


def comfy(rig: Rig) -> SelfHostedAdapter:
    return rig.adapter(selfhosted_protocol="comfyui")


def test_dimensions_follow_the_ratio_at_about_a_megapixel() -> None:
    assert dimensions(job(ratio="1:1")) == (1024, 1024)
    assert dimensions(job(ratio="16:9")) == (1344, 768)
    assert dimensions(job(ratio="9:16")) == (768, 1344)
    assert dimensions(job(ratio="21:9")) == (1536, 640)
    assert dimensions(job(value_maps={"generation_ratio": {"16:9": "1280x720"}})) == (1280, 720)


def test_placeholders_keep_types_whole_and_interpolate_inside_text() -> None:
    graph = {
        "1": {"inputs": {"seed": "{{seed}}", "text": "photo of {{ prompt }}, {{style}}", "link": ["2", 0]}}
    }
    assert placeholders(graph) == {"seed", "prompt", "style"}
    filled = fill(graph, {"seed": 7, "prompt": "a cat", "style": "noir"})
    assert filled == {"1": {"inputs": {"seed": 7, "text": "photo of a cat, noir", "link": ["2", 0]}}}
    assert graph["1"]["inputs"]["seed"] == "{{seed}}"  # the catalogue's graph is not modified
    expected = {"prompt", "negative_prompt", "seed", "width", "height", "batch_size"}
    assert placeholders(DEFAULT_WORKFLOW) >= expected


# -- OpenAI-compatible ----------------------------------------------------------------


async def test_openai_protocol_maps_the_job(rig: Rig) -> None:
    one = job(output_number=2, output_format="jpg",
              specific={"generation_seed": 9, "generation_negative_prompt": "blur"}, params={"steps": 30})
    adapter = rig.adapter()
    prediction_id = await adapter.submit(one)
    result = await adapter.wait(one, prediction_id)

    [sent] = rig.fake.requests
    assert sent["path"] == "/v1/images/generations"
    assert sent["headers"]["authorization"] == "Bearer box-key"
    assert sent["json"] == {
        "model": "sdxl",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "1344x768",
        "seed": 9,
        "negative_prompt": "blur",
        "response_format": "b64_json",
        "steps": 30,
    }
    assert prediction_id.startswith(SYNC_PREFIX)
    # The box answered PNG; outputs are typed by content (the worker converts to jpg).
    assert [(o.ext, o.content_type) for o in result.outputs] == [("png", "image/png")] * 2
    assert all(pil_format(o.data) == "PNG" for o in result.outputs)


async def test_openai_protocol_catalogue_overrides(rig: Rig) -> None:
    one = job(specific={"generation_negative_prompt": "blur"},
              field_names={"generation_negative_prompt": "", "generation_output_number": "batch_size"},
              value_maps={"generation_ratio": {"16:9": "1024x576"}})
    rig.fake.key = None  # a box without a proxy in front: no key, none sent
    await rig.run(one, rig.adapter(selfhosted_api_key=None))
    sent = rig.fake.requests[0]
    assert "authorization" not in sent["headers"]
    assert (sent["json"]["size"], sent["json"]["batch_size"]) == ("1024x576", 1)
    assert "negative_prompt" not in sent["json"] and "n" not in sent["json"]


async def test_openai_protocol_input_images_go_to_edits(rig: Rig) -> None:
    first, second = png_bytes(color=(5, 5, 5)), image_bytes("jpg")
    one = job(
        inputs=[
            InputImage("https://example.com/a.png", first, "image/png"),
            InputImage("https://example.com/b.jpg", second, "image/jpeg"),
        ]
    )
    await rig.run(one)
    [sent] = rig.fake.requests
    assert sent["path"] == "/v1/images/edits"
    assert sent["form"]["size"] == "1344x768" and sent["form"]["response_format"] == "b64_json"
    assert [(f["name"], f["content_type"], f["data"]) for f in sent["files"]] == [
        ("image[]", "image/png", first),
        ("image[]", "image/jpeg", second),
    ]


async def test_openai_protocol_urls_on_the_box_are_fetched_here(rig: Rig) -> None:
    rig.fake.answer_urls = True
    result = await rig.run(job(output_format="webp"))
    [output] = result.outputs
    assert output.url is None and pil_format(output.data) == "PNG"  # as the box sent it

    rig.fake.url_ttl = -1.0  # already expired when fetched
    err = await rig.fails(job())
    assert (err.http_status, err.retryable) == (403, True)


# -- ComfyUI ----------------------------------------------------------------------------


async def test_comfyui_fills_the_default_workflow_polls_and_fetches(rig: Rig) -> None:
    one = job(output_number=2, output_format="jpg",
              specific={"generation_seed": 1234, "generation_negative_prompt": "blur"},
              params={"checkpoint": "juggernautXL_v9.safetensors", "steps": 30})
    adapter = comfy(rig)
    prompt_id = await adapter.submit(one)
    result = await adapter.wait(one, prompt_id)

    [sent] = [r for r in rig.fake.requests if r["path"] == "/prompt"]
    assert sent["json"]["client_id"] == "genplane-gen_1"
    graph = sent["json"]["prompt"]
    assert graph["4"]["inputs"] == {"ckpt_name": "juggernautXL_v9.safetensors"}
    assert graph["5"]["inputs"] == {"width": 1344, "height": 768, "batch_size": 2}
    assert graph["6"]["inputs"]["text"] == "a lighthouse at dusk"
    assert graph["7"]["inputs"]["text"] == "blur"
    sampler = graph["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (
        1234,
        30,
        7.0,
        "dpmpp_2m",
    )
    assert graph["9"]["inputs"]["filename_prefix"] == "genplane/gen_1"

    views = [r["query"] for r in rig.fake.requests if r["path"] == "/view"]
    assert [(v["subfolder"], v["type"]) for v in views] == [
        ("genplane", "output")
    ] * 2  # not the temp preview
    assert [(o.ext, pil_format(o.data)) for o in result.outputs] == [("png", "PNG")] * 2  # SaveImage
    assert result.predict_time == 4.5


async def test_comfyui_draws_a_random_seed_when_none_is_given(rig: Rig) -> None:
    adapter = comfy(rig)
    await adapter.submit(job())
    await adapter.submit(job())
    seeds = [r["json"]["prompt"]["3"]["inputs"]["seed"] for r in rig.fake.requests if r["path"] == "/prompt"]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]


async def test_comfyui_custom_workflow_with_input_image(rig: Rig) -> None:
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{checkpoint}}"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "{{input_image}}"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}, {{style}}", "clip": ["1", 1]}},
        "5": {"class_type": "SaveImage", "inputs": {"filename_prefix": "img2img/out", "images": ["3", 0]}},
    }
    picture = png_bytes(color=(1, 1, 1))
    one = job(params={"workflow": workflow, "style": "watercolour"},
              inputs=[InputImage("https://example.com/a.png", picture, "image/png")])
    result = await rig.run(one, comfy(rig))

    upload, prompt = [r for r in rig.fake.requests if r["path"] in ("/upload/image", "/prompt")]
    assert upload["path"] == "/upload/image" and upload["form"]["type"] == "input"
    assert upload["files"][0]["data"] == picture
    graph = prompt["json"]["prompt"]
    assert graph["2"]["inputs"]["image"] == upload["files"][0]["filename"]
    assert graph["4"]["inputs"]["text"] == "a lighthouse at dusk, watercolour"
    assert len(result.outputs) == 1


async def test_comfyui_workflow_mismatches_are_configuration_errors(rig: Rig) -> None:
    workflow = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{lora_name}}"}}}
    err = await rig.fails(job(params={"workflow": workflow}), comfy(rig))
    assert (err.error, err.retryable) == ("bse_model_not_configured", False)
    assert "lora_name" in err.message

    one = job(inputs=[InputImage("https://example.com/a.png", png_bytes(), "image/png")])
    err = await rig.fails(one, comfy(rig))
    assert (err.error, err.retryable) == ("bse_unsupported_parameter", False)
    assert rig.fake.requests == []  # nothing was sent either time


async def test_comfyui_validation_failure_names_the_node(rig: Rig) -> None:
    err = await rig.fails(job(params={"checkpoint": "missing.safetensors"}), comfy(rig))
    assert (err.error, err.retryable, err.http_status) == ("bse_model_not_configured", False, 400)
    assert "CheckpointLoaderSimple" in err.message and "missing.safetensors" in err.message


async def test_comfyui_cancel_interrupts_the_running_prompt(rig: Rig) -> None:
    rig.fake.running_polls = 100
    adapter = comfy(rig)
    prompt_id = await adapter.submit(job())
    assert await adapter.cancel(prompt_id) is True
    assert rig.fake.interrupts == [{"prompt_id": prompt_id}] and rig.fake.deletes == []
    err = await raises(adapter.wait(job(), prompt_id))
    assert "canceled upstream" in err.message


async def test_comfyui_cancel_after_the_end_does_nothing(rig: Rig) -> None:
    adapter = comfy(rig)
    prompt_id = await adapter.submit(job())
    await adapter.wait(job(), prompt_id)
    assert await adapter.cancel(prompt_id) is False
    assert rig.fake.interrupts == [] and rig.fake.deletes == []


async def test_comfyui_unknown_prompt_is_lost(rig: Rig) -> None:
    err = await raises(comfy(rig).wait(job(), "4b1c0f3e-0000-4000-8000-000000000000"))
    assert "canceled upstream" in err.message
    assert (await raises(comfy(rig).wait(job(), "../queue"))).retryable is False
