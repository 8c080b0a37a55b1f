"""The user commands (generate, models, estimate, content, usage, status): the real ``genplane``
command in a subprocess, against a real ``genplane serve``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client_live import Account, fresh_account, start_live
from tests.serve_process import BIN, Server

IMAGE = "local/preview-image"
VIDEO = "local/preview-video"


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    # A command starts in seconds, not milliseconds: a generation must outlive one for the
    # cancel test to find it running.
    server, key = start_live(tmp_path_factory.mktemp("cli") / "data", provider_delay="6")
    try:
        yield server, key
    finally:
        server.stop()


def genplane(*args: str, base_url: str | None = None, key: str | None = None) -> Ran:
    """``genplane <args>`` as a user runs it: the server and key from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENPLANE_")}
    env["COLUMNS"] = "200"
    if base_url is not None:
        env["GENPLANE_BASE_URL"] = base_url
    if key is not None:
        env["GENPLANE_API_KEY"] = key
    done = subprocess.run([str(BIN / "genplane"), *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return Ran(done.returncode, done.stdout, done.stderr)


def as_user(server: Server, account: Account | str, *args: str) -> Ran:
    key = account if isinstance(account, str) else account.key
    return genplane(*args, base_url=server.base_url, key=key)


def test_generate_waits_and_saves_the_files(live: tuple[Server, str], tmp_path: Path) -> None:
    server, key = live
    ran = as_user(server, key, "generate", IMAGE, "two foxes", "--number", "2", "--ratio", "16:9",
                  "--seed", "7", "--out", str(tmp_path / "out"))
    assert ran.code == 0, ran.err
    saved = [Path(p) for p in re.findall(r"^saved: (.+)$", ran.out, re.M)]
    urls = re.findall(r"^\s+(http\S+)$", ran.out, re.M)
    assert len(saved) == len(urls) == 2 and re.search(r"^succeeded: \S+ in [\d.]+ s on local$", ran.out, re.M)
    for path, url in zip(saved, urls, strict=True):
        assert path.parent == tmp_path / "out" and path.read_bytes() == httpx.get(url).content

    as_json = as_user(server, key, "generate", VIDEO, "waves", "--duration", "3", "--no-audio",
                      "--wait", "--out", str(tmp_path / "video"), "--json").json()
    assert as_json["generation_status"] == "succeeded" and as_json["generation_duration"] == 3
    assert as_json["generation_generate_audio"] is False
    (video,) = as_json["saved_paths"]
    assert Path(video).suffix == ".mp4" and Path(video).read_bytes() == httpx.get(
        as_json["generation_output_file"][0]).content


def test_content_list_get_cancel_delete(live: tuple[Server, str]) -> None:
    server, _ = live
    account = fresh_account(server)
    created = as_user(server, account, "generate", VIDEO, "a slow sea", "--duration", "3", "--json").json()
    generation_id = created["generation_id"]
    assert created["generation_initialized"] is True

    canceled = as_user(server, account, "content", "cancel", generation_id, "--json").json()
    assert canceled == {**canceled, "generation_id": generation_id, "generation_status": "canceled"}

    record = as_user(server, account, "content", "get", generation_id, "--json").json()
    assert record["generation_status"] == "canceled" and record["model_identifier"] == VIDEO
    table = as_user(server, account, "content", "get", generation_id)
    assert table.code == 0 and generation_id in table.out and "canceled" in table.out

    listed = as_user(server, account, "content", "list", "--json").json()
    assert [g["generation_id"] for g in listed["generations"]] == [generation_id]
    shown = as_user(server, account, "content", "list")
    assert shown.code == 0 and generation_id in shown.out and "1-1 of 1" in shown.out

    deleted = as_user(server, account, "content", "delete", generation_id, "--json").json()
    assert deleted["generation_id"] == generation_id
    gone = as_user(server, account, "content", "get", generation_id)
    assert gone.code == 1 and gone.err.strip().startswith("error BSE2011 bse_generation_not_found:")


def test_models_estimate_status_and_usage_with_and_without_json(live: tuple[Server, str]) -> None:
    server, _ = live
    account = fresh_account(server, credits="3")

    videos = as_user(server, account, "models", "--type", "video", "--json").json()
    assert videos["models"] and {m["model_type"] for m in videos["models"]} == {"video"}
    assert VIDEO in {m["model_identifier"] for m in videos["models"]}
    table = as_user(server, account, "models", "--type", "image")
    assert table.code == 0 and IMAGE in table.out and VIDEO not in table.out

    local = genplane("models", "--local")  # the operator's view: no server, no key
    assert local.code == 0 and re.search(r"local/preview-image .*local\*", local.out)

    est = as_user(server, account, "estimate", IMAGE, "--count", "4", "--json").json()
    assert est["assets_count"] == 4 and est["credit_balance"] == 3.0
    assert est["cost_total_consumed"] == pytest.approx(4 * est["cost_per_generation"])
    video_est = as_user(server, account, "estimate", VIDEO, "--duration", "3", "--resolution", "720p")
    assert video_est.code == 0 and "cost_per_second" in video_est.out and "720p" in video_est.out

    status = as_user(server, account, "status", "--json").json()
    assert status["account_id"] == account.account_id and status["apikey_prefix"] == account.key[:9]
    shown = as_user(server, account, "status")
    assert account.account_id in shown.out and "credit balance: 3.000" in shown.out

    as_user(server, account, "generate", IMAGE, "one for the chart", "--wait", "--json").json()
    usage = as_user(server, account, "usage", "--days", "7", "--json").json()
    assert usage["usage_period_days"] == 7 and usage["usage_total_generations"] == 1
    chart = as_user(server, account, "usage", "--days", "7")
    assert chart.code == 0 and "usage, last 7 days" in chart.out
    rows = re.findall(r"(\d{4}-\d{2}-\d{2}) │ (\d+) +│ (█*)", chart.out)
    assert len(rows) == 7 and sum(int(n) for _, n, _ in rows) == 1
    assert [bool(bar) for _, n, bar in rows] == [n != "0" for _, n, _ in rows]


@pytest.mark.parametrize(
    "args",
    [("status",), ("models",), ("usage",), ("content", "list"), ("generate", IMAGE, "a fox", "--wait"),
     ("estimate", IMAGE, "--json")],
)
def test_a_bad_key_is_one_line_with_the_code(live: tuple[Server, str], args: tuple[str, ...]) -> None:
    server, _ = live
    ran = as_user(server, "bye_us_" + "z" * 43, *args)
    assert ran.code == 1 and ran.out == ""
    assert ran.err.splitlines() == [
        "error BSE1002 bse_invalid_api_key: The provided API key is invalid or expired."
    ]


def test_no_key_or_no_server_fail_in_one_line(live: tuple[Server, str]) -> None:
    server, key = live
    missing = genplane("status", base_url=server.base_url)
    assert missing.code == 2 and missing.err.strip() == (
        "error: an API key is required: --api-key or GENPLANE_API_KEY"
    )
    # --base-url wins over GENPLANE_BASE_URL (here pointing nowhere)
    flag = genplane("status", "--json", "--base-url", server.base_url, base_url="http://127.0.0.1:9", key=key)
    assert flag.json()["apikey_prefix"] == key[:9]
    nowhere = genplane("status", base_url="http://127.0.0.1:9", key=key)
    assert nowhere.code == 1 and len(nowhere.err.splitlines()) == 1
    assert nowhere.err.startswith("error: network error") and "Traceback" not in nowhere.err
