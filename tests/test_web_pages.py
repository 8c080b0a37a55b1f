"""The browser pages (genplane.web) against a real ``genplane serve``, in Debian's headless Chromium.

What a new user does after ``make run`` is replayed in a browser: paste the printed key,
generate an image and a video with the local provider and see them, meet a bad key's error,
cancel a generation from the recent list, read every model's page and see the dashboard's
charts. The pages call only the public ``/v1`` operations, so these tests also check that
the firewall lets the pages through and still guards ``/v1``, and that no page breaks its
own Content-Security-Policy (a violation is a console error, which fails the test).

Chromium is the system's (``make chromium`` installs Debian's package); Playwright's own
browser download is never used. Screenshots land in ``test-artifacts/`` on every run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from genplane.catalog.loader import load_catalog
from genplane.contract.errors import ERRORS
from genplane.generations.request import check_generation
from genplane.web.examples import build_examples, example_body
from tests.serve_process import Server

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 30_000



# -- servers and the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """One server for the module (starting one takes seconds): the pages' normal life."""
    server = Server(tmp_path_factory.mktemp("web") / "data")
    try:
        key = server.init()
        server.start()
        yield server, key
    finally:
        server.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server whose generations stay pending: no worker runs in it."""
    server = Server(tmp_path_factory.mktemp("web-idle") / "data")
    try:
        key = server.init()
        server.start(GENPLANE_RUN_WORKER="false")
        yield server, key
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed: make chromium (make test does)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


class Console:
    """Console errors and uncaught exceptions of one page: a CSP violation shows up here."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def expect_clean(self, allowed: str | None = None) -> None:
        left = [e for e in self.errors if allowed is None or not re.search(allowed, e)]
        assert left == [], left


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def use_key(page: Any, key: str) -> None:
    page.get_by_label("Paste an API key").fill(key)
    page.get_by_role("button", name="Use key").click()


def choose_model(page: Any, identifier: str) -> None:
    page.wait_for_selector(f'#model-select option[value="{identifier}"]', state="attached")
    page.select_option("#model-select", identifier)
    page.wait_for_selector("#f-generation_prompt")


# -- the Playground ---------------------------------------------------------------------------


def test_playground_generates_an_image_and_shows_it(page: Any, served: tuple[Server, str]) -> None:
    server, key = served
    console = Console(page)
    page.goto(server.base_url + "/")
    use_key(page, key)
    assert page.evaluate("sessionStorage.getItem('genplane.apiKey')") == key
    page.get_by_label("Image", exact=True).check()
    page.get_by_label("Search models").fill("preview")
    choose_model(page, "local/preview-image")
    assert page.locator("#model-select option").all_inner_texts() == ["local/preview-image (image)"]
    # Allowed values as selects, defaults first; the model-specific fields under "Advanced".
    assert page.locator("#f-generation_ratio option").first.inner_text() == "1:1"
    assert page.locator("#f-generation_output_format").input_value() == "png"
    assert page.locator("#advanced #f-generation_seed").count() == 1
    page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    page.select_option("#f-generation_output_number", "2")
    expect(page.locator("#estimate")).to_contain_text("Estimate: 0.004 credits")
    page.get_by_role("button", name="Generate", exact=True).click()

    expect(page.locator('#live-status [data-status="succeeded"]')).to_be_visible()
    expect(page.locator("#live-status")).to_contain_text("provider local")
    expect(page.locator("#live-status")).to_contain_text(re.compile(r"\d+\.\d s elapsed"))
    images = page.locator("#result img")
    expect(images).to_have_count(2)
    # Functions, not expressions: Playwright polls an expression with eval, which the CSP forbids.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#result img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    links = page.locator("#result a[download]")
    expect(links).to_have_count(2)
    href = links.first.get_attribute("href")
    assert href is not None and href.startswith(server.base_url + "/files/")
    # The recent list shows it, finished.
    expect(page.locator('#recent tbody tr [data-status="succeeded"]').first).to_be_visible()
    shot(page, "playground-image")
    console.expect_clean()


def test_playground_plays_a_video(page: Any, served: tuple[Server, str]) -> None:
    server, key = served
    console = Console(page)
    page.goto(server.base_url + "/playground#model=local/preview-video")
    use_key(page, key)
    page.wait_for_selector("#f-generation_duration")  # chosen from the address's #model=
    assert page.locator("#model-select").input_value() == "local/preview-video"
    page.get_by_label("Prompt", exact=True).fill("waves on a beach")
    page.select_option("#f-generation_duration", "1")
    page.get_by_label("Generate audio").check()
    expect(page.locator("#estimate")).to_contain_text("Estimate: 0.002 credits")  # 1 s, 0.0015/s
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator('#live-status [data-status="succeeded"]')).to_be_visible()
    video = page.locator("#result video")
    expect(video).to_have_count(1)
    assert video.get_attribute("controls") is not None
    # HAVE_CURRENT_DATA or better: Chromium decoded the local provider's H.264 frames.
    page.wait_for_function("() => document.querySelector('#result video').readyState >= 2")
    assert page.evaluate("document.querySelector('#result video').error") is None
    assert page.evaluate("document.querySelector('#result video').videoWidth") > 0
    shot(page, "playground-video")
    console.expect_clean()


def test_a_bad_key_shows_the_contracts_message_and_code(page: Any, served: tuple[Server, str]) -> None:
    server, _ = served
    console = Console(page)
    page.goto(server.base_url + "/")
    bad = "bye_us_" + "x" * 40
    use_key(page, bad)
    answer = httpx.get(
        server.base_url + "/v1/library/models", headers={"Authorization": f"Bearer {bad}"}, trust_env=False
    ).json()
    spec = ERRORS[answer["error"]]
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(spec.code)
    expect(error.locator(".error-message")).to_have_text(answer["message"])
    assert "{" not in error.inner_text()  # never the raw body
    shot(page, "playground-bad-key")
    # The browser logs the failed requests themselves (401): nothing else may be in the console.
    console.expect_clean(allowed=r"status of 401")


def test_cancel_and_delete_from_the_recent_list(page: Any, idle: tuple[Server, str]) -> None:
    server, key = idle
    console = Console(page)
    page.goto(server.base_url + "/")
    use_key(page, key)
    choose_model(page, "local/preview-image")
    page.get_by_label("Prompt", exact=True).fill("this one waits")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator('#live-status [data-status="pending"]')).to_be_visible()
    row = page.locator("#recent tbody tr").first
    expect(row.locator('[data-status="pending"]')).to_be_visible()
    generation_id = row.get_attribute("data-id")
    row.get_by_role("button", name="Cancel").click()
    row = page.locator(f'#recent tbody tr[data-id="{generation_id}"]')
    expect(row.locator('[data-status="canceled"]')).to_be_visible()
    expect(page.locator('#live-status [data-status="canceled"]')).to_be_visible()
    record = httpx.get(
        f"{server.base_url}/v1/content/{generation_id}",
        headers={"Authorization": f"Bearer {key}"},
        trust_env=False,
    ).json()["data"]
    assert record["generation_status"] == "canceled"
    shot(page, "playground-canceled")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    console.expect_clean()


# -- the model pages --------------------------------------------------------------------------


def test_every_catalogue_model_has_a_page_with_its_three_examples(served: tuple[Server, str]) -> None:
    server, _ = served
    catalog = load_catalog()
    with httpx.Client(base_url=server.base_url, trust_env=False) as client:
        listing = client.get("/models")
        assert listing.status_code == 200
        for identifier in catalog.models:
            assert f'href="/models/{identifier}"' in listing.text
        for identifier, model in catalog.models.items():
            r = client.get(f"/models/{identifier}")
            assert r.status_code == 200, identifier
            assert "script-src 'self'" in r.headers["content-security-policy"]
            text = r.text
            for block in ("example-curl", "example-python", "example-typescript"):
                assert f'id="{block}"' in text, (identifier, block)
            examples = build_examples(model, server.base_url)
            for code in (examples.curl, examples.python, examples.typescript):
                assert _html(code) in text, identifier
            assert f"{server.base_url}/v1/generate/{model.model_type}/{identifier}" in examples.curl
            assert f'client.generate_and_wait("{identifier}", ' in examples.python
            assert f"baseUrl: '{server.base_url}'" in examples.typescript
            assert f"client.generateAndWait('{identifier}', " in examples.typescript
            for provider in model.providers:
                assert f"<code>{provider}</code>" in text, (identifier, provider)
            for ratio in model.schema_.generation_ratio:
                assert ratio in text
            # The example's body is one the model accepts.
            check_generation(catalog, model.model_type, identifier, json.dumps(example_body(model)).encode())
        assert client.get("/models/nobody/nothing").status_code == 404


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace(
        "'", "&#39;"
    )


def test_the_examples_match_the_sdks_shapes() -> None:
    model = load_catalog().models["bfl/flux-schnell"]
    examples = build_examples(model, "http://127.0.0.1:8000/")
    assert examples.python == (
        "from genplane.client import Client\n\n"
        'client = Client(api_key="bye_...", base_url="http://127.0.0.1:8000")\n'
        'generation = client.generate_and_wait("bfl/flux-schnell", '
        '{"generation_prompt": "A lighthouse on a cliff at dusk, waves below", "generation_ratio": "1:1"})\n'
        'paths = client.download(generation, "out")'
    )
    assert "import { BabySea } from 'babysea';" in examples.typescript
    assert "apiKey: process.env.BABYSEA_API_KEY!," in examples.typescript
    assert "baseUrl: 'http://127.0.0.1:8000'," in examples.typescript
    video = build_examples(load_catalog().models["local/preview-video"], "http://h")
    # The TypeScript SDK picks the video operation by generation_duration: every video example sends it.
    assert "generation_duration: 1," in video.typescript


def test_a_model_page_in_the_browser(page: Any, served: tuple[Server, str]) -> None:
    server, _ = served
    console = Console(page)
    page.goto(server.base_url + "/models")
    page.get_by_role("link", name="local/preview-video").click()
    expect(page.locator("h1")).to_have_text("local/preview-video")
    for block in ("#example-curl", "#example-python", "#example-typescript"):
        expect(page.locator(block)).to_be_visible()
    expect(page.locator("#pricing")).to_contain_text("720p with audio, per second")
    expect(page.locator("#providers")).to_contain_text("healthy")
    expect(page.locator("#fields")).to_contain_text("generation_generate_audio")
    shot(page, "model-page")
    console.expect_clean()


# -- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_shows_charts_after_a_few_generations(page: Any, served: tuple[Server, str]) -> None:
    server, key = served
    headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=30"}
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=40) as client:
        for n in range(3):
            body = {"generation_prompt": f"bird {n}"}
            r = client.post("/v1/generate/image/local/preview-image", headers=headers, json=body)
            assert r.status_code == 200, r.text
    console = Console(page)
    page.goto(server.base_url + "/dashboard")
    use_key(page, key)
    chart = page.locator('figure[data-chart="generations"] svg')
    expect(chart).to_be_visible()
    assert chart.locator("rect.fill-succeeded").count() >= 1
    expect(page.locator('figure[data-chart="spend"] svg rect.fill-spend').first).to_be_attached()
    # Requests per day come from /v1/usage's usage_days: today's bar holds this test's calls.
    expect(page.locator('figure[data-chart="requests"] svg rect.fill-success').first).to_be_attached()
    expect(page.locator('figure[data-chart="endpoints"] svg rect').first).to_be_attached()
    expect(page.locator("#providers")).to_contain_text("local")
    expect(page.locator("#account")).to_contain_text("Credit balance")
    expect(page.locator("#account")).to_contain_text("0.500 (armed)")  # the account's default alert
    expect(page.locator("#endpoints")).to_contain_text("POST /v1/generate/image/{model_identifier}")
    page.get_by_label("30 days").check()
    expect(page.locator('figure[data-chart="generations"] svg')).to_be_visible()
    page.emulate_media(color_scheme="dark")
    shot(page, "dashboard-dark")
    console.expect_clean()


def test_pages_fit_a_phone_in_light_and_dark(browser: Any, served: tuple[Server, str]) -> None:
    server, key = served
    for scheme in ("light", "dark"):
        phone = {"width": 390, "height": 844}
        context = browser.new_context(viewport=phone, color_scheme=scheme, is_mobile=True)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        console = Console(page)
        try:
            for path in ("/", "/models", "/models/local/preview-image", "/dashboard"):
                page.goto(server.base_url + path)
                if path == "/":
                    use_key(page, key)
                    choose_model(page, "local/preview-image")
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, (scheme, path, overflow)
                background = page.evaluate("getComputedStyle(document.body).backgroundColor")
                assert (background == "rgb(255, 255, 255)") == (scheme == "light"), (scheme, background)
                shot(page, f"phone-{scheme}-{path.strip('/').replace('/', '-') or 'playground'}")
            console.expect_clean()
        finally:
            context.close()


# -- HTTP: the firewall, the document, the headers --------------------------------------------


def test_pages_pass_the_firewall_and_v1_stays_guarded(served: tuple[Server, str]) -> None:
    server, _ = served
    with httpx.Client(base_url=server.base_url, trust_env=False) as client:
        for path in ("/", "/playground", "/models", "/dashboard", "/models/local/preview-image"):
            r = client.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html")
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "outside the <code>/v1</code> API contract" in r.text
            assert "<script>" not in r.text  # no inline script: every script is a file of /static/
        css = client.get("/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        again = client.get("/static/app.css", headers={"If-None-Match": css.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/static/../pyproject.toml").status_code == 404
        # Pages are GET only: anything else is the contract's 404, as for any unknown route.
        refused = client.post("/models", json={})
        assert refused.status_code == 404 and refused.json()["error"] == "bse_route_not_found"
        assert client.get("/v1/not-an-operation").json()["error"] == "bse_route_not_found"
        assert client.get("/v1/usage").json()["error"] == "bse_authentication_required"
        paths = client.get("/openapi.json").json()["paths"]
        assert all(p.startswith("/v1/") for p in paths)


def test_the_wheel_ships_every_template_and_static_file() -> None:
    """Each file of genplane/web/templates and static/ matches a package-data pattern of pyproject."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = root / "src" / "genplane"
    files = [p for d in ("templates", "static") for p in (package / "web" / d).iterdir() if p.is_file()]
    assert files
    for path in files:
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in patterns["genplane"]), rel
