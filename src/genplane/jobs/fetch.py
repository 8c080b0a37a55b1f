"""Downloading the files jobs consume: clients' input images and providers' outputs.

The network side (public addresses only, DNS pinning, redirects re-checked, the byte
limit) is :class:`genplane.net.fetch.PinnedFetcher`'s; what is added here is what a
*job* needs from the bytes and from a failure:

* the bytes' type is sniffed from their magic numbers, never taken from headers; a
  client's image is decoded by Pillow in a worker thread behind a pixel-count guard (it
  goes on to providers, which want it whole); a provider's image is checked from its
  header and framing (:func:`genplane.mediatypes.image_size`: not cut short, within the
  pixel limit) and decoded whole only when its framing cannot be confirmed, as decoding
  costs far more than the rest of its job and it is stored as sent unless its format
  has to change;
* a client's input that cannot be used is an ``ApiError`` with the contract's names
  (``bse_unsupported_file_format``, ``bse_file_too_large``, ...) naming the field,
  download failures included (:meth:`FetchError.for_field`);
* a provider's output that cannot be downloaded is retried while the failure is
  transient, then is a retryable ``ProviderError`` so the chain moves on.

URLs are logged as host and path only: query strings are often signatures.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Literal

import structlog
from PIL import Image

from genplane.contract.errors import ApiError, ErrorName
from genplane.mediatypes import describe, image_size, sniff
from genplane.net.fetch import FetchError, PinnedFetcher, redact
from genplane.providers.base import ProviderError

log = structlog.get_logger("genplane.fetch")

Kind = Literal["image", "video"]

#: Images with more pixels than this are refused before they are decoded.
MAX_PIXELS = 100_000_000

_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str  # sniffed from the bytes, never taken from headers
    ext: str
    width: int | None = None
    height: int | None = None


_INPUT_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Image:
    width: int
    height: int


class _ImageError(Exception):
    def __init__(self, kind: Literal["too_large", "load"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _inspect_image(data: bytes, pil_format: str) -> _Image:
    """Check an image's size from its header, then decode it fully. Runs in a thread."""
    try:
        # Image.open reads the header only; the size is checked before any decoding.
        with Image.open(io.BytesIO(data), formats=[pil_format]) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise _ImageError(
                    "too_large",
                    f"the image is {width}x{height}, over {MAX_PIXELS // 1_000_000} megapixels",
                )
            img.verify()
        # verify() leaves the image unusable; decode a fresh one to catch truncation.
        with Image.open(io.BytesIO(data), formats=[pil_format]) as img:
            img.load()
    except _ImageError:
        raise
    except Image.DecompressionBombError as exc:
        log.info("fetch.image_refused", format=pil_format, error=str(exc))
        raise _ImageError("too_large", "the image has too many pixels") from exc
    except Exception as exc:  # Pillow raises many types for corrupt files; their text is log-only
        log.info("fetch.image_undecodable", format=pil_format, error=repr(exc))
        raise _ImageError("load", f"the {pil_format} image could not be decoded") from exc
    return _Image(width, height)


# --------------------------------------------------------------------------- fetcher


class FileFetcher(PinnedFetcher):
    """Downloads the files jobs use from URLs that came from clients or providers.

    It is built like :class:`PinnedFetcher`; ``backoff`` is the first delay between output
    download attempts (doubled each time, at most ``max_backoff``; a ``Retry-After`` is
    honoured up to that cap).
    """

    backoff: float = 0.5
    max_backoff: float = 10.0

    # ----------------------------------------------------------------- public API

    async def fetch_input_image(
        self,
        url: str,
        field: str,
        *,
        max_bytes: int,
        min_side: int | None = None,
        max_side: int | None = None,
    ) -> Fetched:
        """Download a client's input image safely and check it; errors are ApiError
        with the contract's names and ``details={'field': field}``."""
        try:
            data = await self.download(url, max_bytes)
        except FetchError as failure:
            log.info("fetch.input_refused", field=field, url=redact(url), reason=failure.kind,
                     status=failure.status)
            raise failure.for_field(field) from None

        sniffed = sniff(data)
        if sniffed is None or sniffed.content_type not in _INPUT_FORMATS:
            raise ApiError(
                "bse_unsupported_file_format",
                f"{field}: the file is {describe(sniffed)}; input images must be JPEG, PNG or WebP.",
                details={"field": field},
            )
        try:
            image = await asyncio.to_thread(_inspect_image, data, _INPUT_FORMATS[sniffed.content_type])
        except _ImageError as exc:
            name: ErrorName = "bse_file_too_large" if exc.kind == "too_large" else "bse_file_load_error"
            raise ApiError(name, f"{field}: {exc.message}.", details={"field": field}) from None

        longest, shortest = max(image.width, image.height), min(image.width, image.height)
        if max_side is not None and longest > max_side:
            raise ApiError(
                "bse_file_too_large",
                f"{field}: the image is {image.width}x{image.height}; "
                f"its sides may be at most {max_side} pixels.",
                details={"field": field},
            )
        if min_side is not None and shortest < min_side:
            raise ApiError(
                "bse_file_too_small",
                f"{field}: the image is {image.width}x{image.height}; "
                f"its sides must be at least {min_side} pixels.",
                details={"field": field},
            )
        return Fetched(data, sniffed.content_type, sniffed.ext, image.width, image.height)

    async def fetch_output(
        self,
        url: str,
        *,
        max_bytes: int,
        kind: Kind,
        attempts: int = 3,
    ) -> Fetched:
        """Download a provider's output.

        Transient failures (5xx, 408/425/429, connection errors, timeouts) are retried
        with backoff, ``attempts`` times in all; anything else fails at once. Raises
        ``ProviderError('bse_provider_error', ..., retryable=True)`` with a message
        saying why when it cannot.
        """
        attempts = max(1, attempts)
        last: FetchError | None = None
        for attempt in range(1, attempts + 1):
            try:
                data = await self.download(url, max_bytes)
                break
            except FetchError as failure:
                last = failure
                if not failure.transient or attempt == attempts:
                    log.warning("fetch.output_failed", url=redact(url), reason=failure.kind,
                                status=failure.status, attempt=attempt, attempts=attempts)
                    raise self._output_error(failure, attempt) from None
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                if failure.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, failure.retry_after))
                log.info("fetch.output_retry", url=redact(url), reason=failure.kind,
                         status=failure.status, attempt=attempt, delay=delay)
                await asyncio.sleep(delay)
        else:  # pragma: no cover - the loop always breaks or raises
            raise self._output_error(last or FetchError("unreachable", "no attempt was made"), attempts)

        sniffed = sniff(data)
        if sniffed is None or sniffed.kind != kind or not sniffed.supported:
            what = "an image" if kind == "image" else "a video"
            got = describe(sniffed)
            if sniffed is not None and sniffed.kind == kind:
                message = f"the provider returned {got}, which genplane does not store"
            else:
                message = f"the provider returned {got} where {what} was expected"
            raise ProviderError("bse_provider_error", message, retryable=True)
        if sniffed.kind == "video":
            return Fetched(data, sniffed.content_type, sniffed.ext)
        size = image_size(data)
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            problem = f"the image is {size[0]}x{size[1]}, over {MAX_PIXELS // 1_000_000} megapixels"
            raise ProviderError("bse_provider_error", f"the provider's output is unusable: {problem}", True)
        if size is None:
            # Framing not confirmed (cut short? padded oddly?): a full decode decides, and says why.
            try:
                image = await asyncio.to_thread(_inspect_image, data, _INPUT_FORMATS[sniffed.content_type])
            except _ImageError as exc:
                raise ProviderError(
                    "bse_provider_error", f"the provider's output is unusable: {exc.message}", retryable=True
                ) from None
            size = image.width, image.height
        return Fetched(data, sniffed.content_type, sniffed.ext, size[0], size[1])

    # ----------------------------------------------------------------- errors

    @staticmethod
    def _output_error(failure: FetchError, attempts: int) -> ProviderError:
        if failure.kind == "status" and failure.status in _EXPIRED_STATUSES:
            message = (
                f"the output URL answered HTTP {failure.status}: it has expired or is not accessible"
            )
        elif failure.kind == "unsafe":
            message = f"the output URL is refused: {failure.message}"
        elif failure.kind == "too_big":
            message = f"the output is too large: {failure.message}"
        else:
            message = f"the output could not be downloaded: {failure.message}"
        if failure.transient and attempts > 1:
            message += f" (after {attempts} attempts)"
        return ProviderError("bse_provider_error", message, retryable=True, http_status=failure.status)
