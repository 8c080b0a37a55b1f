"""Catalogue truth: provider costs against prices, losses, retire_after, retired models,
``genplane catalog check``, and fakes that refuse ids their provider does not serve."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from genplane.catalog.costs import BindingCost, CostRequest, cost_of, dec
from genplane.catalog.loader import load_catalog, margins
from genplane.catalog.pricing import binding_refusal
from genplane.providers import bfl, cloudflare
from genplane.providers import fal as fal_adapter
from tests.conftest import Harness
from tests.fakes import alibabacloud, byteplus, fal, google, openai, replicate, runway, selfhosted
from tests.fakes import cloudflare as fake_cloudflare
from tests.fakes.bfl import FakeBfl

PROVIDER = "https://example.com/pricing"


def catalogue(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "catalog"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.yaml").write_text(text)
    return folder


def video_model(name: str, binding: str, price_720: float = 0.01) -> str:
    """A local video model priced 0.005/s at 480p and ``price_720``/s at 720p."""
    return f"""
models:
  - model_identifier: test/{name}
    model_type: video
    model_pricing: {{480p: 0.005, 720p: {price_720}}}
    schema:
      generation_ratio: ["16:9"]
      generation_output_format: [mp4]
      generation_output_number: 1
      generation_duration: [1, 2]
      generation_resolution: ["480p", "720p"]
    providers:
      local:
{binding}
"""


COSTLY_720 = f"""        model_id: preview-video
        cost:
          per_second: {{480p: 0.004, 720p: 0.02}}
          source: {PROVIDER}
          checked: 2026-12-02"""


# -- the loader ------------------------------------------------------------------------


def test_a_binding_costing_more_than_the_price_is_refused(tmp_path: Path) -> None:
    folder = catalogue(tmp_path, video_model("costly", COSTLY_720))
    with pytest.raises(ValueError, match=r"test/costly via local costs 0.04 but is priced 0.02 .*720p, 2 s"):
        load_catalog(folder)


def test_loss_ok_with_a_reason_admits_it_and_without_one_does_not(tmp_path: Path) -> None:
    with_reason = COSTLY_720 + "\n        loss_ok: true\n        loss_reason: launch offer on 720p"
    catalog = load_catalog(catalogue(tmp_path, video_model("offer", with_reason)))
    assert catalog.models["test/offer"].providers["local"].loss_ok
    without = COSTLY_720 + "\n        loss_ok: true"
    with pytest.raises(ValueError, match="loss_ok: true needs a loss_reason"):
        load_catalog(catalogue(tmp_path, video_model("offer", without)))


def test_a_provider_that_always_makes_audio_is_priced_at_the_audio_rate(tmp_path: Path) -> None:
    """The no-audio price must cover the audio rate the provider bills anyway."""
    text = """
models:
  - model_identifier: test/veo-like
    model_type: video
    model_pricing: {{720p: {silent}, 720p_audio: 0.4}}
    notes: Every video has an audio track.
    schema:
      generation_ratio: ["16:9"]
      generation_output_format: [mp4]
      generation_output_number: 1
      generation_duration: [8]
      generation_resolution: ["720p"]
      generation_generate_audio: true
    providers:
      local:
        model_id: preview-video
        cost:
          {{per_second: {{720p_audio: 0.4}}, always_audio: true, source: "https://example.com/p",
           checked: 2026-12-02}}
"""
    with pytest.raises(ValueError, match=r"costs 3.2 but is priced 1.6 .*720p, 8 s\)"):
        load_catalog(catalogue(tmp_path, text.format(silent=0.2)))
    assert load_catalog(catalogue(tmp_path, text.format(silent=0.4))).models["test/veo-like"]


def test_costs_in_the_providers_units_are_exact() -> None:
    tiles = BindingCost(per_tile=0.007, per_step=0.00013, steps=40, output_sizes={"16:9": "1376x768"},
                        source=PROVIDER, checked=dt.date(2026, 12, 2))
    # 2 x (6 x 0.007 + 40 x 0.00013)
    assert cost_of(tiles, CostRequest(ratio="16:9", outputs=2)) == Decimal("0.0944")
    mp = BindingCost(per_megapixel=0.03, per_extra_megapixel=0.015, output_sizes={"1:1": "1024x1024"},
                     source=PROVIDER, checked=dt.date(2026, 12, 2))
    assert cost_of(mp, CostRequest(ratio="1:1")) == Decimal("0.03")
    assert cost_of(mp, CostRequest(ratio="1:1", inputs=1)) == Decimal("0.045")  # the issue's edit figure
    tokens = BindingCost(per_million_tokens=1.8, fps=24, frame_pixels={"720p": 1280 * 720},
                         source=PROVIDER, checked=dt.date(2026, 12, 2))
    assert cost_of(tokens, CostRequest(ratio="16:9", duration=5, resolution="720p")) == Decimal("0.1944")


def test_the_catalogue_sizes_are_the_ones_the_adapters_send() -> None:
    """Tile and megapixel costs are computed from ``output_sizes``: they must not drift."""
    sizers = {"bfl": bfl.dimensions, "cloudflare": cloudflare.dimensions,
              "fal": fal_adapter.dimensions}
    checked = 0
    for model in load_catalog().models.values():
        for provider, binding in model.providers.items():
            if binding.cost is None or binding.cost.output_sizes is None:
                continue
            for ratio, size in binding.cost.output_sizes.items():
                width, height = sizers[provider](ratio)
                assert size == f"{width}x{height}", (model.model_identifier, provider, ratio)
                checked += 1
    assert checked >= 10


def test_the_packaged_catalogue_has_no_dead_model_and_prices_cover_the_issue_figures() -> None:
    catalog = load_catalog(today=dt.date(2026, 12, 2))
    for dead in ("openai/dall-e-3", "openai/gpt-image-1", "openai/gpt-image-1-mini", "openai/sora-2",
                 "openai/sora-2-pro", "google/imagen-4", "google/imagen-4-ultra", "google/imagen-4-fast"):
        assert dead not in catalog.models and dead in catalog.retired
    ids = {b.model_id for m in catalog.models.values() for b in m.providers.values()}
    assert not ids & {"veo-3.0-generate-001", "veo-3.0-fast-generate-001", "gemini-2.5-flash-image"}
    assert catalog.models["bfl/flux-2-pro"].model_pricing >= 0.045  # type: ignore[operator]
    assert catalog.models["leonardo/lucid-origin"].model_pricing >= 0.029  # type: ignore[operator]
    lite = catalog.models["bytedance/seedance-1-lite"].model_pricing
    # BytePlus bills the 21:9 720p frame (1504x640) and the 1080p 16:9 one (1920x1088) in full.
    assert isinstance(lite, dict) and lite["720p"] >= 0.0407 and lite["1080p"] >= 0.0882
    qwen = catalog.models["qwen/qwen-image"].providers["replicate"]
    assert qwen.fields["generation_output_number"] == ""  # no num_outputs on Replicate


def test_flux_2_flex_is_priced_for_its_megapixels_and_takes_one_input_image() -> None:
    """FLUX.2 [flex] bills 0.05 a megapixel, inputs included (BFL's own API guide): a 16:9
    edit is 2 MP out + 1 MP in, and the old flat 0.06 lost money on all but 1 MP text-to-image."""
    flex = load_catalog(today=dt.date(2026, 12, 2)).models["bfl/flux-2-flex"]
    bfl_cost = flex.providers["bfl"].cost
    assert bfl_cost is not None and flex.schema_.generation_input_file_max == 1
    assert cost_of(bfl_cost, CostRequest(ratio="1:1")) == Decimal("0.05")
    assert cost_of(bfl_cost, CostRequest(ratio="16:9", inputs=1)) == Decimal("0.15")
    price = flex.model_pricing
    assert isinstance(price, float) and dec(price) == Decimal("0.15")
    assert max(m.cost for m in margins(flex, "bfl", flex.providers["bfl"])) == dec(price)


def test_confirmed_costs_are_recorded_with_their_source() -> None:
    """The figures read from the providers' own pages (issue 14): each binding says where."""
    catalog = load_catalog(today=dt.date(2026, 12, 2))
    expected = {
        ("bfl/flux-schnell", "replicate"): Decimal("0.003"),
        ("bfl/flux-1.1-pro", "bfl"): Decimal("0.04"),
        ("bfl/flux-1.1-pro-ultra", "bfl"): Decimal("0.06"),
        ("bfl/flux-kontext-pro", "bfl"): Decimal("0.04"),
        ("bfl/flux-kontext-max", "bfl"): Decimal("0.08"),
    }
    for (model, provider), figure in expected.items():
        cost = catalog.models[model].providers[provider].cost
        assert cost is not None and cost.source.startswith("https://"), (model, provider)
        assert cost_of(cost, CostRequest(ratio="1:1", outputs=2)) == 2 * figure
    kling = catalog.models["kling/kling-v2.1-master"].providers["fal"].cost
    assert kling is not None
    request = CostRequest(ratio="16:9", duration=10, resolution="1080p")
    assert cost_of(kling, request) == Decimal("2.80")  # 1.40 for 5 s + 5 x 0.28


# -- retire_after and routing ---------------------------------------------------------------


def retiring(tmp_path: Path) -> Path:
    binding = "        model_id: preview-video\n        retire_after: 2026-12-31"
    return catalogue(tmp_path, video_model("sunset", binding))


def test_a_binding_past_retire_after_is_gone_and_its_model_retired(tmp_path: Path) -> None:
    folder = retiring(tmp_path)
    assert "test/sunset" in load_catalog(folder, today=dt.date(2026, 12, 31)).models
    later = load_catalog(folder, today=dt.date(2027, 1, 1))
    assert "test/sunset" not in later.models
    assert later.retired["test/sunset"].retired_on == dt.date(2027, 1, 1)
    # A server started before the date stops routing to it once the date has passed.
    model = load_catalog(folder, today=dt.date(2026, 12, 1)).models["test/sunset"]
    request = CostRequest(ratio="16:9", duration=1, resolution="480p")
    assert binding_refusal(model, "local", request, 5, dt.date(2026, 12, 31)) is None
    assert "after 2026-12-31" in str(binding_refusal(model, "local", request, 5, dt.date(2027, 1, 1)))


async def test_routing_skips_a_binding_that_would_lose_money(
    tmp_path: Path, harness_factory: Callable[..., Any]
) -> None:
    with_reason = COSTLY_720 + "\n        loss_ok: true\n        loss_reason: only 720p loses"
    h: Harness = await harness_factory(catalog_dir=catalogue(tmp_path, video_model("offer", with_reason)))
    caller = await h.caller(credits="5")
    body = {"generation_prompt": "waves", "generation_duration": 1}
    cheap = await caller.post("/v1/generate/video/test/offer", json={**body, "generation_resolution": "480p"})
    assert cheap.status_code == 200, cheap.text
    path = "/v1/generate/video/test/offer"
    costly = await caller.post(path, json={**body, "generation_resolution": "720p"})
    assert costly.status_code >= 400, costly.text
    assert "bse_provider_unavailable" in costly.text and "cost more than this request" in costly.text


# -- retired models ------------------------------------------------------------------------------

RETIRED = """
retired_models:
  - model_identifier: test/old-model
    model_type: image
    retired_on: 2026-10-23
    reason: The provider shut it down.
    successor: local/preview-image
    source: https://example.com/deprecations
    checked: 2026-12-02
"""

LIVE_OLD = """
models:
  - model_identifier: test/old-model
    model_type: image
    model_pricing: 0.002
    schema:
      generation_ratio: ["1:1"]
      generation_output_format: [png]
      generation_output_number: 1
    providers:
      local: {model_id: preview-image}
"""


async def test_a_retired_model_is_not_found_by_name_and_its_old_records_stay_readable(
    tmp_path: Path, harness_factory: Callable[..., Any]
) -> None:
    before = await harness_factory(catalog_dir=catalogue(tmp_path / "a", LIVE_OLD))
    caller = await before.caller(credits="1")
    r = await caller.create_image(model="test/old-model")
    assert r.status_code == 200, r.text
    gid = r.json()["data"]["generation_id"]
    assert (await caller.wait(gid))["generation_status"] == "succeeded"

    after: Harness = await harness_factory(catalog_dir=catalogue(tmp_path / "b", RETIRED))
    later = type(caller)(after.client, caller.account_id, caller.key, caller.key_id)
    record = await later.get(f"/v1/content/{gid}")
    assert record.status_code == 200 and record.json()["data"]["model_identifier"] == "test/old-model"
    for response in (
        await later.create_image(model="test/old-model"),
        await later.get("/v1/estimate/test/old-model"),
    ):
        assert response.status_code == 404, response.text
        text = response.text
        assert "bse_model_not_found" in text and "retired on 2026-10-23" in text
        assert "local/preview-image" in text
    models = (await later.get("/v1/library/models")).json()["data"]["models"]
    assert "test/old-model" not in {m["model_identifier"] for m in models}


# -- genplane catalog check ---------------------------------------------------------------------


def check(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GENPLANE_DATA_DIR": str(env_dir), "COLUMNS": "200"}
    env.pop("GENPLANE_CATALOG_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "genplane", "catalog", "check", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def test_catalog_check_reports_margins_and_exits_zero_on_the_packaged_catalogue(tmp_path: Path) -> None:
    done = check("--today", "2026-12-02", env_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "bfl/flux-2-pro via bfl: cost 0.03..0.06 per_megapixel, price 0.06, lowest margin 0" in out
    assert "leonardo/lucid-origin via cloudflare" in out
    assert "retired models: 8" in out and "openai/gpt-image-1 was retired on 2026-10-23" in out
    assert "violations: 0" in out


def test_catalog_check_warns_ahead_of_retire_after_and_fails_on_a_loss(tmp_path: Path) -> None:
    folder = retiring(tmp_path)
    soon = check("--catalog-dir", str(folder), "--today", "2026-12-20", "--days", "30", env_dir=tmp_path)
    assert soon.returncode == 0, soon.stdout + soon.stderr
    assert "test/sunset via local (preview-video): retire_after 2026-12-31 -- 11 days left" in soon.stdout
    past = check("--catalog-dir", str(folder), "--today", "2027-01-02", env_dir=tmp_path)
    assert "retire_after 2026-12-31 -- gone, not routed" in past.stdout
    assert "test/sunset was retired on 2027-01-01" in past.stdout

    lossy = catalogue(tmp_path / "lossy", video_model("costly", COSTLY_720))
    failed = check("--catalog-dir", str(lossy), "--today", "2026-12-02", env_dir=tmp_path)
    assert failed.returncode == 1
    assert "violations: 1" in failed.stdout and "test/costly via local costs 0.04" in failed.stdout
    assert "LOSS" in failed.stdout


# -- fakes refuse ids their provider does not serve ----------------------------------------------


def _openai_image() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = openai.FakeOpenAI()
    return fake.app, "/v1/images/generations", {"model": "gpt-image-1", "prompt": "x"}, {
        "authorization": f"Bearer {fake.key}"}


def _google() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = google.FakeGoogle()
    return fake.app, "/v1beta/models/imagen-4.0-generate-001:predict", {"instances": [{"prompt": "x"}]}, {
        "x-goog-api-key": fake.key}


def _replicate() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = replicate.FakeReplicate()
    return fake.app, "/v1/models/google/imagen-4/predictions", {"input": {"prompt": "x"}}, {
        "authorization": f"Bearer {fake.token}"}


def _fal() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = fal.FakeFal()
    return fake.app, "/fal-ai/imagen4/preview", {"prompt": "x"}, {"authorization": f"Key {fake.key}"}


def _bfl() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = FakeBfl()
    return fake.app, "/v1/flux-nonexistent", {"prompt": "x"}, {"x-key": fake.key}


def _byteplus() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = byteplus.FakeBytePlus()
    return fake.app, "/api/v3/images/generations", {"model": "seedream-9-9", "prompt": "x"}, {
        "authorization": f"Bearer {fake.api_key}"}


def _alibaba() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = alibabacloud.FakeDashScope()
    return fake.app, "/api/v1/services/aigc/text2image/image-synthesis", {
        "model": "wan9.9-t2i", "input": {"prompt": "x"}}, {
        "authorization": f"Bearer {fake.api_key}", "x-dashscope-async": "enable"}


def _runway() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = runway.FakeRunway()
    return fake.app, "/v1/text_to_image", {"model": "gen9", "ratio": "1920:1080", "promptText": "x"}, {
        "authorization": f"Bearer {fake.key}", "x-runway-version": runway.VERSION}


def _cloudflare() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = fake_cloudflare.FakeCloudflare()
    path = f"/client/v4/accounts/{fake.account_id}/ai/run/@cf/nobody/no-model"
    return fake.app, path, {"prompt": "x"}, {"authorization": f"Bearer {fake.token}"}


def _selfhosted() -> tuple[Starlette, str, dict[str, Any], dict[str, str]]:
    fake = selfhosted.FakeSelfHosted()
    return fake.app, "/v1/images/generations", {"model": "no-such-model", "prompt": "x"}, {}


FAKES: dict[str, tuple[Callable[[], tuple[Starlette, str, dict[str, Any], dict[str, str]]], int, str]] = {
    "openai": (_openai_image, 404, '"code":"model_not_found"'),
    "google": (_google, 404, '"status":"NOT_FOUND"'),
    "replicate": (_replicate, 404, '"title":"Not found"'),
    "fal": (_fal, 404, "Application not found"),
    "bfl": (_bfl, 404, '"detail":"Not Found"'),
    "byteplus": (_byteplus, 404, "InvalidEndpointOrModel.NotFound"),
    "alibabacloud": (_alibaba, 400, "Model not exist."),
    "runway": (_runway, 400, "Invalid enum value"),
    "cloudflare": (_cloudflare, 400, "No such model"),
    "selfhosted": (_selfhosted, 404, "model_not_found"),
}


@pytest.mark.parametrize("provider", list(FAKES))
async def test_every_fake_refuses_an_id_its_provider_does_not_serve(provider: str) -> None:
    make, status, marker = FAKES[provider]
    app, path, body, headers = make()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://fake.test") as client:
        r = await client.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert marker.replace(" ", "") in r.text.replace(" ", ""), r.text
