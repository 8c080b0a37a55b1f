"""genplane.net: the Retry-After and bearer parsers, the public-address rule, the pinned fetcher.

These are the rules every outbound caller shares, so each case here is one a second,
slightly different parser used to get wrong (HTTP dates, negative delays, a second word
after the token, private addresses wrapped in IPv6).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from genplane.clock import utcnow
from genplane.contract.errors import ApiError
from genplane.net.addresses import is_public_address
from genplane.net.bearer import bearer_token
from genplane.net.fetch import FailureKind, FetchError, PinnedFetcher
from genplane.net.retry_after import parse_retry_after

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("0.2", 0.2), ("86400", 86400.0)],
)
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "Fri, 14 Mar 2025 12:01:30 GMT",  # IMF-fixdate, the form servers must send
        "Friday, 14-Mar-25 12:01:30 GMT",  # obsolete RFC 850 form, which recipients must accept
        "Fri Mar 14 12:01:30 2025",  # asctime: no zone, and HTTP dates are GMT
    ],
)
def test_retry_after_http_date_in_the_future_counts_from_now(value: str) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(90.0)


def test_retry_after_http_date_with_an_offset_is_converted_to_utc() -> None:
    assert parse_retry_after("Fri, 14 Mar 2025 14:00:10 +0200", NOW) == pytest.approx(10.0)


def test_retry_after_http_date_without_a_fixed_clock() -> None:
    before = utcnow()
    when = (before + timedelta(seconds=60)).replace(microsecond=0)  # HTTP dates have whole seconds
    got = parse_retry_after(format_datetime(when, usegmt=True))
    after = utcnow()
    assert got is not None
    assert (when - after).total_seconds() <= got <= (when - before).total_seconds()


@pytest.mark.parametrize(
    "value",
    ["Fri, 14 Mar 2025 11:59:59 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", "Fri, 14 Mar 2025 12:00:00 GMT"],
)
def test_retry_after_date_in_the_past_means_now(value: str) -> None:
    assert parse_retry_after(value, NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "-1", "-0.5", "+5", "1e3", "inf", "nan", "1,5", "5 s", "0x10", "٣",
     "Fri, 32 Mar 2025 12:00:00 GMT"],
)
def test_retry_after_without_usable_advice_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# --------------------------------------------------------------------------- bearer tokens


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),  # the scheme's case and the spaces around the token do not matter
        (" Bearer abc", "abc"),
        ("Bearer bye_us_x-y.z~+/==", "bye_us_x-y.z~+/=="),
    ],
)
def test_bearer_token_is_read(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic abc", "Token abc", "abc", "Bearer a b",
     "Bearerabc", "Bearer\tabc", "Bearer, abc"],
)
def test_anything_but_one_bearer_token_is_none(header: str | None) -> None:
    assert bearer_token(header) is None


# --------------------------------------------------------------------------- public addresses


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "::1",
        "10.1.2.3",  # private
        "172.31.255.255",
        "192.168.0.10",
        "169.254.169.254",  # link-local: cloud metadata
        "fe80::1",
        "100.64.0.1",  # carrier-grade NAT
        "100.127.255.254",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 wrapping 192.168.1.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "64:ff9b:1::1",  # local-use NAT64
        "fc00::1",  # unique-local
        "fd00:ec2::254",  # the EC2 metadata address
        "fec0::1",  # site-local
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "ff02::1",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "2001:db8::1",
        "fe80::1%eth0",  # a zone: only meaningful on this host
        "not an address",
        "",
    ],
)
def test_non_public_addresses_may_not_be_dialled(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_may_be_dialled(address: str) -> None:
    assert is_public_address(address)


# --------------------------------------------------------------------------- the pinned fetcher


def _client(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler, follow_redirects=False)


async def test_plan_pins_the_checked_address_and_keeps_the_name() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example", 8443)
        return ["93.184.216.34", "93.184.216.34", "2606:4700::1"]

    async with _client(httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        target = await PinnedFetcher(client, resolver=resolver).plan("https://hooks.example:8443/in?sig=1")
    assert [str(u) for u in target.requests] == [
        "https://93.184.216.34:8443/in?sig=1",
        "https://[2606:4700::1]:8443/in?sig=1",
    ]
    assert target.headers == {"Host": "hooks.example:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example"}


@pytest.mark.parametrize(
    ("url", "answers", "kind"),
    [
        ("http://127.0.0.1/a", [], "unsafe"),
        ("http://[::ffff:169.254.169.254]/a", [], "unsafe"),
        ("ftp://files.example/a", [], "unsafe"),
        ("http://user@files.example/a", [], "unsafe"),
        ("http://files.example/a", ["93.184.216.34", "10.0.0.1"], "unsafe"),  # every address must be public
        ("http://files.example/a", [], "unreachable"),
    ],
)
async def test_plan_refuses_with_a_fetch_error(url: str, answers: list[str], kind: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return answers

    async with _client(httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        with pytest.raises(FetchError) as info:
            await PinnedFetcher(client, resolver=resolver).plan(url)
    assert info.value.kind == kind
    assert "10.0.0.1" not in info.value.message and "sig" not in info.value.message


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("unsafe", "bse_unsafe_file_url"),
        ("too_big", "bse_file_size_exceeded"),
        ("unreachable", "bse_file_download_error"),
        ("status", "bse_file_download_error"),
        ("redirects", "bse_file_download_error"),
        ("broken", "bse_file_download_error"),
    ],
)
def test_a_clients_url_failure_has_the_contracts_name(kind: FailureKind, name: str) -> None:
    err = FetchError(kind, "why").for_field("generation_input_file")
    assert (err.name, err.message, err.details) == (
        name, "generation_input_file: why.", {"field": "generation_input_file"}
    )


async def test_check_public_refuses_a_private_host_without_connecting() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["192.168.1.20"]

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing is requested")

    async with _client(httpx.MockTransport(handler)) as client:
        with pytest.raises(ApiError) as info:
            await PinnedFetcher(client, resolver=resolver).check_public("https://nas.example/a.png", "f")
    assert (info.value.name, info.value.details) == ("bse_unsafe_file_url", {"field": "f"})


async def test_a_failed_download_carries_status_and_an_http_date_retry_after() -> None:
    later = format_datetime(utcnow().replace(microsecond=0) + timedelta(seconds=120), usegmt=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": later})

    async with _client(httpx.MockTransport(handler)) as client:
        fetcher = PinnedFetcher(client, allow_hosts=["files.test"])
        with pytest.raises(FetchError) as info:
            await fetcher.download("http://files.test/out.png", 1000)
    failure = info.value
    assert (failure.kind, failure.status, failure.transient) == ("status", 503, True)
    assert failure.retry_after is not None and 100 < failure.retry_after <= 120


async def test_a_download_over_the_limit_is_too_big() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 2000)

    async with _client(httpx.MockTransport(handler)) as client:
        fetcher = PinnedFetcher(client, allow_hosts=["files.test"])
        with pytest.raises(FetchError) as info:
            await fetcher.download("http://files.test/out.png", 1000)
        assert info.value.kind == "too_big" and not info.value.transient
        assert await PinnedFetcher(client, allow_hosts=["files.test"]).download(
            "http://files.test/out.png", 2000
        ) == b"x" * 2000
