"""Credentials never leave in text (issue 20, item 1).

A password (of a proxy URL, a proxy's ``auth``, a ``Proxy-Authorization`` header, a
request URL) appears in no exception message, chained cause, traceback text, log line,
``repr`` or metric label: URLs are shown as ``scheme://user:***@host...``. Every case
here uses the password ``s3cr3t`` (or a piece of it) and looks for ``cr3t`` everywhere.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import httpx
import pytest
import trio
import trio.testing

import trio_pool
from trio_pool import ConnectError, ConnectionPool, PoolKey, Proxy, ProxyError
from trio_pool._redact import redact_url
from trio_pool.http import HTTPClient
from trio_pool.httpx import PoolTransport

from .h2servers import H2Server, connect_h2
from .servers import HOST, refused_port
from .test_proxy_faults import answer, fake_http_proxy

SECRET = "cr3t"  # the tail of every password below


def everything_said(exc: BaseException, *, attributes: bool = True) -> str:
    """All the text an exception carries: str, repr, attributes, and the traceback
    with its chained causes (suppressed ones too), as a log handler would format it."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if attributes:
        parts.extend(repr(value) for value in vars(exc).values())
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        parts.extend((str(seen), repr(seen), repr(seen.args)))  # (a UnicodeError's object)
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def assert_no_secret(exc: BaseException) -> None:
    said = everything_said(exc)
    assert SECRET not in said, said


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of trio_pool; at the end, none may hold the secret."""
    caplog.set_level(logging.DEBUG, logger="trio_pool")
    yield caplog
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info is not None and record.exc_info[1] is not None:
            text += everything_said(record.exc_info[1])
        assert SECRET not in text, text


# -- the helper --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cr3t@host:1", "http://user:***@host:1"),
        ("http://:s3cr3t@host:1", "http://:***@host:1"),
        ("http://user@host:1", "http://user@host:1"),  # no password: nothing to hide
        ("http://host/a@b", "http://host/a@b"),  # an @ in a path, no password
        ("user:s3cr3t@host:1", "user:***@host:1"),  # no scheme
        ("http://user:s3/cr3t@host:1/", "http://user:***@host:1/"),  # a / in the password
        ("http://user:s3@cr3t@host:1", "http://user:***@host:1"),  # an unquoted @ in it
        ("http://user:s3 cr3t\r\n@host", "http://user:***@host"),
        ("http://host:1", "http://host:1"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- proxy URLs --------------------------------------------------------------------------

BAD_PROXY_URLS = [
    "http://user:s3cr3t@127.0.0.1:99999",  # invalid port
    "http://user:s3cr3t@127.0.0.1:port",
    "http://user:s3cr3t@127.0.0.1",  # no port
    "http://user:s3cr3t@127.0.0.1:0",
    "http://user:s3cr3t@127.0.0.1:3128/path",
    "http://user:s3cr3t@127.0.0.1:3128?query",
    "http://user:s3cr3t@127.0.0.1:3128#fragment",
    "https://user:s3cr3t@127.0.0.1:3128",
    "HTTPS://user:s3cr3t@127.0.0.1:3128",
    "ftp://user:s3cr3t@127.0.0.1:21",
    "http://user:s3cr3t@[::1:3128",  # broken IPv6 literals
    "http://user:s3cr3t@[zz::1]:3128",
    "http://user:s3cr3t@::1:3128",
    "http://user:s3cr3t@127.0.0.1 :3128",  # a space
    "http://user:s3 cr3t@127.0.0.1:3128",
    "http://user:s3cr3t@127.0.0.1:3128\r\n",
    "user:s3cr3t@127.0.0.1:3128",  # no scheme
    "//user:s3cr3t@127.0.0.1:3128",
    "http://user:s3cr3t@:3128",  # no host
    "http://user:s3%ffcr3t@127.0.0.1:3128",  # not UTF-8
    "http://user:s3/cr3t@127.0.0.1:3128",  # an unquoted / in the password
    "http://user:s3cr3t@exa\u2100mple.test:3128",  # NFKC turns it into a/c: urlsplit refuses
    "http://us:er:s3cr3t\x00@127.0.0.1:3128",
    "socks5://user:s3cr3t@127.0.0.1",
    "socks5://user:" + "s3cr3t" * 50 + "@127.0.0.1:1080",  # longer than RFC 1929 allows
]


@pytest.mark.parametrize("url", BAD_PROXY_URLS)
def test_bad_proxy_url_hides_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        Proxy(url)
    assert_no_secret(info.value)


def test_a_bad_proxy_url_still_shows_the_user_and_the_rest() -> None:
    with pytest.raises(ValueError) as info:
        Proxy("http://user:s3cr3t@127.0.0.1:99999")
    assert "http://user:***@127.0.0.1:99999" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"auth": ("user", b"s3cr3t")}, TypeError),
        ({"auth": ("user", "s3cr3t", "x")}, TypeError),
        ({"auth": ["user", "s3cr3t"]}, TypeError),
        ({"auth": ("user", "s3cr3t\udc80")}, ValueError),  # a lone surrogate
        ({"headers": [("Proxy-Authorization", b"Basic s3cr3t")]}, TypeError),
        ({"headers": [("Proxy-Authorization", "Basic s3cr3t", "x")]}, TypeError),
        ({"headers": [(b"X-Token", "s3cr3t")]}, TypeError),
        ({"headers": {"X-Token": "s3cr3t\r\nX: y"}}, ValueError),
        ({"headers": {"Host": "s3cr3t"}}, ValueError),
    ],
)
def test_bad_auth_or_headers_hide_their_values(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error) as info:
        Proxy("http://127.0.0.1:3128", **kwargs)  # type: ignore[arg-type]
    assert_no_secret(info.value)


def test_httpx_proxy_arguments_hide_the_password() -> None:
    from trio_pool._proxy import as_proxy

    for value in (
        httpx.URL("http://user:s3cr3t@127.0.0.1"),
        httpx.Proxy("http://user:s3cr3t@127.0.0.1"),
        httpx.Proxy("https://user:s3cr3t@127.0.0.1:3128"),
    ):
        with pytest.raises(ValueError) as info:
            as_proxy(value)
        assert_no_secret(info.value)


def test_reprs_hide_the_password() -> None:
    proxy = Proxy("http://user:s3cr3t@127.0.0.1:3128", headers={"X-Token": "s3cr3t"})
    assert repr(proxy) == "Proxy('http://user:***@127.0.0.1:3128', headers=['X-Token'])"
    assert repr(Proxy("socks5h://user:s3cr3t@[::1]:1080")) == (
        "Proxy('socks5h://user:***@[::1]:1080')"
    )
    assert repr(Proxy("http://127.0.0.1:3128")) == "Proxy('http://127.0.0.1:3128')"
    assert str(proxy) == repr(proxy)
    key = PoolKey("origin.test", 443, True, "origin.test", True, None, proxy)
    assert SECRET not in repr(key)
    assert SECRET not in str(key)
    assert "user:***@" in repr(key)


# -- the environment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "http://user:s3cr3t@127.0.0.1:99999",
        "http://user:s3cr3t@127.0.0.1",
        "user:s3cr3t@127.0.0.1",  # no scheme: http:// is assumed
        "https://user:s3cr3t@127.0.0.1:3128",
        "http://user:s3cr3t@[::1:3128",
        "http://user:s3cr3t@127.0.0.1:3128/path",
    ],
)
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
async def test_trust_env_hides_the_password_of_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, pool: ConnectionPool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv(variable, value)
    for make in (HTTPClient, PoolTransport):
        with pytest.raises(ValueError, match=variable) as info:
            make(pool, trust_env=True)
        assert_no_secret(info.value)


# -- request URLs -------------------------------------------------------------------------

BAD_REQUEST_URLS = [
    "http://user:s3cr3t@127.0.0.1:8080/",  # credentials are refused in a request URL
    "https://user:s3cr3t@127.0.0.1/",
    "http://user:s3cr3t@127.0.0.1:99999/",
    "http://user:s3cr3t@127.0.0.1:0/",
    "ftp://user:s3cr3t@127.0.0.1/",
    "http://user:s3cr3t@[::1/",
    "http://user:s3cr3t@127.0.0.1/a b",
    "http://user:s3cr3t@127.0.0.1/\u00e9",
    "http://user:s3cr3t@xn--a.xn--/",  # invalid IDNA
    "http://user:s3cr3t@b\u00fccher..test/",
    "http://user:s3cr3t@exa\u2100mple.test/",
    "http://user:s3/cr3t@127.0.0.1/",
    "//user:s3cr3t@127.0.0.1/",
]


@pytest.mark.parametrize("url", BAD_REQUEST_URLS)
async def test_refused_request_url_hides_the_password(
    url: str, client: HTTPClient, pool: ConnectionPool
) -> None:
    with pytest.raises(ValueError) as info:
        await client.request("GET", url)
    assert_no_secret(info.value)
    with pytest.raises(ValueError) as info:
        async with client.stream("GET", url):
            pass  # pragma: no cover
    assert_no_secret(info.value)
    assert pool.statistics().connections_created == 0


BAD_REQUEST_HEADERS = [
    {"Authorization": "Bearer s3cr3t\r\nX: y"},
    {"Authorization": "Bearer s3cr3t\x00"},
    {"Authorization": " Bearer s3cr3t"},
    {"Cookie": "session=s3cr3t\u20ac"},  # not latin-1
    [("Authorization", "Bearer s3cr3t", "x")],
    [("Authorization", b"Bearer s3cr3t"), ("X", 1)],
]


@pytest.mark.parametrize("headers", BAD_REQUEST_HEADERS)
async def test_refused_request_headers_hide_their_values(
    headers: object, pool: ConnectionPool
) -> None:
    url = f"http://{HOST}:1/"
    with pytest.raises((ValueError, TypeError)) as info:
        await HTTPClient(pool).request("GET", url, headers=headers)  # type: ignore[arg-type]
    assert_no_secret(info.value)
    with pytest.raises((ValueError, TypeError)) as info:  # the client's own headers
        await HTTPClient(pool, headers=headers).request("GET", url)  # type: ignore[arg-type]
    assert_no_secret(info.value)
    assert pool.statistics().connections_created == 0


@pytest.mark.parametrize("headers", [BAD_REQUEST_HEADERS[i] for i in (0, 1, 3, 4)])
async def test_http2_request_refusing_a_header_value_hides_it(
    nursery: trio.Nursery, headers: object
) -> None:
    server = H2Server()
    conn = await connect_h2(await server.start(nursery), nursery)
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    with pytest.raises((ValueError, TypeError)) as info:
        await conn.request("GET", "/", HOST, headers=pairs)  # type: ignore[arg-type]
    assert_no_secret(info.value)
    assert server.requests == 0
    await conn.aclose()


async def test_transport_refusing_a_header_value_hides_it(pool: ConnectionPool) -> None:
    transport = PoolTransport(pool)
    request = httpx.Request(
        "GET", f"http://{HOST}:1/", headers={"Authorization": "Bearer s3cr3t\r\nX: y"}
    )
    with pytest.raises(httpx.LocalProtocolError) as info:
        await transport.handle_async_request(request)
    assert "'authorization' header" in str(info.value).lower()
    # (its request attribute is httpx's, holding the headers as the caller gave them)
    assert SECRET not in everything_said(info.value, attributes=False)


async def test_transport_refusing_a_scheme_hides_the_password(pool: ConnectionPool) -> None:
    transport = PoolTransport(pool)
    request = httpx.Request("GET", "ftp://user:s3cr3t@127.0.0.1/")
    with pytest.raises(httpx.UnsupportedProtocol) as info:
        await transport.handle_async_request(request)
    # (its request attribute is httpx's, holding the URL as the caller gave it)
    assert SECRET not in everything_said(info.value, attributes=False)


@pytest.mark.parametrize(
    "host",
    [
        "http://user:s3cr3t@127.0.0.1",
        "user:s3cr3t@127.0.0.1/x",
        " user:s3cr3t@h",
        "user:s3cr3t@127.0.0.1:8080",
        "[user:s3cr3t@h]",
    ],
)
async def test_a_url_given_as_host_hides_its_password(host: str, pool: ConnectionPool) -> None:
    with pytest.raises(ValueError) as info:
        await pool.acquire(host, 80)
    assert_no_secret(info.value)


# -- connect errors, logs, statistics -------------------------------------------------------


async def test_connect_errors_logs_and_statistics_hide_the_password(
    nursery: trio.Nursery, logs: pytest.LogCaptureFixture
) -> None:
    reply = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    refusing, _ = await fake_http_proxy(nursery, answer(reply), "http://user:s3cr3t@{host}:{port}")
    unreachable = Proxy(f"http://user:s3cr3t@{HOST}:{refused_port()}")
    socks = Proxy(f"socks5://user:s3cr3t@{HOST}:{refused_port()}")
    async with trio_pool.open_pool(max_connecting=2) as pool:
        for proxy, error in ((refusing, ProxyError), (unreachable, ConnectError)):
            with pytest.raises(error) as info:
                await pool.acquire("origin.test", 443, tls=True, proxy=proxy)
            assert_no_secret(info.value)
        with pytest.raises(ConnectError) as info:
            await pool.acquire(HOST, 443, proxy=socks)
        assert_no_secret(info.value)
        client = HTTPClient(pool, proxy=unreachable)
        for url in ("http://origin.test/", "https://origin.test/"):
            with pytest.raises(ConnectError) as http_info:
                await client.request("GET", url)
            assert_no_secret(http_info.value)
        stats = pool.host_statistics()
        assert SECRET not in repr(stats)
        assert SECRET not in repr(pool.statistics())


async def test_refill_warnings_hide_the_password(
    autojump_clock: trio.testing.MockClock, logs: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(f"http://user:s3cr3t@{HOST}:{refused_port()}")
    async with trio_pool.open_pool(min_size=1, health_check_interval=1.0) as pool:
        with pytest.raises(ConnectError):
            await pool.prewarm("origin.test", 443, proxy=proxy)
        await trio.sleep(5)
    refills = [r for r in logs.records if "refilling" in r.getMessage()]
    assert refills
    assert "via proxy" in refills[0].getMessage()


def test_metric_labels_hide_the_password() -> None:
    pytest.importorskip("prometheus_client")
    from trio_pool.metrics import PrometheusCollector

    async def main() -> str:
        port = refused_port()
        proxy = Proxy(f"http://user:s3cr3t@{HOST}:{port}")
        async with trio_pool.open_pool() as pool:
            collector = PrometheusCollector(pool)
            with pytest.raises(ConnectError):
                await pool.acquire("origin.test", 443, proxy=proxy)
            with pytest.raises(ConnectError):
                await pool.acquire(HOST, port, proxy=proxy, forward=True)
            return repr([(m.name, m.samples) for m in collector.collect()])

    assert SECRET not in trio.run(main)
