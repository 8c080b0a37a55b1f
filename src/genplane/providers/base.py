"""The adapter protocol every inference provider implements.

An adapter turns one unified job into the provider's native calls and the native
answers back into outputs or a :class:`ProviderError` with a contract error name.
It knows nothing of the database, credits or storage: the worker owns those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ProviderJob:
    generation_id: str
    model_identifier: str
    native_model_id: str
    model_type: str
    prompt: str
    ratio: str
    output_format: str
    output_number: int
    input_file: list[str] | None = None
    input_file_last_content: str | None = None
    duration: int | None = None
    resolution: str | None = None
    generate_audio: bool | None = None
    specific: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderOutput:
    """One output: raw bytes, or a URL the worker downloads before it expires."""

    ext: str
    content_type: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class ProviderResult:
    outputs: list[ProviderOutput]
    predict_time: float | None = None


@dataclass
class ProviderError(Exception):
    """A provider failure, already mapped to a contract error name (``bse_...``)."""

    error: str
    message: str
    retryable: bool
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


class ProviderAdapter(Protocol):
    provider_id: str

    def configured(self) -> bool:
        """Whether credentials and endpoints are present; unconfigured providers are skipped."""
        ...

    async def submit(self, job: ProviderJob) -> str:
        """Start the job and return the provider's prediction id."""
        ...

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        """Block (asynchronously) until the job ends; raise ProviderError when it failed."""
        ...

    async def cancel(self, prediction_id: str) -> bool:
        """Ask the provider to stop; True when the request was sent."""
        ...
