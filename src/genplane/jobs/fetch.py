"""The one way genplane downloads files from URLs it did not choose.

Clients' input images (``generation_input_file``) and providers' output URLs both
come from outside, so every download goes through :class:`FileFetcher`:

* only ``http``/``https`` URLs without userinfo, whose host is a public address: a
  literal IP is checked as is, a hostname is resolved and *every* address it
  resolves to must be public (no loopback, private, link-local, CGNAT, metadata,
  IPv4-mapped private, unique-local or site-local addresses);
* the connection is pinned to the address that was checked (the request goes to
  ``scheme://<ip>:<port>/path`` with the original ``Host`` header and, for https,
  the original name as SNI, so the certificate is still verified against it), so a
  DNS answer that changes between check and connect (rebinding) cannot redirect it;
* redirects are followed by hand, a bounded number of times, and every hop is
  checked again;
* the body is streamed and abandoned as soon as it is over the byte limit;
* the bytes' type is sniffed from their magic numbers, never taken from headers,
  and images are decoded by Pillow in a worker thread behind a pixel-count guard.

Hosts in ``allow_hosts`` (developers' ``127.0.0.1``, a local object store, tests'
fake hosts) skip the public check and are requested by name.

URLs are logged as host and path only: query strings are often signatures.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog
from PIL import Image

from genplane.addresses import (
    NUMERIC_LABEL,
    IPAddress,
    is_public_address,
    literal_ip,
    normalise_host,
    system_resolver,
)
from genplane.contract.errors import ApiError, ErrorName
from genplane.mediatypes import describe, sniff
from genplane.providers.base import ProviderError

log = structlog.get_logger("genplane.fetch")

Resolver = Callable[[str, int], Awaitable[list[str]]]
Kind = Literal["image", "video"]

#: Images with more pixels than this are refused before they are decoded.
MAX_PIXELS = 100_000_000

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})

@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str  # sniffed from the bytes, never taken from headers
    ext: str
    width: int | None = None
    height: int | None = None


_INPUT_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def redact(url: str | httpx.URL) -> str:
    """``scheme://host[:port]/path``: the URL without userinfo, query and fragment."""
    try:
        u = httpx.URL(url) if isinstance(url, str) else url
        return str(u.copy_with(userinfo=None, query=None, fragment=None))
    except Exception:
        return "<invalid url>"


# --------------------------------------------------------------------------- internals


class _Failure(Exception):
    """Why a download failed, before it is turned into an ApiError or a ProviderError."""

    def __init__(
        self,
        kind: Literal["unsafe", "unreachable", "status", "too_big", "redirects", "broken"],
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        if self.kind == "unreachable":
            return True
        return self.kind == "status" and self.status is not None and (
            self.status >= 500 or self.status in (408, 425, 429)
        )


@dataclass(frozen=True)
class Target:
    """Where one hop goes: the URL as given and the URLs actually requested."""

    url: httpx.URL
    requests: list[httpx.URL]  # pinned to each checked address, in order; or the URL itself
    headers: dict[str, str]
    extensions: dict[str, str]


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


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


# --------------------------------------------------------------------------- fetcher


class FileFetcher:
    """Downloads files from URLs that came from clients or providers, safely.

    ``client`` should be a shared client; redirects are never followed by it (each
    request passes ``follow_redirects=False``). ``resolver`` maps ``(host, port)`` to
    addresses (default: the event loop's ``getaddrinfo``). ``timeout`` bounds one
    whole download, redirects included, against servers that trickle bytes;
    ``backoff`` is the first delay between output download attempts (doubled each
    time, at most ``max_backoff``; a ``Retry-After`` is honoured up to that cap).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        allow_hosts: Sequence[str] = (),
        resolver: Resolver | None = None,
        max_redirects: int = 3,
        *,
        timeout: float = 120.0,
        resolve_timeout: float = 10.0,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self.client = client
        self.allow_hosts = frozenset(normalise_host(h) for h in allow_hosts if h.strip())
        self.resolver: Resolver = resolver or system_resolver
        self.max_redirects = max_redirects
        self.timeout = timeout
        self.resolve_timeout = resolve_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff

    # ----------------------------------------------------------------- public API

    async def check_public(self, url: str, field: str) -> None:
        """Raise ``bse_unsafe_file_url`` unless the URL is http(s) and its host (a
        literal IP, or every address DNS gives for it) is a public address.

        A host that does not resolve at all is ``bse_file_download_error``: it is
        unreachable rather than unsafe. Allow-listed hosts always pass.
        """
        try:
            await self._plan(url)
        except _Failure as failure:
            raise self._input_error(failure, field) from None

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
            data = await self._download(url, max_bytes)
        except _Failure as failure:
            log.info("fetch.input_refused", field=field, url=redact(url), reason=failure.kind,
                     status=failure.status)
            raise self._input_error(failure, field) from None

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
        last: _Failure | None = None
        for attempt in range(1, attempts + 1):
            try:
                data = await self._download(url, max_bytes)
                break
            except _Failure as failure:
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
            raise self._output_error(last or _Failure("unreachable", "no attempt was made"), attempts)

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
        try:
            image = await asyncio.to_thread(_inspect_image, data, _INPUT_FORMATS[sniffed.content_type])
        except _ImageError as exc:
            raise ProviderError(
                "bse_provider_error", f"the provider's output is unusable: {exc.message}", retryable=True
            ) from None
        return Fetched(data, sniffed.content_type, sniffed.ext, image.width, image.height)

    # ----------------------------------------------------------------- errors

    @staticmethod
    def _input_error(failure: _Failure, field: str) -> ApiError:
        details = {"field": field}
        if failure.kind == "unsafe":
            return ApiError("bse_unsafe_file_url", f"{field}: {failure.message}.", details=details)
        if failure.kind == "too_big":
            return ApiError("bse_file_size_exceeded", f"{field}: {failure.message}.", details=details)
        return ApiError("bse_file_download_error", f"{field}: {failure.message}.", details=details)

    @staticmethod
    def _output_error(failure: _Failure, attempts: int) -> ProviderError:
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

    async def plan_destination(self, url: str) -> Target:
        """Check a destination URL chosen by a client (a webhook) and pin its addresses.

        Raises ``ValueError`` with a reason when it is not http(s), not public, or does
        not resolve; the caller sends to ``target.requests`` with ``target.headers`` and
        ``target.extensions``, so the connection goes to an address that was checked.
        """
        try:
            return await self._plan(url)
        except _Failure as failure:
            raise ValueError(failure.message) from None

    # ----------------------------------------------------------------- URL checks

    async def _plan(self, url: str | httpx.URL) -> Target:
        """Check one URL and decide which addresses to connect to; raise _Failure."""
        try:
            u = httpx.URL(url) if isinstance(url, str) else url
        except Exception:
            raise _Failure("unsafe", "the URL is not valid") from None
        if u.scheme not in ("http", "https"):
            raise _Failure("unsafe", "only http and https URLs are accepted")
        if u.userinfo:
            raise _Failure("unsafe", "URLs with credentials (user@host) are not accepted")
        try:
            host = u.raw_host.decode("ascii")
        except UnicodeDecodeError:
            raise _Failure("unsafe", "the URL's host is not valid") from None
        if not host:
            raise _Failure("unsafe", "the URL has no host")
        port = u.port or (443 if u.scheme == "https" else 80)
        normalised = normalise_host(host)
        if normalised in self.allow_hosts:
            return Target(u, [u], {}, {})

        literal = literal_ip(host)
        if literal is not None:
            if not is_public_address(literal):
                raise _Failure("unsafe", "the URL points to a non-public address")
            return Target(u, [u], {}, {})
        labels = normalised.split(".")
        if NUMERIC_LABEL.match(labels[-1]) or any(c in host for c in "%[]:"):
            raise _Failure("unsafe", "the URL's host is not a canonical IP address or a hostname")

        try:
            async with asyncio.timeout(self.resolve_timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise _Failure("unreachable", f"the host {host} could not be resolved in time") from None
        except Exception:
            # OSError from getaddrinfo, but also UnicodeError for a name the IDNA codec
            # refuses (a label over 63 characters): either way the host has no address.
            raise _Failure("unreachable", f"the host {host} could not be resolved") from None
        if not addresses:
            raise _Failure("unreachable", f"the host {host} could not be resolved")
        checked: list[IPAddress] = []
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise _Failure("unsafe", f"the host {host} resolves to an invalid address") from None
            if not is_public_address(ip):
                raise _Failure("unsafe", f"the host {host} resolves to a non-public address")
            if ip not in checked:
                checked.append(ip)

        host_header = host if u.port is None else f"{host}:{u.port}"
        extensions = {"sni_hostname": host} if u.scheme == "https" else {}
        pinned = [u.copy_with(host=str(ip)) for ip in checked]
        return Target(u, pinned, {"Host": host_header}, extensions)

    # ----------------------------------------------------------------- download

    async def _download(self, url: str, max_bytes: int) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(url, max_bytes)
        except TimeoutError:
            raise _Failure("unreachable", f"the download took longer than {self.timeout:g} s") from None
        except _Failure:
            raise
        except Exception as exc:
            # Whatever escaped the specific handlers (an httpx or Pillow corner case, a
            # bug) must still end as a fetch error: an exception leaving the fetcher
            # crashes the job, which is then re-claimed and crashes again. Its text may
            # hold paths or library internals, so it goes to the log only.
            # No traceback: exception texts and frames can hold the full URL, signature included.
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
            log.warning("fetch.unexpected_error", url=redact(url), error=type(exc).__name__, at=where)
            raise _Failure("broken", "the download failed") from None

    async def _follow(self, url: str, max_bytes: int) -> bytes:
        current: str | httpx.URL = url
        for hop in range(self.max_redirects + 1):
            target = await self._plan(current)
            location = await self._request(target, max_bytes)
            if isinstance(location, bytes):
                if hop:
                    log.debug("fetch.redirected", url=redact(target.url), hops=hop)
                return location
            try:
                current = target.url.join(location)
            except Exception:
                raise _Failure("unsafe", "a redirect's Location is not a valid URL") from None
        raise _Failure("redirects", f"more than {self.max_redirects} redirects")

    async def _request(self, target: Target, max_bytes: int) -> bytes | str:
        """Fetch one hop: its body, or the Location it redirects to."""
        last_error: Exception | None = None
        for request_url in target.requests:
            try:
                request = self.client.build_request(
                    "GET",
                    request_url,
                    headers={**target.headers, "Accept-Encoding": "identity"},
                    extensions=target.extensions or None,
                )
            except Exception:
                raise _Failure("unsafe", "the URL is not valid") from None
            try:
                response = await self.client.send(request, stream=True, follow_redirects=False)
            except httpx.InvalidURL:
                # The request itself was built above, so this is httpx preparing the
                # redirect it will not follow: it cannot for a Location with a scheme
                # but no host (data:, javascript:, mailto:, http:x).
                raise _Failure("unsafe", "the server redirected to a URL that cannot be fetched") from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Try the host's next checked address, as a browser would.
                last_error = exc
                continue
            except httpx.HTTPError as exc:
                raise self._transport_failure(exc) from None
            try:
                return await self._read(target, response, max_bytes)
            except httpx.HTTPError as exc:
                raise self._transport_failure(exc) from None
            finally:
                await response.aclose()
        name = type(last_error).__name__ if last_error else "no address"
        raise _Failure("unreachable", f"could not connect to {target.url.host} ({name})")

    @staticmethod
    def _transport_failure(exc: httpx.HTTPError) -> _Failure:
        """Name the exception's type only: its text can carry library internals."""
        if isinstance(exc, httpx.TimeoutException):
            return _Failure("unreachable", f"the server timed out ({type(exc).__name__})")
        if isinstance(exc, httpx.TransportError):
            return _Failure("unreachable", f"the connection failed ({type(exc).__name__})")
        # DecodingError, TooManyRedirects and the like: the server answered, but badly.
        return _Failure("broken", f"the server's answer could not be read ({type(exc).__name__})")

    async def _read(self, target: Target, response: httpx.Response, max_bytes: int) -> bytes | str:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = str(response.headers.get("location") or "")
            if not location:
                raise _Failure("status", f"HTTP {status} without a Location", status=status)
            return location
        if not 200 <= status < 300:
            raise _Failure(
                "status",
                f"the server answered HTTP {status}",
                status=status,
                retry_after=_parse_retry_after(response.headers.get("retry-after")),
            )
        declared = response.headers.get("content-length")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if declared and declared.isdigit() and encoding in ("", "identity") and int(declared) > max_bytes:
            raise _Failure(
                "too_big", f"the file is {_mb(int(declared))}, over the {_mb(max_bytes)} limit"
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise _Failure("too_big", f"the file is over the {_mb(max_bytes)} limit")
            chunks.append(chunk)
        log.debug("fetch.downloaded", url=redact(target.url), bytes=total)
        return b"".join(chunks)
