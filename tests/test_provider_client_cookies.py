"""The provider HTTP client keeps no cookies: one provider's Set-Cookie never rides along later."""

from __future__ import annotations

from pathlib import Path

import httpx

from genplane.providers.registry import build_http_client
from tests.conftest import make_settings


async def test_a_set_cookie_is_not_sent_back(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def provider(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=tenant-a; Path=/"}, json={})

    client = build_http_client(make_settings(tmp_path / "data"), httpx.MockTransport(provider))
    async with client:
        for _ in range(2):
            assert (await client.get("https://api.provider.test/v1/predictions")).status_code == 200
        assert len(client.cookies.jar) == 0
    assert seen == [None, None]

    # The same exchange through a stock client would have sent it back.
    seen.clear()
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider)) as stock:
        for _ in range(2):
            await stock.get("https://api.provider.test/v1/predictions")
    assert seen == [None, "session=tenant-a"]
