"""HTTP plumbing every remote adapter shares: one client, one error mapping, polling.

Providers disagree on almost everything except HTTP itself, so the mapping from a
status code or a broken connection to a contract error lives here once: adapters
add only what their protocol says on top (moderation flags, status values).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from pydantic import SecretStr

from genplane.net.retry_after import parse_retry_after
from genplane.providers.base import PredictionLost, ProviderError, ProviderResult

if TYPE_CHECKING:
    from genplane.settings import Settings

# Provider answers are small JSON documents; a multi-megabyte one is a broken proxy.
MAX_JSON_BYTES = 16 * 1024 * 1024
# A Retry-After longer than this is not waited out inside one attempt: the chain moves on.
MAX_RETRY_AFTER_SECONDS = 30.0


class _Default:
    """Marks "the timeout this provider was built with", which None (no timeout) cannot."""


_DEFAULT = _Default()


def _detail(body: bytes) -> str:
    """A short, single-line excerpt of a provider's error body for messages and logs."""
    text = body[:300].decode("utf-8", "replace").replace("\n", " ").strip()
    return text or "no body"


def error_for_status(provider: str, response: httpx.Response) -> ProviderError:
    """The contract error for a non-2xx provider answer."""
    err = _error_for_status(provider, response)
    err.http_status = response.status_code
    return err


def _error_for_status(provider: str, response: httpx.Response) -> ProviderError:
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    detail = f"{provider} answered HTTP {status}: {_detail(response.content)}"
    if status in (400, 422):
        return ProviderError("bse_invalid_input", detail, retryable=False)
    if status in (401, 403):
        message = f"{provider} refused the credentials ({status})."
        return ProviderError("bse_provider_unavailable", message, retryable=True)
    if status == 402:
        return ProviderError("bse_provider_credits_exhausted", detail, retryable=False)
    if status == 429:
        return ProviderError("bse_provider_unavailable", detail, retryable=True, retry_after=retry_after)
    if status == 503:
        return ProviderError("bse_provider_unavailable", detail, retryable=True, retry_after=retry_after)
    if status in (408, 504):
        return ProviderError("bse_provider_timeout", detail, retryable=True)
    return ProviderError("bse_provider_error", detail, retryable=True, retry_after=retry_after)


# (the non-2xx answer, the error the status code alone gives) -> the error to raise
Refine = Callable[[httpx.Response, ProviderError], ProviderError]


class ProviderHttp:
    """A provider's base URL and auth headers over the process's shared client.

    Some providers say the decisive thing in the error *body* (an account in arrears
    answers a plain 400 or 403, a moderation refusal a 400 like a bad parameter):
    ``refine`` lets an adapter read the answer and choose a better error, which keeps
    the status code so that :meth:`poll_json` still tells passing failures from final ones.
    """

    def __init__(
        self,
        provider: str,
        client: httpx.AsyncClient,
        base_url: str,
        refine: Refine | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
        request_timeout: float | None = 60.0,
    ) -> None:
        self.provider = provider
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.refine = refine
        self.headers = dict(headers or {})
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout

    @classmethod
    def for_settings(
        cls,
        provider: str,
        client: httpx.AsyncClient,
        settings: Settings,
        base_url: str,
        refine: Refine | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProviderHttp:
        """The usual construction: poll interval and request timeout from settings."""
        return cls(
            provider,
            client,
            base_url,
            refine,
            headers=headers,
            poll_interval=settings.provider_poll_interval_seconds,
            request_timeout=settings.provider_request_timeout_seconds,
        )

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

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
        request_timeout: float | _Default | None = _DEFAULT,
    ) -> httpx.Response:
        """One request; a non-2xx answer or a broken connection raises ProviderError."""
        timeout = self.request_timeout if isinstance(request_timeout, _Default) else request_timeout
        try:
            response = await self.client.request(
                method,
                self.url(path),
                json=json,
                data=data,
                files=files,
                params=params,
                headers={**self.headers, **(headers or {})},
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            message = f"{self.provider} did not answer in time ({type(exc).__name__})."
            raise ProviderError("bse_provider_timeout", message, retryable=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                "bse_provider_error", f"{self.provider} could not be reached: {type(exc).__name__}.", True
            ) from exc
        if response.status_code >= 400:
            err = error_for_status(self.provider, response)
            if self.refine is not None:
                err = self.refine(response, err)
                err.http_status = response.status_code
            raise err
        return response

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        """A request whose answer must be JSON; anything else is a provider error."""
        response = await self.send(method, path, **kw)
        return self.decode(response)

    def decode(self, response: httpx.Response) -> Any:
        if len(response.content) > MAX_JSON_BYTES:
            raise ProviderError("bse_provider_error", f"{self.provider} sent an oversized answer.", True)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(
                "bse_provider_error",
                f"{self.provider} sent malformed JSON: {_detail(response.content)}",
                retryable=True,
            ) from exc

    async def poll_json(self, method: str, path: str, **kw: Any) -> Any:
        """A status poll: rate limits, 5xx, timeouts and garbled answers are waited out.

        Anything else (a 4xx: the job is unknown, the credentials were revoked) ends it.

        The worker's per-attempt deadline bounds how long this can go on, so a
        provider that stays broken still ends the attempt with a timeout.
        """
        delay = self.poll_interval
        while True:
            try:
                return await self.json(method, path, **kw)
            except ProviderError as exc:
                status = exc.http_status
                if status is not None and status != 429 and status < 500:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else delay
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER_SECONDS))
                delay = min(delay * 2, 10.0)

    async def poll_while(self, path: str, running: Callable[[Any], bool], **kw: Any) -> Any:
        """The first status answer of a remote task for which ``running`` is false.

        The task is only observed: whatever it is then, success or failure, is the adapter's
        to read. Passing failures of a poll are waited out by :meth:`poll_json`; the worker's
        attempt deadline bounds the whole wait.
        """
        while True:
            answer = await self.poll_json("GET", path, **kw)
            if not running(answer):
                return answer
            await self.pause()

    async def accepted(self, method: str, path: str) -> bool:
        """Whether the provider accepted a request whose answer carries nothing else (a cancel).

        A refusal is an answer, not a failure: the task had ended, was already gone, or
        cannot be stopped in its state, and the caller can do nothing more about it.
        """
        try:
            await self.send(method, path)
        except ProviderError:
            return False
        return True

    async def pause(self) -> None:
        """Wait one poll interval between status checks."""
        await asyncio.sleep(self.poll_interval)


def dig(data: Any, *path: str | int) -> Any:
    """``data[path[0]][path[1]]...`` or None, for provider JSON whose shape varies by state."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(data, list) or not -len(data) <= key < len(data):
                return None
            data = data[key]
        else:
            if not isinstance(data, dict):
                return None
            data = data.get(key)
    return data


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one (error pages, proxies)."""
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class HeldResults:
    """Results of synchronous providers between ``submit`` (which does the work) and ``wait``.

    Held in memory only: after a restart the id is unknown and ``take`` raises
    :class:`PredictionLost`, so the worker submits again.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._results: dict[str, ProviderResult] = {}

    def hold(self, prediction_id: str, result: ProviderResult) -> str:
        self._results[prediction_id] = result
        return prediction_id

    def take(self, prediction_id: str) -> ProviderResult:
        result = self._results.pop(prediction_id, None)
        if result is None:
            raise PredictionLost(
                "bse_provider_error",
                f"The result of {self.provider} request {prediction_id} was lost in a restart.",
                retryable=True,
            )
        return result

    def drop(self, prediction_id: str) -> bool:
        return self._results.pop(prediction_id, None) is not None


def key_headers(
    key: SecretStr | None, header: str = "Authorization", scheme: str = "Bearer"
) -> dict[str, str]:
    """How a provider key travels: the request header carrying ``key`` (``"<scheme> <key>"``, or
    the bare key without a scheme). Settings already turned a blank key into None; without a
    key no header is sent, and the adapter reports itself unconfigured."""
    if key is None:
        return {}
    secret = key.get_secret_value()
    return {header: f"{scheme} {secret}" if scheme else secret}
