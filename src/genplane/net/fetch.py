"""The pinned fetcher: HTTP to URLs genplane did not choose, on addresses it checked.

Clients' input images, providers' output URLs and webhook destinations all come from
outside, so every such request goes through :class:`PinnedFetcher`:

* only ``http``/``https`` URLs without userinfo, whose host is a public address: a
  literal IP is checked as is, a hostname is resolved and *every* address it
  resolves to must be public (see :mod:`genplane.net.addresses`);
* the connection is pinned to the address that was checked (the request goes to
  ``scheme://<ip>:<port>/path`` with the original ``Host`` header and, for https,
  the original name as SNI, so the certificate is still verified against it), so a
  DNS answer that changes between check and connect (rebinding) cannot redirect it;
* redirects are followed by hand, a bounded number of times, and every hop is
  checked again;
* the body is streamed and abandoned as soon as it is over the byte limit.

Hosts in ``allow_hosts`` (developers' ``127.0.0.1``, a local object store, tests'
fake hosts) skip the public check and are requested by name.

Failures are :class:`FetchError`, which says what went wrong on the wire. For a URL a
client sent (an input file), it also knows the contract's error, because the request
check and the job's download must name a refusal alike and neither can import the
other; every other caller reads it its own way (the provider chain as a provider
error, the webhook sender as a delivery's ``last_error``).

URLs are logged as host and path only: query strings are often signatures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
import structlog

from genplane.contract.errors import ApiError, ErrorName
from genplane.net.addresses import (
    NUMERIC_LABEL,
    IPAddress,
    Resolver,
    is_public_address,
    literal_ip,
    normalise_host,
    system_resolver,
)
from genplane.net.retry_after import parse_retry_after

log = structlog.get_logger("genplane.fetch")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: Why a fetch failed: the URL or an address is refused (``unsafe``), the host could not
#: be resolved, reached or waited for (``unreachable``), it answered a non-2xx status
#: (``status``), the body is over the limit (``too_big``), there were too many redirects
#: (``redirects``), or the answer could not be read (``broken``).
FailureKind = Literal["unsafe", "unreachable", "status", "too_big", "redirects", "broken"]


class FetchError(Exception):
    """A fetch that failed, with a message safe to show whoever supplied the URL.

    The message never holds the URL's query or a library's exception text. ``status``
    and ``retry_after`` (seconds, from the answer's header) are set for ``status``
    failures.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Whether the same request may well succeed later (connection trouble, 5xx, 408/425/429)."""
        if self.kind == "unreachable":
            return True
        return self.kind == "status" and self.status is not None and (
            self.status >= 500 or self.status in (408, 425, 429)
        )

    @property
    def error_name(self) -> ErrorName:
        """The contract's name for this failure when a client supplied the URL."""
        if self.kind == "unsafe":
            return "bse_unsafe_file_url"
        if self.kind == "too_big":
            return "bse_file_size_exceeded"
        return "bse_file_download_error"

    def for_field(self, field: str) -> ApiError:
        """The contract's error for a client's URL given in ``field`` of a request."""
        return ApiError(self.error_name, f"{field}: {self.message}.", details={"field": field})


@dataclass(frozen=True)
class Target:
    """Where one hop goes: the URL as given and the URLs actually requested.

    A caller sending its own request (a webhook's POST) tries ``requests`` in order with
    ``headers`` and ``extensions`` added, and never follows a redirect.
    """

    url: httpx.URL
    requests: list[httpx.URL]  # pinned to each checked address, in order; or the URL itself
    headers: dict[str, str]
    extensions: dict[str, str]


def redact(url: str | httpx.URL) -> str:
    """``scheme://host[:port]/path``: the URL without userinfo, query and fragment."""
    try:
        u = httpx.URL(url) if isinstance(url, str) else url
        return str(u.copy_with(userinfo=None, query=None, fragment=None))
    except Exception:
        return "<invalid url>"


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


class PinnedFetcher:
    """Checks URLs and downloads from them without ever leaving the checked addresses.

    ``client`` should be a shared client; redirects are never followed by it (each
    request passes ``follow_redirects=False``). ``resolver`` maps ``(host, port)`` to
    addresses (default: the event loop's ``getaddrinfo``). ``timeout`` bounds one
    whole download, redirects included, against servers that trickle bytes.
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
    ) -> None:
        self.client = client
        self.allow_hosts = frozenset(normalise_host(h) for h in allow_hosts if h.strip())
        self.resolver: Resolver = resolver or system_resolver
        self.max_redirects = max_redirects
        self.timeout = timeout
        self.resolve_timeout = resolve_timeout

    # ----------------------------------------------------------------- URL checks

    async def check_public(self, url: str, field: str) -> None:
        """Raise ``bse_unsafe_file_url`` unless a client's URL in ``field`` is http(s) and
        its host (a literal IP, or every address DNS gives for it) is a public address.

        A host that does not resolve at all is ``bse_file_download_error``: it is
        unreachable rather than unsafe. Allow-listed hosts always pass. Nothing is
        downloaded: this is the check at request time, repeated by the download.
        """
        try:
            await self.plan(url)
        except FetchError as failure:
            raise failure.for_field(field) from None

    async def plan(self, url: str | httpx.URL) -> Target:
        """Check one URL and decide which addresses to connect to.

        Raises :class:`FetchError`: ``unsafe`` when the URL is not http(s) or its host
        is not public, ``unreachable`` when the host does not resolve (in time).
        Allow-listed hosts always pass and are requested by name.
        """
        try:
            u = httpx.URL(url) if isinstance(url, str) else url
        except Exception:
            raise FetchError("unsafe", "the URL is not valid") from None
        if u.scheme not in ("http", "https"):
            raise FetchError("unsafe", "only http and https URLs are accepted")
        if u.userinfo:
            raise FetchError("unsafe", "URLs with credentials (user@host) are not accepted")
        try:
            host = u.raw_host.decode("ascii")
        except UnicodeDecodeError:
            raise FetchError("unsafe", "the URL's host is not valid") from None
        if not host:
            raise FetchError("unsafe", "the URL has no host")
        port = u.port or (443 if u.scheme == "https" else 80)
        normalised = normalise_host(host)
        if normalised in self.allow_hosts:
            return Target(u, [u], {}, {})

        literal = literal_ip(host)
        if literal is not None:
            if not is_public_address(literal):
                raise FetchError("unsafe", "the URL points to a non-public address")
            return Target(u, [u], {}, {})
        labels = normalised.split(".")
        if NUMERIC_LABEL.match(labels[-1]) or any(c in host for c in "%[]:"):
            raise FetchError("unsafe", "the URL's host is not a canonical IP address or a hostname")

        try:
            async with asyncio.timeout(self.resolve_timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise FetchError("unreachable", f"the host {host} could not be resolved in time") from None
        except Exception:
            # OSError from getaddrinfo, but also UnicodeError for a name the IDNA codec
            # refuses (a label over 63 characters): either way the host has no address.
            raise FetchError("unreachable", f"the host {host} could not be resolved") from None
        if not addresses:
            raise FetchError("unreachable", f"the host {host} could not be resolved")
        checked: list[IPAddress] = []
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise FetchError("unsafe", f"the host {host} resolves to an invalid address") from None
            if not is_public_address(ip):
                raise FetchError("unsafe", f"the host {host} resolves to a non-public address")
            if ip not in checked:
                checked.append(ip)

        host_header = host if u.port is None else f"{host}:{u.port}"
        extensions = {"sni_hostname": host} if u.scheme == "https" else {}
        pinned = [u.copy_with(host=str(ip)) for ip in checked]
        return Target(u, pinned, {"Host": host_header}, extensions)

    # ----------------------------------------------------------------- download

    async def download(self, url: str, max_bytes: int) -> bytes:
        """The body of a GET to ``url``, redirects followed and checked; raises FetchError.

        Nothing else escapes: a download that fails in an unforeseen way is ``broken``.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(url, max_bytes)
        except TimeoutError:
            raise FetchError("unreachable", f"the download took longer than {self.timeout:g} s") from None
        except FetchError:
            raise
        except Exception as exc:
            # Whatever escaped the specific handlers (an httpx corner case, a bug) must
            # still end as a fetch error: an exception leaving the fetcher crashes the
            # job, which is then re-claimed and crashes again. Its text may hold paths
            # or library internals, so it goes to the log only.
            # No traceback: exception texts and frames can hold the full URL, signature included.
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
            log.warning("fetch.unexpected_error", url=redact(url), error=type(exc).__name__, at=where)
            raise FetchError("broken", "the download failed") from None

    async def _follow(self, url: str, max_bytes: int) -> bytes:
        current: str | httpx.URL = url
        for hop in range(self.max_redirects + 1):
            target = await self.plan(current)
            location = await self._request(target, max_bytes)
            if isinstance(location, bytes):
                if hop:
                    log.debug("fetch.redirected", url=redact(target.url), hops=hop)
                return location
            try:
                current = target.url.join(location)
            except Exception:
                raise FetchError("unsafe", "a redirect's Location is not a valid URL") from None
        raise FetchError("redirects", f"more than {self.max_redirects} redirects")

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
                raise FetchError("unsafe", "the URL is not valid") from None
            try:
                response = await self.client.send(request, stream=True, follow_redirects=False)
            except httpx.InvalidURL:
                # The request itself was built above, so this is httpx preparing the
                # redirect it will not follow: it cannot for a Location with a scheme
                # but no host (data:, javascript:, mailto:, http:x).
                raise FetchError("unsafe", "the server redirected to a URL that cannot be fetched") from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Try the host's next checked address, as a browser would.
                last_error = exc
                continue
            except httpx.HTTPError as exc:
                raise _transport_failure(exc) from None
            try:
                return await self._read(target, response, max_bytes)
            except httpx.HTTPError as exc:
                raise _transport_failure(exc) from None
            finally:
                await response.aclose()
        name = type(last_error).__name__ if last_error else "no address"
        raise FetchError("unreachable", f"could not connect to {target.url.host} ({name})")

    async def _read(self, target: Target, response: httpx.Response, max_bytes: int) -> bytes | str:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = str(response.headers.get("location") or "")
            if not location:
                raise FetchError("status", f"HTTP {status} without a Location", status=status)
            return location
        if not 200 <= status < 300:
            raise FetchError(
                "status",
                f"the server answered HTTP {status}",
                status=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        declared = response.headers.get("content-length")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if declared and declared.isdigit() and encoding in ("", "identity") and int(declared) > max_bytes:
            raise FetchError("too_big", f"the file is {_mb(int(declared))}, over the {_mb(max_bytes)} limit")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise FetchError("too_big", f"the file is over the {_mb(max_bytes)} limit")
            chunks.append(chunk)
        log.debug("fetch.downloaded", url=redact(target.url), bytes=total)
        return b"".join(chunks)


def _transport_failure(exc: httpx.HTTPError) -> FetchError:
    """Name the exception's type only: its text can carry library internals."""
    if isinstance(exc, httpx.TimeoutException):
        return FetchError("unreachable", f"the server timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return FetchError("unreachable", f"the connection failed ({type(exc).__name__})")
    # DecodingError, TooManyRedirects and the like: the server answered, but badly.
    return FetchError("broken", f"the server's answer could not be read ({type(exc).__name__})")
