"""``ProviderHttp`` for providers whose error *bodies* matter, not only the status code.

Some providers say the decisive thing in the body: an account in arrears answers a
plain 400 or 403, a moderation refusal a 400 indistinguishable by status from a bad
parameter. The shared mapping sees only the status, so this subclass hands the
adapter the answer itself to refine the error; transport failures and everything
else keep the shared behaviour, and the refined error keeps the status code so that
``poll_json`` still tells transient answers from final ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from genplane.providers.base import ProviderError
from genplane.providers.http import ProviderHttp, error_for_status

# (the non-2xx answer, the error the shared mapping chose) -> the error to raise
Refine = Callable[[httpx.Response, ProviderError], ProviderError]


class CodedProviderHttp(ProviderHttp):
    def __init__(
        self,
        provider: str,
        client: httpx.AsyncClient,
        base_url: str,
        refine: Refine,
        headers: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(provider, client, base_url, headers=headers, poll_interval=poll_interval)
        self.refine = refine

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        request_timeout: float | None = 60.0,
    ) -> httpx.Response:
        try:
            response = await self.client.request(
                method,
                self.url(path),
                json=json,
                data=data,
                files=files,
                params=params,
                headers={**self.headers, **(headers or {})},
                timeout=request_timeout,
            )
        except httpx.TimeoutException as exc:
            message = f"{self.provider} did not answer in time ({type(exc).__name__})."
            raise ProviderError("bse_provider_timeout", message, retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                "bse_provider_error", f"{self.provider} could not be reached: {type(exc).__name__}.", True
            ) from exc
        if response.status_code >= 400:
            shared = error_for_status(self.provider, response)
            refined = self.refine(response, shared)
            refined.http_status = response.status_code
            raise refined
        return response


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one (error pages, proxies)."""
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
