"""The adapter protocol every inference provider implements.

An adapter turns one unified job into the provider's native calls and the native
answers back into outputs or a :class:`ProviderError` with a contract error name.
It knows nothing of the database, credits or storage: the worker owns those, and it
also fetches input files (safely) before the adapter sees them and downloads output
URLs (before they expire) after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from genplane.contract.errors import ErrorName
from genplane.contract.spec import GenerationSpec

# Failures that another provider would refuse just the same: the chain stops on them.
CHAIN_STOPPING_ERRORS = frozenset(
    {
        "bse_content_policy_violation",
        "bse_invalid_input",
        "bse_parameter_out_of_range",
        "bse_unsupported_parameter",
        "bse_file_too_large",
        "bse_file_too_small",
        "bse_unsupported_file_format",
        "bse_file_load_error",
        "bse_file_size_exceeded",
        "bse_file_download_error",
        "bse_unsafe_file_url",
    }
)


@dataclass(frozen=True)
class InputImage:
    """An input file the worker fetched and checked: the client's URL and its bytes."""

    url: str
    data: bytes
    content_type: str

    @property
    def data_uri(self) -> str:
        import base64

        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True, kw_only=True)
class ProviderJob(GenerationSpec):
    """One unified job for one provider, with the catalogue's mapping for that provider.

    ``params`` are fixed native parameters the catalogue sets for this model on this
    provider; ``field_names`` renames a unified field to the provider's parameter for
    this model, and ``value_maps`` translates unified values (``"16:9"`` ->
    ``"landscape_16_9"``). Adapters read them through :meth:`name` and :meth:`value`
    so that adding a model needs no code.
    """

    generation_id: str
    model_identifier: str
    native_model_id: str
    model_type: str
    params: dict[str, Any] = field(default_factory=dict)
    field_names: dict[str, str] = field(default_factory=dict)
    value_maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs: list[InputImage] = field(default_factory=list)
    last_frame: InputImage | None = None

    def name(self, unified: str, default: str) -> str:
        """The provider's parameter name for a unified field on this model."""
        return self.field_names.get(unified, default)

    def value(self, unified: str, value: Any) -> Any:
        """The provider's value for a unified field's value on this model."""
        mapping = self.value_maps.get(unified)
        if mapping is None:
            return value
        return mapping.get(str(value).lower() if isinstance(value, bool) else str(value), value)

    def put(self, body: dict[str, Any], unified: str, default: str, value: Any) -> None:
        """Send ``value`` as the model's parameter for ``unified``, translated for the model.

        Nothing is sent without a value, or when the catalogue maps the field to ``""``
        (a parameter this model lacks).
        """
        name = self.name(unified, default)
        if name and value is not None:
            body[name] = self.value(unified, value)

    def optional_name(self, unified: str, default: str | None) -> str | None:
        """The native name to send a unified field as, or None to leave it out: a field a
        protocol sends only when asked to (the catalogue's ``""`` leaves it out even where the
        protocol has a default name)."""
        if unified in self.field_names:
            return self.field_names[unified] or None
        return default

    def translated(self, unified: str, value: Any, spellings: Mapping[str, Any]) -> Any:
        """The catalogue's translation of a value when it has one, else the protocol's ``spellings``."""
        if unified in self.value_maps:
            return self.value(unified, value)
        return spellings.get(str(value), value)

    @property
    def seed(self) -> int | None:
        seed = self.specific.get("generation_seed")
        return int(seed) if seed is not None else None


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
    """A provider failure, already mapped to a contract error name (``bse_...``).

    ``retryable`` is what clients are told (the same request may succeed later);
    whether the worker moves on to the next provider is :attr:`stops_chain`.
    """

    error: ErrorName
    message: str
    retryable: bool
    retry_after: float | None = None
    http_status: int | None = None  # the provider's status code, when it answered

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def stops_chain(self) -> bool:
        return self.error in CHAIN_STOPPING_ERRORS


class PredictionLost(ProviderError):
    """The provider never answered this process for the prediction: its result was held by a
    process that is gone (synchronous providers). Nothing failed upstream, so the worker
    submits again to the same provider instead of recording a failure and failing over."""


class ProviderAdapter(Protocol):
    provider_id: str

    def configured(self) -> bool:
        """Whether credentials and endpoints are present; unconfigured providers are skipped."""
        ...

    async def submit(self, job: ProviderJob) -> str:
        """Start the job and return the provider's prediction id (or request id)."""
        ...

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        """Poll (or otherwise wait) until the job ends; raise ProviderError when it failed.

        Called again with the same ``prediction_id`` after a restart, so it must not
        depend on state kept between ``submit`` and ``wait`` other than the id.
        """
        ...

    async def cancel(self, prediction_id: str) -> bool:
        """Ask the provider to stop; True when the request was sent and accepted."""
        ...
