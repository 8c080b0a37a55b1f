"""FileFetcher: safe downloads of clients' input images and providers' outputs.

Everything runs over an in-process network (``FakeNetwork``: host -> ASGI app) and a
fake DNS. A host that is not allow-listed is requested at its checked IP address, so
its app is registered under that IP and sees the original name in ``Host``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from genplane.contract.errors import ApiError
from genplane.jobs.fetch import Fetched, FileFetcher
from genplane.mediatypes import sniff
from genplane.net.addresses import is_public_address
from genplane.providers.base import ProviderError
from tests.fakes.media import FileHost, image_bytes, mp4_bytes, png_bytes
from tests.fakes.network import FakeNetwork

CDN = "cdn.example"
CDN_IP = "93.184.216.34"
OTHER_IP = "93.184.216.35"
FIELD = "generation_input_file"
MB = 1_000_000

Handler = Callable[[Request], Awaitable[Response]]


# --------------------------------------------------------------------------- harness


@dataclass
class FakeDNS:
    """hostname -> addresses; unknown names fail like NXDOMAIN."""

    table: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class Recording(httpx.AsyncBaseTransport):
    """Keeps each request's extensions (SNI), then hands it to the fake network."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.extensions: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.extensions.append(dict(request.extensions))
        return await self.inner.handle_async_request(request)


@dataclass
class Site:
    """A tiny web server: one handler for every path; remembers Host headers."""

    handler: Handler
    hosts_seen: list[str] = field(default_factory=list)
    paths_seen: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            self.hosts_seen.append(request.headers.get("host", ""))
            self.paths_seen.append(request.url.path)
            return await self.handler(request)

        return Starlette(routes=[Route("/{path:path}", endpoint)])


def serve(body: bytes, media_type: str = "application/octet-stream", status: int = 200) -> Handler:
    async def handler(request: Request) -> Response:
        return Response(body, status_code=status, media_type=media_type)

    return handler


@dataclass
class Env:
    net: FakeNetwork
    dns: FakeDNS
    transport: Recording
    client: httpx.AsyncClient

    def site(self, host: str, handler: Handler) -> Site:
        site = Site(handler)
        self.net.add(host, site.app())
        return site

    def fetcher(self, **kw: Any) -> FileFetcher:
        fetcher = FileFetcher(self.client, resolver=self.dns, **kw)
        fetcher.backoff = 0.001  # waits between download attempts, kept short for the tests
        return fetcher


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    net = FakeNetwork()
    dns = FakeDNS({CDN: [CDN_IP]})
    transport = Recording(net)
    async with httpx.AsyncClient(transport=transport, follow_redirects=False, timeout=5.0) as client:
        yield Env(net, dns, transport, client)


async def input_error(
    fetcher: FileFetcher, url: str, *, max_bytes: int = 5 * MB, **kw: Any
) -> ApiError:
    with pytest.raises(ApiError) as info:
        await fetcher.fetch_input_image(url, FIELD, max_bytes=max_bytes, **kw)
    assert info.value.details == {"field": FIELD}
    return info.value


async def output_error(fetcher: FileFetcher, url: str, *, kind: str = "image", **kw: Any) -> ProviderError:
    kw.setdefault("max_bytes", 5 * MB)
    with pytest.raises(ProviderError) as info:
        await fetcher.fetch_output(url, kind=kind, **kw)  # type: ignore[arg-type]
    assert info.value.error == "bse_provider_error"
    assert info.value.retryable is True
    return info.value


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``; its pixel data is tiny and wrong."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- happy paths


async def test_pinned_download_goes_to_the_checked_address_with_the_original_host(env: Env) -> None:
    site = env.site(CDN_IP, serve(png_bytes(40, 30), "image/png"))
    got = await env.fetcher().fetch_input_image(
        f"https://{CDN}/img/cat.png?X-Amz-Signature=abc", FIELD, max_bytes=MB
    )
    assert got == Fetched(got.data, "image/png", "png", 40, 30)
    assert site.hosts_seen == [CDN]
    assert site.paths_seen == ["/img/cat.png"]
    (seen,) = env.net.requests_to(CDN_IP)
    assert seen.url.startswith(f"https://{CDN_IP}/img/cat.png?X-Amz-Signature=abc")
    assert env.transport.extensions[0]["sni_hostname"] == CDN
    assert env.dns.calls == [(CDN, 443)]


async def test_plain_http_keeps_the_port_in_host_and_sends_no_sni(env: Env) -> None:
    site = env.site(CDN_IP, serve(png_bytes(), "image/png"))
    await env.fetcher().fetch_input_image(f"http://{CDN}:8080/a.png", FIELD, max_bytes=MB)
    assert site.hosts_seen == [f"{CDN}:8080"]
    assert env.net.requests_to(CDN_IP)[0].url.startswith(f"http://{CDN_IP}:8080/")
    assert "sni_hostname" not in env.transport.extensions[0]
    assert env.dns.calls == [(CDN, 8080)]


async def test_dns_answer_changing_after_the_check_cannot_move_the_connection(env: Env) -> None:
    answers = iter([[CDN_IP], ["10.0.0.5"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    good = env.site(CDN_IP, serve(png_bytes(), "image/png"))
    evil = env.site("10.0.0.5", serve(image_bytes("jpg"), "image/jpeg"))
    got = await FileFetcher(env.client, resolver=rebinding).fetch_input_image(
        f"https://{CDN}/a.png", FIELD, max_bytes=MB
    )
    assert got.content_type == "image/png"
    assert len(good.hosts_seen) == 1 and evil.hosts_seen == []


async def test_next_checked_address_is_tried_when_the_first_refuses(env: Env) -> None:
    env.dns.table[CDN] = [OTHER_IP, CDN_IP]  # nothing listens on OTHER_IP
    site = env.site(CDN_IP, serve(png_bytes(), "image/png"))
    got = await env.fetcher().fetch_input_image(f"https://{CDN}/a.png", FIELD, max_bytes=MB)
    assert got.ext == "png" and site.hosts_seen == [CDN]


@pytest.mark.parametrize(
    ("fmt", "content_type", "ext"),
    [("png", "image/png", "png"), ("jpg", "image/jpeg", "jpg"), ("webp", "image/webp", "webp")],
)
async def test_input_formats_are_sniffed_not_taken_from_headers(
    env: Env, fmt: str, content_type: str, ext: str
) -> None:
    env.site(CDN_IP, serve(image_bytes(fmt, 80, 50), "text/plain"))
    got = await env.fetcher().fetch_input_image(f"https://{CDN}/file", FIELD, max_bytes=MB)
    assert (got.content_type, got.ext, got.width, got.height) == (content_type, ext, 80, 50)


async def test_check_public_accepts_public_hosts_and_literals_without_downloading(env: Env) -> None:
    fetcher = env.fetcher()
    await fetcher.check_public(f"https://{CDN}/a.png?sig=1", FIELD)
    await fetcher.check_public("http://8.8.8.8/a.png", FIELD)
    await fetcher.check_public("https://[2606:4700:4700::1111]:8443/a.png", FIELD)
    assert env.net.seen == []


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"],
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)


# --------------------------------------------------------------------------- unsafe URLs


UNSAFE_LITERALS = [
    "http://127.0.0.1/a.png",
    "http://127.8.9.10:8080/a.png",
    "http://10.0.0.1/a.png",
    "http://172.16.5.4/a.png",
    "http://192.168.1.1/a.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/a.png",
    "http://[::1]/a.png",
    "http://[::ffff:10.0.0.1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png",
    "http://[::ffff:169.254.169.254]/a.png",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/a.png",
    "http://[fec0::1]/a.png",
    "http://[fc00::5]/a.png",
    "http://100.64.0.1/a.png",
    "http://100.127.255.254/a.png",
    "http://0.0.0.0/a.png",
    "http://[::]/a.png",
    "http://192.0.0.8/a.png",
    "http://198.18.0.1/a.png",
    "http://198.19.255.1/a.png",
    "http://224.0.0.1/a.png",
    "http://[ff02::1]/a.png",
    "http://255.255.255.255/a.png",
    "http://[2002:a00:1::1]/a.png",  # 6to4 wrapping 10.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/a.png",  # NAT64 wrapping 169.254.169.254
    "http://[::a00:1]/a.png",  # IPv4-compatible 10.0.0.1
    "http://127.1/a.png",  # non-canonical spellings of loopback
    "http://2130706433/a.png",
    "http://0x7f000001/a.png",
    "http://0177.0.0.1/a.png",
]


@pytest.mark.parametrize("url", UNSAFE_LITERALS)
async def test_non_public_literal_addresses_are_refused(env: Env, url: str) -> None:
    for host in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "::1"):
        env.site(host, serve(png_bytes(), "image/png"))
    fetcher = env.fetcher()
    with pytest.raises(ApiError) as info:
        await fetcher.check_public(url, FIELD)
    assert info.value.name == "bse_unsafe_file_url"
    assert info.value.details == {"field": FIELD}
    assert (await input_error(fetcher, url)).name == "bse_unsafe_file_url"
    assert env.net.seen == []
    assert env.dns.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.example/a.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://cdn.example/",
        "javascript:alert(1)",
        "cdn.example/a.png",
        "https:///a.png",
        "",
    ],
)
async def test_non_http_urls_are_refused(env: Env, url: str) -> None:
    env.site(CDN_IP, serve(png_bytes(), "image/png"))
    assert (await input_error(env.fetcher(), url)).name == "bse_unsafe_file_url"
    assert env.net.seen == []


@pytest.mark.parametrize(
    "url",
    [f"http://user@{CDN}/a.png", f"https://user:secret@{CDN}/a.png", f"http://x:y@{CDN_IP}/a.png"],
)
async def test_userinfo_is_refused(env: Env, url: str) -> None:
    env.site(CDN_IP, serve(png_bytes(), "image/png"))
    err = await input_error(env.fetcher(), url)
    assert err.name == "bse_unsafe_file_url"
    assert "secret" not in err.text
    assert env.net.seen == []


@pytest.mark.parametrize(
    "addresses",
    [["10.0.0.5"], ["127.0.0.1"], ["169.254.169.254"], ["::1"], ["fd00::1"], [CDN_IP, "10.0.0.5"],
     ["10.0.0.5", CDN_IP], ["2606:4700:4700::1111", "::ffff:192.168.0.1"]],
)
async def test_hostnames_resolving_to_any_private_address_are_refused(
    env: Env, addresses: list[str]
) -> None:
    env.dns.table["evil.test"] = addresses
    for address in addresses:
        env.site(address, serve(png_bytes(), "image/png"))
    fetcher = env.fetcher()
    with pytest.raises(ApiError) as info:
        await fetcher.check_public("https://evil.test/a.png", FIELD)
    assert info.value.name == "bse_unsafe_file_url"
    assert (await input_error(fetcher, "https://evil.test/a.png")).name == "bse_unsafe_file_url"
    assert env.net.seen == []


async def test_unresolvable_host_is_a_download_error(env: Env) -> None:
    err = await input_error(env.fetcher(), "https://nowhere.test/a.png")
    assert err.name == "bse_file_download_error"


async def test_resolver_that_hangs_is_a_download_error(env: Env) -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return [CDN_IP]

    fetcher = FileFetcher(env.client, resolver=slow, resolve_timeout=0.05)
    assert (await input_error(fetcher, f"https://{CDN}/a.png")).name == "bse_file_download_error"


# --------------------------------------------------------------------------- redirects


def redirect_to(location: str, status: int = 302) -> Handler:
    async def handler(request: Request) -> Response:
        return RedirectResponse(location, status_code=status)

    return handler


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/latest/meta-data/iam", "http://127.0.0.1:8080/admin", "http://[::1]/",
     "https://evil.test/a.png", "file:///etc/passwd", "http://user@cdn.example/a.png"],
)
async def test_redirect_to_an_unsafe_url_is_refused(env: Env, location: str) -> None:
    env.dns.table["evil.test"] = ["10.1.2.3"]
    env.site(CDN_IP, redirect_to(location))
    inner = [env.site(h, serve(png_bytes(), "image/png")) for h in ("169.254.169.254", "127.0.0.1",
                                                                      "::1", "10.1.2.3")]
    assert (await input_error(env.fetcher(), f"https://{CDN}/a.png")).name == "bse_unsafe_file_url"
    assert all(site.hosts_seen == [] for site in inner)
    assert len(env.net.seen) == 1


async def test_redirect_to_private_is_refused_for_outputs_too(env: Env) -> None:
    env.site(CDN_IP, redirect_to("http://169.254.169.254/latest/meta-data/"))
    metadata = env.site("169.254.169.254", serve(b"secret-credentials"))
    err = await output_error(env.fetcher(), f"https://{CDN}/out.png")
    assert "refused" in err.message
    assert metadata.hosts_seen == []
    assert len(env.net.seen) == 1  # an unsafe URL is not retried


@pytest.mark.parametrize(
    ("location", "final_path"),
    [("/files/b.png", "/files/b.png"), ("b.png", "/img/b.png"), ("../files/c.png?x=1", "/files/c.png")],
)
async def test_relative_redirect_is_followed_with_the_same_host(
    env: Env, location: str, final_path: str
) -> None:
    async def handler(request: Request) -> Response:
        if request.url.path == "/img/a.png":
            return RedirectResponse(location, status_code=301)
        return Response(png_bytes(), media_type="image/png")

    site = env.site(CDN_IP, handler)
    got = await env.fetcher().fetch_input_image(f"https://{CDN}/img/a.png", FIELD, max_bytes=MB)
    assert got.ext == "png"
    assert site.paths_seen == ["/img/a.png", final_path]
    assert site.hosts_seen == [CDN, CDN]


async def test_redirect_to_another_public_host_is_checked_and_pinned(env: Env) -> None:
    env.dns.table["files.example"] = [OTHER_IP]
    env.site(CDN_IP, redirect_to("https://files.example/real.png", 307))
    target = env.site(OTHER_IP, serve(png_bytes(), "image/png"))
    await env.fetcher().fetch_input_image(f"https://{CDN}/a.png", FIELD, max_bytes=MB)
    assert target.hosts_seen == ["files.example"]
    assert env.transport.extensions[1]["sni_hostname"] == "files.example"
    assert [c[0] for c in env.dns.calls] == [CDN, "files.example"]


def endless_redirects() -> Handler:
    async def handler(request: Request) -> Response:
        n = int(request.url.path.rsplit("/", 1)[-1])
        if n >= 10:
            return Response(png_bytes(), media_type="image/png")
        return RedirectResponse(f"/r/{n + 1}", status_code=302)

    return handler


async def test_redirect_chain_over_the_limit_is_refused(env: Env) -> None:
    site = env.site(CDN_IP, endless_redirects())
    err = await input_error(env.fetcher(max_redirects=3), f"https://{CDN}/r/0")
    assert err.name == "bse_file_download_error"
    assert "redirects" in err.text
    assert site.paths_seen == ["/r/0", "/r/1", "/r/2", "/r/3"]


async def test_redirect_chain_at_the_limit_is_followed(env: Env) -> None:
    site = env.site(CDN_IP, endless_redirects())
    got = await env.fetcher(max_redirects=3).fetch_input_image(f"https://{CDN}/r/7", FIELD, max_bytes=MB)
    assert got.ext == "png"
    assert site.paths_seen == ["/r/7", "/r/8", "/r/9", "/r/10"]


async def test_redirect_without_location_is_a_download_error(env: Env) -> None:
    env.site(CDN_IP, serve(b"", status=302))
    assert (await input_error(env.fetcher(), f"https://{CDN}/a")).name == "bse_file_download_error"


async def test_client_that_follows_redirects_itself_is_not_trusted(env: Env) -> None:
    env.site(CDN_IP, redirect_to("http://169.254.169.254/"))
    metadata = env.site("169.254.169.254", serve(b"secret"))
    async with httpx.AsyncClient(transport=env.net, follow_redirects=True) as client:
        fetcher = FileFetcher(client, resolver=env.dns)
        assert (await input_error(fetcher, f"https://{CDN}/a")).name == "bse_unsafe_file_url"
    assert metadata.hosts_seen == []


def raw_redirect(location: str) -> Handler:
    """A 302 whose Location is sent exactly as given (RedirectResponse would quote it)."""

    async def handler(request: Request) -> Response:
        return Response(status_code=302, headers={"location": location})

    return handler


# httpx builds the redirect's next request even when it does not follow it, and
# raises InvalidURL for a Location with a scheme but no host.
@pytest.mark.parametrize(
    "location", ["data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "mailto:a@b.c", "http:a.png"]
)
async def test_redirect_to_a_hostless_url_is_refused_cleanly(env: Env, location: str) -> None:
    env.site(CDN_IP, raw_redirect(location))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")
    assert err.name == "bse_unsafe_file_url" and "redirect" in err.text
    assert len(env.net.seen) == 1
    out = await output_error(env.fetcher(), f"https://{CDN}/out.png")
    assert "refused" in out.message
    assert len(env.net.seen) == 2  # refused, not retried


class Raising(httpx.AsyncBaseTransport):
    """A network that fails every request with one exception."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'gopher://'."),
        httpx.RemoteProtocolError("Invalid URL in location header: /srv/genplane/secret"),
        httpx.TooManyRedirects("Exceeded /srv/genplane/secret"),
        httpx.DecodingError("Error -3 while decompressing data: /srv/genplane/secret"),
        httpx.StreamConsumed(),
        RuntimeError("/srv/genplane/secret/module.py exploded"),
        UnicodeError("encoding with 'idna' codec failed"),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_any_error_while_fetching_is_a_fetch_error(env: Env, exc: Exception) -> None:
    transport = Raising(exc)
    async with httpx.AsyncClient(transport=transport) as client:
        fetcher = FileFetcher(client, resolver=env.dns)
        fetcher.backoff = 0.001
        err = await input_error(fetcher, f"https://{CDN}/a.png")
        assert err.name == "bse_file_download_error"
        assert "/srv/genplane" not in err.text and str(exc) not in err.text
        out = await output_error(fetcher, f"https://{CDN}/out.png")
        assert "/srv/genplane" not in out.message


async def test_a_resolver_error_of_any_kind_is_a_download_error(env: Env) -> None:
    async def broken(host: str, port: int) -> list[str]:
        raise UnicodeError("encoding with 'idna' codec failed (UnicodeError: label too long)")

    fetcher = FileFetcher(env.client, resolver=broken)
    with pytest.raises(ApiError) as info:
        await fetcher.check_public(f"https://{CDN}/a.png", FIELD)
    assert info.value.name == "bse_file_download_error" and "idna" not in info.value.text
    assert (await input_error(fetcher, f"https://{CDN}/a.png")).name == "bse_file_download_error"


# --------------------------------------------------------------------------- allow-list


async def test_allow_listed_loopback_is_requested_as_is(env: Env) -> None:
    site = env.site("127.0.0.1", serve(png_bytes(), "image/png"))
    fetcher = env.fetcher(allow_hosts=["127.0.0.1"])
    await fetcher.check_public("http://127.0.0.1:9000/a.png", FIELD)
    got = await fetcher.fetch_input_image("http://127.0.0.1:9000/a.png", FIELD, max_bytes=MB)
    assert got.ext == "png"
    assert site.hosts_seen == ["127.0.0.1:9000"]
    assert env.dns.calls == []
    # Other private addresses stay refused.
    assert (await input_error(fetcher, "http://127.0.0.2/a.png")).name == "bse_unsafe_file_url"


async def test_allow_listed_hostname_is_not_resolved_and_matches_case_insensitively(env: Env) -> None:
    site = env.site("files.test", serve(mp4_bytes(), "video/mp4"))
    fetcher = env.fetcher(allow_hosts=["Files.Test"])
    got = await fetcher.fetch_output("http://FILES.test/out.mp4", max_bytes=10 * MB, kind="video")
    assert got.content_type == "video/mp4"
    assert site.hosts_seen == ["files.test"]
    assert env.dns.calls == []
    assert "sni_hostname" not in env.transport.extensions[0]


# --------------------------------------------------------------------------- size limits


async def test_oversize_by_content_length_is_refused(env: Env) -> None:
    env.site(CDN_IP, serve(png_bytes(256, 256), "image/png"))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png", max_bytes=200)
    assert err.name == "bse_file_size_exceeded"


async def test_oversize_content_length_is_refused_before_the_body_is_read() -> None:
    read = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield png_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(50 * MB)}, content=body())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        fetcher = FileFetcher(client, allow_hosts=["big.test"])
        err = await input_error(fetcher, "http://big.test/a.png", max_bytes=MB)
    assert err.name == "bse_file_size_exceeded" and "50.0 MB" in err.text
    assert read is False


async def test_oversize_stream_without_content_length_is_refused(env: Env) -> None:
    data = png_bytes(256, 256)

    async def handler(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 100):
                yield data[i : i + 100]

        return StreamingResponse(chunks(), media_type="image/png")

    env.site(CDN_IP, handler)
    fetcher = env.fetcher()
    err = await input_error(fetcher, f"https://{CDN}/a.png", max_bytes=len(data) - 1)
    assert err.name == "bse_file_size_exceeded"
    got = await fetcher.fetch_input_image(f"https://{CDN}/a.png", FIELD, max_bytes=len(data))
    assert got.data == data


async def test_an_endless_body_is_abandoned_at_the_limit() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b"\x89PNG\r\n\x1a\n" + b"\x00" * 65_528

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        fetcher = FileFetcher(client, allow_hosts=["stream.test"])
        err = await input_error(fetcher, "http://stream.test/a.png", max_bytes=1 * MB)
        assert err.name == "bse_file_size_exceeded"
        with pytest.raises(ProviderError) as info:
            await fetcher.fetch_output("http://stream.test/a.png", max_bytes=MB, kind="image")
    assert "too large" in info.value.message
    assert produced < 40  # two downloads of ~16 chunks each, then it stopped reading


# --------------------------------------------------------------------------- content checks


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        (b"GIF89a" + b"\x00" * 100, "image/gif"),
        (b"<html><body>Not found</body></html>", "image/png"),
        (b'{"error": "nope"}', "image/jpeg"),
        (b"", "image/png"),
        (b"BM" + b"\x00" * 100, "image/bmp"),
        (b"II*\x00" + b"\x00" * 100, "image/tiff"),
    ],
)
async def test_files_that_are_not_jpeg_png_or_webp_are_refused(
    env: Env, body: bytes, media_type: str
) -> None:
    env.site(CDN_IP, serve(body, media_type))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")
    assert err.name == "bse_unsupported_file_format"


async def test_a_video_is_not_an_input_image(env: Env) -> None:
    env.site(CDN_IP, serve(mp4_bytes(), "image/png"))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png", max_bytes=10 * MB)
    assert err.name == "bse_unsupported_file_format"
    assert "video/mp4" in err.text


@pytest.mark.parametrize(
    "body",
    [
        png_bytes(128, 128)[:200],
        png_bytes(128, 128)[:-20],
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        image_bytes("jpg", 128, 128)[:300],
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 40,
    ],
    ids=["png-cut-early", "png-cut-late", "png-garbage", "jpeg-cut", "webp-garbage"],
)
async def test_right_magic_but_undecodable_is_a_load_error(env: Env, body: bytes) -> None:
    env.site(CDN_IP, serve(body, "image/png"))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")
    assert err.name == "bse_file_load_error"


async def test_dimensions_are_checked_against_the_model(env: Env) -> None:
    env.site(CDN_IP, serve(image_bytes("webp", 300, 120), "image/webp"))
    fetcher = env.fetcher()
    url = f"https://{CDN}/a.webp"
    big = await input_error(fetcher, url, max_side=299)
    assert big.name == "bse_file_too_large" and "300x120" in big.text
    small = await input_error(fetcher, url, min_side=121)
    assert small.name == "bse_file_too_small" and "300x120" in small.text
    got = await fetcher.fetch_input_image(url, FIELD, max_bytes=MB, min_side=120, max_side=300)
    assert (got.width, got.height) == (300, 120)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(11_000, 10_000), (30_000, 30_000)])
async def test_decompression_bombs_are_refused_before_decoding(env: Env, width: int, height: int) -> None:
    bomb = png_with_size(width, height)
    assert len(bomb) < 200
    env.site(CDN_IP, serve(bomb, "image/png"))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")
    assert err.name == "bse_file_too_large"


# --------------------------------------------------------------------------- download failures


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 500, 503])
async def test_input_non_2xx_is_a_download_error(env: Env, status: int) -> None:
    env.site(CDN_IP, serve(b"nope", "text/plain", status))
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")
    assert err.name == "bse_file_download_error"
    assert str(status) in err.text
    assert len(env.net.seen) == 1  # inputs are not retried


async def test_input_connection_refused_is_a_download_error(env: Env) -> None:
    err = await input_error(env.fetcher(), f"https://{CDN}/a.png")  # nothing listens on CDN_IP
    assert err.name == "bse_file_download_error"


async def test_input_server_that_hangs_is_a_download_error(env: Env) -> None:
    async def hang(request: Request) -> Response:
        await asyncio.sleep(10)
        return Response(png_bytes())

    env.site(CDN_IP, hang)
    async with httpx.AsyncClient(transport=env.net, timeout=0.1) as client:
        fetcher = FileFetcher(client, resolver=env.dns)
        assert (await input_error(fetcher, f"https://{CDN}/a.png")).name == "bse_file_download_error"


async def test_whole_download_deadline_applies(env: Env) -> None:
    async def hang(request: Request) -> Response:
        await asyncio.sleep(10)
        return Response(png_bytes())

    env.site(CDN_IP, hang)
    fetcher = env.fetcher(timeout=0.1)
    err = await input_error(fetcher, f"https://{CDN}/a.png")
    assert err.name == "bse_file_download_error" and "longer than" in err.text


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def file_host(env: Env) -> FileHost:
    host = FileHost(base_url=f"https://{CDN}")
    env.net.add(CDN_IP, Starlette(routes=[Route("/files/{name}", host.serve)]))
    return host


async def test_output_is_retried_after_two_503s(env: Env, file_host: FileHost) -> None:
    url = file_host.publish(png_bytes(32, 16), "png")
    file_host.fail_next = 2
    got = await env.fetcher().fetch_output(url + "?sig=1", max_bytes=MB, kind="image")
    assert (got.content_type, got.ext, got.width, got.height) == ("image/png", "png", 32, 16)
    assert len(env.net.requests_to(CDN_IP)) == 3


async def test_output_gives_up_after_the_attempts(env: Env, file_host: FileHost) -> None:
    url = file_host.publish(png_bytes(), "png")
    file_host.fail_next = 100
    err = await output_error(env.fetcher(), url, attempts=3)
    assert "503" in err.message and "3 attempts" in err.message
    assert err.http_status == 503
    assert len(env.net.requests_to(CDN_IP)) == 3


async def test_output_expired_url_fails_at_once_with_a_clear_message(env: Env, file_host: FileHost) -> None:
    file_host.ttl_seconds = -1
    url = file_host.publish(png_bytes(), "png")
    err = await output_error(env.fetcher(), url, attempts=5)
    assert "403" in err.message and "expired" in err.message
    assert err.http_status == 403
    assert len(env.net.requests_to(CDN_IP)) == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_output_gone_is_not_retried(env: Env, status: int) -> None:
    env.site(CDN_IP, serve(b"gone", status=status))
    err = await output_error(env.fetcher(), f"https://{CDN}/out.png")
    assert "expired" in err.message
    assert len(env.net.seen) == 1


async def test_output_429_with_retry_after_is_retried(env: Env) -> None:
    calls = 0

    async def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return Response("slow down", status_code=429, headers={"Retry-After": "0"})
        return Response(mp4_bytes(), media_type="video/mp4")

    env.site(CDN_IP, handler)
    got = await env.fetcher().fetch_output(f"https://{CDN}/v.mp4", max_bytes=10 * MB, kind="video")
    assert (got.content_type, got.ext, got.width) == ("video/mp4", "mp4", None)
    assert calls == 2


async def test_output_connection_errors_are_retried_then_reported(env: Env) -> None:
    err = await output_error(env.fetcher(), f"https://{CDN}/out.png", attempts=2)
    assert "2 attempts" in err.message and "connect" in err.message


async def test_output_that_recovers_from_a_connection_error(env: Env) -> None:
    fetcher = env.fetcher()

    async def later() -> None:
        await asyncio.sleep(0)
        env.site(CDN_IP, serve(image_bytes("jpg"), "image/jpeg"))

    task = asyncio.create_task(later())
    got = await fetcher.fetch_output(f"https://{CDN}/out.jpg", max_bytes=MB, kind="image", attempts=3)
    await task
    assert got.content_type == "image/jpeg"


async def test_output_oversize_is_not_retried(env: Env) -> None:
    env.site(CDN_IP, serve(png_bytes(128, 128), "image/png"))
    err = await output_error(env.fetcher(), f"https://{CDN}/out.png", max_bytes=100)
    assert "too large" in err.message
    assert len(env.net.seen) == 1


@pytest.mark.parametrize(
    ("body", "kind", "expected"),
    [
        (png_bytes(), "video", "the provider returned image/png where a video was expected"),
        (mp4_bytes(), "image", "the provider returned video/mp4 where an image was expected"),
        (b"<!DOCTYPE html><html>Access denied</html>", "image", "text/html where an image"),
        (b"\x00\x01\x02\x03" * 10, "image", "an unrecognised file where an image"),
        (b"GIF89a" + b"\x00" * 20, "image", "image/gif, which genplane does not store"),
    ],
)
async def test_output_kind_mismatch_is_not_retried(env: Env, body: bytes, kind: str, expected: str) -> None:
    env.site(CDN_IP, serve(body, "video/mp4" if kind == "video" else "image/png"))
    err = await output_error(env.fetcher(), f"https://{CDN}/out", kind=kind, max_bytes=10 * MB)
    assert expected in err.message
    assert len(env.net.seen) == 1


async def test_output_corrupt_image_is_reported(env: Env) -> None:
    env.site(CDN_IP, serve(png_bytes(64, 64)[:150], "image/png"))
    err = await output_error(env.fetcher(), f"https://{CDN}/out.png")
    assert "unusable" in err.message


async def test_output_unsafe_url_is_refused_without_a_request(env: Env) -> None:
    env.site("10.0.0.9", serve(png_bytes(), "image/png"))
    err = await output_error(env.fetcher(), "http://10.0.0.9/out.png")
    assert "refused" in err.message
    assert env.net.seen == []


# --------------------------------------------------------------------------- sniffing and logs


@pytest.mark.parametrize(
    ("head", "content_type", "ext", "kind"),
    [
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00", "video/quicktime", "mov", "video"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", "video/mp4", "mp4", "video"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm", "webm", "video"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "image/avif", "avif", "image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic", "heic", "image"),
        (b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00", "audio/mp4", "m4a", "other"),
    ],
)
def test_sniff_containers(head: bytes, content_type: str, ext: str, kind: str) -> None:
    got = sniff(head + b"\x00" * 32)
    assert got is not None and (got.content_type, got.ext, got.kind) == (content_type, ext, kind)


async def test_logs_never_contain_query_strings(env: Env, file_host: FileHost) -> None:
    file_host.fail_next = 1
    url = file_host.publish(png_bytes(), "png") + "?X-Amz-Signature=topsecret"
    env.site("10.0.0.1", serve(b""))
    fetcher = env.fetcher()
    with structlog.testing.capture_logs() as logs:
        await fetcher.fetch_output(url, max_bytes=MB, kind="image")
        await input_error(fetcher, f"https://{CDN}/missing?token=topsecret", max_bytes=10)
        await output_error(fetcher, "http://10.0.0.1/x?token=topsecret")
    assert {entry["event"] for entry in logs} >= {"fetch.output_retry", "fetch.input_refused",
                                                  "fetch.output_failed"}
    assert all("topsecret" not in repr(entry) for entry in logs)
    assert any(f"https://{CDN}/files/" in str(entry.get("url")) for entry in logs)

