"""Every packaged catalogue binding, end to end: the real app and adapters against the fakes.

For each (model, provider) pair of the packaged catalogue (``local`` aside) a generation
is created over HTTP with that provider alone in the chain and the model's default
choices (first ratio, first output format, one output; first duration and resolution
for video; one input image where the model takes one). It must succeed on that
provider, store files that decode as the requested format, and the fake must have been
asked for the binding's native model id, wherever that provider's protocol carries it.

One app per provider keeps this fast; its models run one after another, and every
failing model is reported with the record's error.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Route

from genplane.catalog.loader import ModelEntry, ProviderBinding, load_catalog
from tests.conftest import Caller
from tests.fakes import alibabacloud as fake_alibabacloud
from tests.fakes import byteplus as fake_byteplus
from tests.fakes import cloudflare as fake_cloudflare
from tests.fakes import fal as fake_fal
from tests.fakes import replicate as fake_replicate
from tests.fakes import runway as fake_runway
from tests.fakes.bfl import FakeBfl
from tests.fakes.google import FakeGoogle
from tests.fakes.media import FileHost, png_bytes
from tests.fakes.network import FakeNetwork
from tests.fakes.openai import FakeOpenAI
from tests.fakes.selfhosted import FakeSelfHosted

CATALOG = load_catalog()
PROVIDERS = sorted({p for m in CATALOG.models.values() for p in m.providers} - {"local"})
IMAGE_HOST = "images.test"
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass
class FakeRig:
    """One provider's fake: what to install, the settings reaching it, and what it was asked."""

    install: Callable[[FakeNetwork], None]
    settings: dict[str, Any]
    cdn_hosts: list[str]
    # The model ids named by the generation requests the fake has received, in order.
    models_seen: Callable[[], list[str]]
    # Set the kind of output the fake makes (for fakes whose output does not follow the request).
    media: Callable[[str], None] = lambda model_type: None
    # Settings that depend on the binding (the self-hosted protocol).
    binding_settings: Callable[[list[ProviderBinding]], dict[str, Any]] = lambda bindings: {}
    # The id this provider is expected to name for a binding.
    expected_id: Callable[[ProviderBinding], str] = lambda binding: binding.model_id


def replicate_rig() -> FakeRig:
    fake = fake_replicate.FakeReplicate()

    def seen() -> list[str]:
        names = []
        for call in fake.created:
            path = str(call["path"])
            if path.startswith("/v1/models/"):
                owner, name = path.removeprefix("/v1/models/").split("/")[:2]
                names.append(f"{unquote(owner)}/{unquote(name)}")
            else:
                names.append(str(call["body"].get("version")))
        return names

    def media(model_type: str) -> None:
        fake.video = model_type == "video"

    return FakeRig(
        fake.install,
        {"replicate_api_token": fake.token},
        [fake_replicate.CDN_HOST],
        seen,
        media,
    )


def fal_rig() -> FakeRig:
    """The fake lists accepted requests only; the network sees refused ones too."""
    fake = fake_fal.FakeFal()
    networks: list[FakeNetwork] = []

    def install(network: FakeNetwork) -> None:
        fake.install(network)
        networks.append(network)

    def seen() -> list[str]:
        return [
            unquote(httpx.URL(r.url).path).lstrip("/")
            for network in networks
            for r in network.requests_to(fake_fal.QUEUE_HOST)
            if r.method == "POST"
        ]

    def media(model_type: str) -> None:
        fake.video = model_type == "video"

    return FakeRig(install, {"fal_key": fake.key}, [fake_fal.CDN_HOST], seen, media)


def bfl_rig() -> FakeRig:
    fake = FakeBfl()
    return FakeRig(
        fake.mount,
        {"bfl_api_key": fake.key, "bfl_base_url": f"https://{fake.host}"},
        [fake.cdn_host],
        lambda: [unquote(str(s["path"])).removeprefix("/v1/") for s in fake.submissions],
    )


def byteplus_rig() -> FakeRig:
    fake = fake_byteplus.FakeBytePlus()
    return FakeRig(
        fake.install,
        {"byteplus_api_key": fake.api_key, "byteplus_base_url": f"https://{fake_byteplus.HOST}"},
        [fake_byteplus.CDN_HOST],
        lambda: [str(c.body.get("model")) for c in fake.submits() if isinstance(c.body, dict)],
    )


def google_rig() -> FakeRig:
    fake = FakeGoogle()
    return FakeRig(
        fake.mount,
        {"google_api_key": fake.key, "google_base_url": f"https://{fake.host}"},
        [fake.storage_host],
        lambda: [str(r["model"]) for r in fake.requests],
    )


def openai_rig() -> FakeRig:
    fake = FakeOpenAI()

    def seen() -> list[str]:
        return [
            str((r.get("json") or r.get("form") or {}).get("model"))
            for r in fake.requests
            if r["method"] == "POST"
        ]

    return FakeRig(
        fake.mount,
        {"openai_api_key": fake.key, "openai_base_url": f"https://{fake.host}"},
        [fake.cdn_host],
        seen,
    )


def alibabacloud_rig() -> FakeRig:
    fake = fake_alibabacloud.FakeDashScope()
    return FakeRig(
        fake.install,
        {"alibabacloud_api_key": fake.api_key, "alibabacloud_base_url": f"https://{fake_alibabacloud.HOST}"},
        [fake_alibabacloud.CDN_HOST],
        lambda: [str(c.body.get("model")) for c in fake.submits() if isinstance(c.body, dict)],
    )


def cloudflare_rig() -> FakeRig:
    fake = fake_cloudflare.FakeCloudflare()
    return FakeRig(
        fake.mount,
        {
            "cloudflare_api_token": fake.token,
            "cloudflare_account_id": fake.account_id,
            "cloudflare_base_url": fake_cloudflare.BASE_URL,
        },
        [],
        lambda: [c.model for c in fake.calls],
    )


def runway_rig() -> FakeRig:
    fake = fake_runway.FakeRunway()
    return FakeRig(
        fake.mount,
        {"runway_api_key": fake.key, "runway_base_url": f"https://{fake_runway.HOST}"},
        [fake_runway.CDN_HOST],
        lambda: [str(c.body.get("model")) for c in fake.submissions()],
    )


def selfhosted_rig() -> FakeRig:
    """ComfyUI has no model field: the graph's checkpoint is the model it runs."""
    fake = FakeSelfHosted()

    def comfy(binding: ProviderBinding) -> bool:
        return "checkpoint" in binding.params or "workflow" in binding.params

    def protocol(bindings: list[ProviderBinding]) -> dict[str, Any]:
        kinds = {comfy(b) for b in bindings}
        assert len(kinds) == 1, "one app speaks one self-hosted protocol; split this test"
        return {"selfhosted_protocol": "comfyui" if kinds.pop() else "openai"}

    def seen() -> list[str]:
        names = []
        for r in fake.requests:
            if r.get("path") == "/prompt":
                graph = (r.get("json") or {}).get("prompt") or {}
                names += [
                    str(node["inputs"].get("ckpt_name"))
                    for node in graph.values()
                    if node.get("class_type") == "CheckpointLoaderSimple"
                ]
            elif str(r.get("path", "")).startswith("/v1/images/"):
                names.append(str((r.get("json") or r.get("form") or {}).get("model")))
        return names

    def expected(binding: ProviderBinding) -> str:
        return str(binding.params["checkpoint"]) if comfy(binding) else binding.model_id

    return FakeRig(
        fake.mount,
        {"selfhosted_base_url": f"http://{fake.host}"},
        [],
        seen,
        binding_settings=protocol,
        expected_id=expected,
    )


RIGS: dict[str, Callable[[], FakeRig]] = {
    "replicate": replicate_rig,
    "fal": fal_rig,
    "bfl": bfl_rig,
    "byteplus": byteplus_rig,
    "google": google_rig,
    "openai": openai_rig,
    "alibabacloud": alibabacloud_rig,
    "cloudflare": cloudflare_rig,
    "runway": runway_rig,
    "selfhosted": selfhosted_rig,
}


def input_image_host(network: FakeNetwork) -> str:
    """A public-looking image host serving one real PNG; returns its URL."""
    files = FileHost(f"https://{IMAGE_HOST}")
    url = files.publish(png_bytes(512, 512), "png")
    network.add(IMAGE_HOST, Starlette(routes=[Route("/files/{name}", files.serve)]))
    return url


def request_body(model: ModelEntry, provider: str, input_url: str) -> dict[str, Any]:
    schema = model.schema_
    body: dict[str, Any] = {
        "generation_prompt": "a red fox in fresh snow",
        "generation_ratio": schema.generation_ratio[0],
        "generation_output_format": schema.generation_output_format[0],
        "generation_output_number": 1,
        "generation_provider_order": provider,
    }
    if model.model_type == "video":
        body["generation_duration"] = (schema.generation_duration or [])[0]
        body["generation_resolution"] = (schema.generation_resolution or [])[0]
    if schema.generation_input_file:
        body["generation_input_file"] = [input_url]
    return body


async def check_outputs(caller: Caller, model: ModelEntry, record: dict[str, Any]) -> list[str]:
    """Problems with the stored files: each must decode as the requested format."""
    files = record.get("generation_output_file") or []
    if len(files) != 1:
        return [f"expected 1 output file, got {len(files)}"]
    problems = []
    for url in files:
        got = await caller.client.get(url)
        if got.status_code != 200:
            problems.append(f"GET {url} answered {got.status_code}")
            continue
        if model.model_type == "video":
            if got.content[4:8] != b"ftyp":
                problems.append(f"{url} is not an MP4 (starts {got.content[:12]!r})")
            continue
        wanted = PIL_FORMATS[model.schema_.generation_output_format[0]]
        try:
            with Image.open(io.BytesIO(got.content)) as image:
                image.load()
                if image.format != wanted:
                    problems.append(f"{url} is {image.format}, not {wanted}")
        except OSError as exc:
            problems.append(f"{url} does not decode: {exc}")
    return problems


def test_the_catalogue_is_broad() -> None:
    remote = [m for m in CATALOG.models.values() if set(m.providers) - {"local"}]
    assert len(remote) >= 30
    assert {m.model_type for m in remote} == {"image", "video"}
    assert set(PROVIDERS) <= set(RIGS), f"no fake for {sorted(set(PROVIDERS) - set(RIGS))}"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_binding_works_end_to_end(harness_factory: Callable[..., Any], provider: str) -> None:
    models = CATALOG.models_of_provider(provider)
    assert models
    rig = RIGS[provider]()
    network = FakeNetwork()
    rig.install(network)
    input_url = input_image_host(network)
    harness = await harness_factory(
        transport=network,
        provider_poll_interval_seconds=0.01,
        fetch_allow_hosts=[IMAGE_HOST, *rig.cdn_hosts],
        **rig.settings,
        **rig.binding_settings([m.providers[provider] for m in models]),
    )
    caller = await harness.caller(credits="1000")

    failures: list[str] = []
    started = time.monotonic()
    for model in models:
        binding = model.providers[provider]
        rig.media(model.model_type)
        asked_before = len(rig.models_seen())
        r = await caller.post(
            f"/v1/generate/{model.model_type}/{model.model_identifier}",
            json=request_body(model, provider, input_url),
        )
        if r.status_code != 200:
            failures.append(f"{model.model_identifier}: create answered {r.status_code}: {r.text[:300]}")
            continue
        record = await caller.wait(r.json()["data"]["generation_id"], timeout=15)
        problems = []
        if record["generation_status"] != "succeeded":
            problems.append(
                f"{record['generation_status']}: {record.get('generation_error_code')}: "
                f"{record.get('generation_error')} {record.get('provider_errors') or ''}"
            )
        else:
            if record["generation_provider_used"] != provider:
                problems.append(f"served by {record['generation_provider_used']}")
            problems += await check_outputs(caller, model, record)
        asked = rig.models_seen()[asked_before:]
        expected = rig.expected_id(binding)
        if binding.input_model_id and model.schema_.generation_input_file:
            expected = binding.input_model_id  # the request carried an input image
        if expected not in asked:
            problems.append(f"the fake was not asked for {expected!r} (asked for {asked})")
        if problems:
            failures.append(f"{model.model_identifier}: " + "; ".join(problems))
    elapsed = time.monotonic() - started
    assert not failures, f"{provider} ({len(models)} models, {elapsed:.1f}s):\n" + "\n".join(failures)
