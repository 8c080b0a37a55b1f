"""The OpenAI Images API request, which OpenAI and every OpenAI-compatible server speak.

The same fields go to ``POST /v1/images/generations`` as JSON or, once there are input
images, as multipart to ``POST /v1/images/edits`` with one ``image`` part (or ``image[]``
parts for several). Reading the answer is left to the caller: OpenAI and self-hosted
servers differ in what they put in ``data[]`` and in which URLs may be fetched.
"""

from __future__ import annotations

from typing import Any

from genplane.providers.base import ProviderJob
from genplane.providers.forms import form_fields
from genplane.providers.http import ProviderHttp
from genplane.providers.outputs import ext_for


async def images_answer(
    http: ProviderHttp, job: ProviderJob, fields: dict[str, Any], request_timeout: float
) -> Any:
    """The decoded answer of one generations (or, with input images, edits) call."""
    if not job.inputs:
        response = await http.send(
            "POST", "/v1/images/generations", json=fields, request_timeout=request_timeout
        )
        return http.decode(response)
    part = "image" if len(job.inputs) == 1 else "image[]"
    files = [
        (part, (f"input-{i}.{ext_for('', job, image.content_type)}", image.data, image.content_type))
        for i, image in enumerate(job.inputs)
    ]
    response = await http.send(
        "POST", "/v1/images/edits", data=form_fields(fields), files=files, request_timeout=request_timeout
    )
    return http.decode(response)
