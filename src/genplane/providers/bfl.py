"""Black Forest Labs (FLUX) adapter.

Protocol facts this relies on:

- A task is one ``POST /v1/<model>`` with the key in an ``x-key`` header, and makes one
  image. ``output_number`` N is therefore N tasks, and the prediction id is their ids
  joined by commas so that :meth:`BflAdapter.wait` can poll every one of them after a
  restart with nothing but that string.
- The global host hands each task to a regional cluster and answers with a
  ``polling_url`` on that cluster; only that cluster knows the task, and BFL asks clients
  to poll that exact URL, never one rebuilt from the id or with the host swapped
  (https://docs.bfl.ai/api_integration/integration_guidelines and
  https://help.bfl.ai/articles/9532536301-which-api-endpoint-should-i-use, read
  2026-12-02). So the URL is kept next to each id (``<id>@<polling_url>``) and polled as
  given (a comma in it is sent percent-encoded, ``%2C``: commas separate the tasks). The key is only
  ever sent to the configured host or another host of its domain, so a polling URL
  pointing elsewhere is ignored in favour of ``/v1/get_result`` on the configured host,
  as is a missing one. Ids written before kept only the host (``<id>@<host>``); those
  are still polled at ``/v1/get_result`` on that host.
- A poll answers ``status``: ``Pending`` (``progress`` appears once it runs), ``Ready``
  (``result.sample`` is a signed URL that expires after about ten minutes, handed to
  the worker to download at once), ``Request Moderated`` / ``Content Moderated`` (the
  prompt, an input or the output was refused), ``Error`` and ``Task not found``.
- There is no cancel endpoint: a submitted task runs, and is billed, to the end. So
  when the 2nd..Nth submission of one job meets a 429 (BFL caps active tasks per
  account), a short Retry-After is waited out here: failing the whole submit would
  make the chain submit all N again and orphan the tasks already running.
- Errors answer FastAPI's ``{"detail": ...}``; a prompt refused at once is a 400 whose
  detail says it was moderated, which the status alone cannot tell from a bad field.
- Size is ``aspect_ratio`` on Kontext and Ultra and ``width``/``height`` (multiples of 32)
  on the others; input images go as base64 in ``input_image``, ``input_image_2``, ...
  (the bytes the worker already fetched and checked, so BFL sees exactly those).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlsplit

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.http import MAX_RETRY_AFTER_SECONDS, ProviderHttp, dig, json_body, key_headers
from genplane.providers.sizes import exact_pixels, size_near_area
from genplane.settings import Settings

PROVIDER = "bfl"
# Sentinel for ``fields: {generation_ratio: width,height}``: send pixel dimensions.
WIDTH_HEIGHT = "width,height"
# About one megapixel, the size the FLUX endpoints are priced and tuned for.
_TARGET_AREA = 1024 * 1024
_STEP, _MIN_SIDE, _MAX_SIDE = 32, 256, 1440

_NATIVE_FORMATS = {"jpg": "jpeg"}
_EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

_MODERATED = {"Request Moderated", "Content Moderated"}
_SETTLED = {"Ready", "Error", "Task not found", *_MODERATED}
# Waits for a 429 on the 2nd..Nth task of a job before giving up on the submit.
_LATER_TASK_RATE_LIMIT_RETRIES = 3



def refine_error(response: httpx.Response, shared: ProviderError) -> ProviderError:
    """A 400/422 whose ``detail`` says the request was moderated is a content refusal."""
    detail = json_body(response).get("detail")
    if response.status_code in (400, 422) and "moderat" in str(detail).lower():
        return ProviderError(
            "bse_content_policy_violation",
            f"bfl refused the request under its content policy: {str(detail)[:200]}",
            retryable=False,
        )
    return shared


def dimensions(ratio: str) -> tuple[int, int]:
    """Width and height near one megapixel for ``"W:H"``, multiples of 32 within 256..1440."""
    return size_near_area(ratio, _TARGET_AREA, _STEP, _MIN_SIDE, _MAX_SIDE)


class BflAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_key = settings.bfl_api_key is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.bfl_base_url, refine_error,
            headers=key_headers(settings.bfl_api_key, "x-key", scheme=""),
        )
        base = urlsplit(self.http.base_url)
        self._scheme = base.scheme or "https"
        self._base_host = (base.hostname or "").lower()
        self._domain = ".".join(self._base_host.split(".")[-2:])

    def configured(self) -> bool:
        return self._has_key and bool(self._base_host)

    # -- submit ---------------------------------------------------------------------

    def request_body(self, job: ProviderJob, index: int = 0) -> dict[str, Any]:
        """The native body of the ``index``-th task of a job."""
        body: dict[str, Any] = {"prompt": job.prompt}
        model = job.native_model_id.lower()
        uses_aspect = "kontext" in model or "ultra" in model
        ratio_name = job.name("generation_ratio", "aspect_ratio" if uses_aspect else WIDTH_HEIGHT)
        ratio = job.value("generation_ratio", job.ratio)
        if ratio_name == WIDTH_HEIGHT:
            body["width"], body["height"] = exact_pixels(str(ratio)) or dimensions(str(ratio))
        else:
            body[ratio_name] = ratio
        body[job.name("generation_output_format", "output_format")] = job.translated(
            "generation_output_format", job.output_format, _NATIVE_FORMATS
        )
        if job.seed is not None:
            # Distinct seeds, or N tasks would paint the same picture N times.
            body[job.name("generation_seed", "seed")] = (job.seed + index) % 2**32
        negative = job.specific.get("generation_negative_prompt")
        negative_name = job.field_names.get("generation_negative_prompt")  # FLUX has none by default
        if negative and negative_name:
            body[negative_name] = negative
        image_name = job.name("generation_input_file", "input_image")
        for position, image in enumerate(job.inputs):
            name = image_name if position == 0 else f"{image_name}_{position + 1}"
            body[name] = base64.b64encode(image.data).decode()
        body.update(job.params)
        return body

    async def submit(self, job: ProviderJob) -> str:
        entries = []
        for index in range(max(1, job.output_number)):
            answer = await self._post(f"/v1/{job.native_model_id}", self.request_body(job, index), index)
            task_id = answer.get("id") if isinstance(answer, dict) else None
            if not isinstance(task_id, str) or not task_id or "," in task_id or "@" in task_id:
                raise ProviderError("bse_provider_error", "bfl answered without a usable task id.", True)
            entries.append(self._entry(task_id, self._polling_url(answer.get("polling_url"))))
        return ",".join(entries)

    def _entry(self, task_id: str, polling_url: str | None) -> str:
        """How the task is kept in the prediction id, which records show and which is stored in
        200 characters: the usual polling URL (``/v1/get_result?id=`` on a host) as the short
        ``<id>@<host>`` it is rebuilt from, identically; any other one whole."""
        if polling_url is None:
            return task_id
        parts = urlsplit(polling_url)
        host = (parts.hostname or "").lower()
        if (
            parts.scheme == self._scheme
            and parts.port is None
            and parts.path == "/v1/get_result"
            and parts.query == f"id={task_id}"
            and not parts.fragment
        ):
            return task_id if host == self._base_host else f"{task_id}@{host}"
        return f"{task_id}@{polling_url.replace(',', '%2C')}"

    async def _post(self, path: str, body: dict[str, Any], index: int) -> Any:
        for attempt in range(_LATER_TASK_RATE_LIMIT_RETRIES + 1):
            try:
                return await self.http.json("POST", path, json=body)
            except ProviderError as exc:
                wait = exc.retry_after if exc.retry_after is not None else self.http.poll_interval
                if (
                    index == 0  # nothing is running yet: the chain may retry or move on freely
                    or exc.http_status != 429
                    or wait > MAX_RETRY_AFTER_SECONDS
                    or attempt == _LATER_TASK_RATE_LIMIT_RETRIES
                ):
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _polling_url(self, polling_url: Any) -> str | None:
        """The polling URL as given, if the key may be sent there; otherwise None."""
        if not isinstance(polling_url, str) or any(c.isspace() for c in polling_url):
            return None
        parts = urlsplit(polling_url)
        if parts.scheme not in ("https", self._scheme) or not self._trusted((parts.hostname or "").lower()):
            return None
        return polling_url

    def _trusted(self, host: str) -> bool:
        return bool(host) and (host == self._base_host or host.endswith("." + self._domain))

    # -- wait -----------------------------------------------------------------------

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        outputs = []
        predict_time = 0.0
        for entry in prediction_id.split(","):
            task_id, _, where = entry.partition("@")
            result = await self._wait_one(task_id, where)
            outputs.append(self._output(job, result))
            duration = result.get("duration")
            if isinstance(duration, int | float):
                predict_time = max(predict_time, float(duration))
        return ProviderResult(outputs=outputs, predict_time=predict_time or None)

    async def _wait_one(self, task_id: str, where: str) -> dict[str, Any]:
        """Poll one task: at its polling URL as given (``where`` holds one), else at
        ``/v1/get_result`` on the host ``where`` names (ids written before) or the configured one."""
        polling_url = self._polling_url(where) if "://" in where else None
        if polling_url is not None:
            data = await self.http.poll_while(polling_url, _pending)
        else:
            host = where.lower() if "://" not in where and self._trusted(where.lower()) else self._base_host
            url = f"{self._scheme}://{host}/v1/get_result"
            data = await self.http.poll_while(url, _pending, params={"id": task_id})
        status = dig(data, "status")
        if status == "Ready":
            result = dig(data, "result")
            if not isinstance(result, dict) or not isinstance(result.get("sample"), str):
                raise ProviderError("bse_provider_error", "bfl reported Ready without a sample.", True)
            return result
        if status in _MODERATED:
            reasons = dig(data, "details", "Moderation Reasons")
            why = f" ({', '.join(map(str, reasons))})" if isinstance(reasons, list) and reasons else ""
            raise ProviderError(
                "bse_content_policy_violation",
                f"bfl refused the task: {status}{why}.",
                retryable=False,
            )
        if status == "Error":
            message = f"bfl task {task_id} failed: {_details(data)}"
            raise ProviderError("bse_provider_error", message, retryable=True)
        if status == "Task not found":
            message = f"bfl no longer knows task {task_id} (expired or never created)."
            raise ProviderError("bse_provider_error", message, retryable=True)
        raise ProviderError("bse_provider_error", "bfl sent a status answer without a status.", True)

    @staticmethod
    def _output(job: ProviderJob, result: dict[str, Any]) -> ProviderOutput:
        native = str(job.translated("generation_output_format", job.output_format, _NATIVE_FORMATS))
        ext = _EXTENSIONS.get(native.lower(), job.output_format)
        return ProviderOutput(
            ext=ext, content_type=_CONTENT_TYPES.get(ext, "application/octet-stream"), url=result["sample"]
        )

    async def cancel(self, prediction_id: str) -> bool:
        # The API offers no way to stop a task; it finishes (and is billed) regardless.
        return False


def _pending(data: Any) -> bool:
    """Pending, or a state this adapter does not know yet: polled again."""
    status = dig(data, "status")
    return isinstance(status, str) and status not in _SETTLED


def _details(data: Any) -> str:
    details = dig(data, "details")
    if details:
        return str(details)[:300]
    return "no details"
