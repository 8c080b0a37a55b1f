"""Replicate: predictions created over HTTP, then polled by id until they end.

Protocol facts this adapter relies on:

- Official models (``owner/name`` in the catalogue) run without a version at
  ``POST /v1/models/{owner}/{name}/predictions``; any other model must be pinned to a
  version (``owner/name:<version>`` or the bare 64-hex version id) and runs at
  ``POST /v1/predictions`` with ``version`` in the body. Both take ``{"input": {...}}``
  and authenticate with ``Authorization: Bearer <token>``.
- A prediction has a global id readable at ``GET /v1/predictions/{id}`` from any
  process, so the id alone is enough to resume after a restart. Several ids (one
  prediction per output, for models that make one image per call) are joined by ``,``.
- ``Prefer: wait`` is deliberately not sent: it holds the create call open until the
  model finishes, and the worker records the prediction id only after ``submit``
  returns. A crash inside that window would pay for a prediction nobody waits on.
- ``status`` goes ``starting`` -> ``processing`` -> ``succeeded`` | ``failed`` |
  ``canceled`` (``aborted`` when it was stopped before it started). The reason of a
  failure is free text in ``error``; safety-checker refusals are recognised by their
  wording (NSFW, "flagged as sensitive" / E005), since the API has no separate status.
- ``output`` is whatever the model returns: a URL, a list of URLs, occasionally an
  object holding them (or a data URI). File URLs expire after about an hour, which is
  why outputs are handed back as URLs for the worker to download at once.
- Errors of the API itself are RFC 7807 problem documents with the meaningful HTTP
  status (401, 402 out of credit, 422 invalid input, 429 with Retry-After); the shared
  mapping in ``http.py`` turns those into contract errors.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx

from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.hosted_models import CustomaryNames, model_input, one_call_per_output
from genplane.providers.http import ProviderHttp, dig, key_headers
from genplane.providers.outputs import canceled_upstream, output_for
from genplane.settings import Settings

PROVIDER = "replicate"
RUNNING = frozenset({"starting", "processing"})
_VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
# Wording of safety-checker refusals in ``error`` (model code and Replicate's own filter).
_MODERATION_MARKERS = (
    "nsfw",
    "flagged as sensitive",
    "(e005)",
    "moderated",
    "flagged as inappropriate",
    "safety filter",
    "safety check",
    "content policy",
    "sensitive content",
)
NAMES = CustomaryNames(
    output_number="num_outputs",
    image_input="image_input",
    frame_input="image",
    last_frame="last_frame_image",
    list_inputs=frozenset({"image_input", "input_images", "images", "reference_images", "image_urls"}),
)


def _urls(output: Any) -> list[str]:
    """Every file URL in a model's output, in order, whatever shape the model chose."""
    if isinstance(output, str):
        return [output] if output.startswith(("https://", "http://", "data:")) else []
    if isinstance(output, list):
        return [u for item in output for u in _urls(item)]
    if isinstance(output, dict):
        return [u for item in output.values() for u in _urls(item)]
    return []


class ReplicateAdapter:
    provider_id = PROVIDER

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._has_token = settings.replicate_api_token is not None
        self.http = ProviderHttp.for_settings(
            PROVIDER, client, settings, settings.replicate_base_url,
            headers=key_headers(settings.replicate_api_token),
        )

    def configured(self) -> bool:
        return self._has_token

    # -- request ---------------------------------------------------------------------

    def native_input(self, job: ProviderJob, index: int = 0, per_call: bool = False) -> dict[str, Any]:
        """The model's ``input`` object for one prediction.

        A unified field the catalogue maps to ``""`` is a parameter this model lacks:
        it is not sent (for ``generation_output_number`` that means one prediction per
        output, ``index`` numbering them).
        """
        body = model_input(job, NAMES, index, per_call)
        job.put(body, "generation_ratio", "aspect_ratio", job.ratio)
        if job.model_type == "image":
            job.put(body, "generation_output_format", "output_format", job.output_format)
        if job.model_type == "video":
            job.put(body, "generation_duration", "duration", job.duration)
        body.update(job.params)
        return body

    def _create_call(self, model_id: str, native_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The create path and body: official models by name, others by version."""
        model_id = model_id.strip()
        name, _, version = model_id.partition(":")
        if not version and _VERSION_ID.match(name):
            version, name = name, ""
        if version:
            return "/v1/predictions", {"version": version, "input": native_input}
        owner, _, model = name.partition("/")
        if not owner or not model or "/" in model:
            raise ProviderError(
                "bse_model_not_configured", f"{model_id!r} is not a Replicate model id.", retryable=False
            )
        return f"/v1/models/{quote(owner, safe='')}/{quote(model, safe='')}/predictions", {
            "input": native_input
        }

    async def submit(self, job: ProviderJob) -> str:
        per_call = one_call_per_output(job, NAMES)
        calls = job.output_number if per_call else 1
        ids: list[str] = []
        try:
            for index in range(calls):
                path, body = self._create_call(job.native_model_id, self.native_input(job, index, per_call))
                answer = await self.http.json("POST", path, json=body)
                prediction_id = dig(answer, "id")
                if not isinstance(prediction_id, str) or not prediction_id:
                    raise ProviderError("bse_provider_error", f"{PROVIDER} sent no prediction id.", True)
                ids.append(prediction_id)
        except ProviderError:
            for started in ids:  # a half-submitted batch is useless: stop paying for it
                await self._cancel_one(started)
            raise
        return ",".join(ids)

    # -- result ----------------------------------------------------------------------

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        ids = [p for p in prediction_id.split(",") if p]
        if not ids:
            raise ProviderError("bse_provider_error", f"Malformed {PROVIDER} prediction id.", False)
        outputs: list[ProviderOutput] = []
        predict_time: float | None = None
        for position, one in enumerate(ids):
            try:
                prediction = await self._until_done(one)
            except ProviderError:
                for other in ids[position + 1 :]:
                    await self._cancel_one(other)
                raise
            outputs.extend(output_for(PROVIDER, url, job) for url in _urls(prediction.get("output")))
            took = dig(prediction, "metrics", "predict_time")
            if isinstance(took, int | float):
                predict_time = max(predict_time or 0.0, float(took))
        if not outputs:
            raise ProviderError("bse_provider_error", f"{PROVIDER} finished without any output file.", True)
        return ProviderResult(outputs=outputs[: job.output_number], predict_time=predict_time)

    async def _until_done(self, prediction_id: str) -> dict[str, Any]:
        path = f"/v1/predictions/{quote(prediction_id, safe='')}"
        prediction = await self.http.poll_while(path, lambda answer: dig(answer, "status") in RUNNING)
        status = dig(prediction, "status")
        if status == "succeeded":
            return dict(prediction)
        if status == "failed":
            raise self.failure(prediction_id, dig(prediction, "error"))
        if status in ("canceled", "aborted"):
            raise canceled_upstream(PROVIDER, prediction_id)
        raise ProviderError(
            "bse_provider_error", f"{PROVIDER} reported an unknown status {str(status)[:40]!r}.", True
        )

    @staticmethod
    def failure(prediction_id: str, error: Any) -> ProviderError:
        text = (str(error) if error else "no reason given").replace("\n", " ").strip()[:300]
        lowered = text.lower()
        if any(marker in lowered for marker in _MODERATION_MARKERS):
            return ProviderError(
                "bse_content_policy_violation",
                f"{PROVIDER} refused the content of prediction {prediction_id}: {text}",
                retryable=False,
            )
        return ProviderError(
            "bse_provider_error", f"{PROVIDER} prediction {prediction_id} failed: {text}", retryable=True
        )

    # -- cancel ----------------------------------------------------------------------

    async def cancel(self, prediction_id: str) -> bool:
        results = [await self._cancel_one(one) for one in prediction_id.split(",") if one]
        return bool(results) and all(results)

    async def _cancel_one(self, prediction_id: str) -> bool:
        path = f"/v1/predictions/{quote(prediction_id, safe='')}/cancel"
        return await self.http.accepted("POST", path)
