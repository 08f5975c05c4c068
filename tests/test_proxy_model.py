"""The proxy model (issue 15): Proxy URLs, and the route arguments of the pool's keys.

Everything here is checked before any I/O: no server runs, and the pool tests assert
that nothing was connected.
"""

from __future__ import annotations

import base64
import dataclasses
import ssl
import sys
from pathlib import Path

import httpx
import pytest

import trio_pool
from trio_pool import PoolKey, Proxy
from trio_pool._pool import make_key
from trio_pool._proxy import as_proxy

from .servers import HOST

# -- parsing -------------------------------------------------------------------------


def test_http_proxy_with_credentials() -> None:
    proxy = Proxy("http://us%40er:p%3Ass%20w@127.0.0.1:3128")
    assert (proxy.scheme, proxy.host, proxy.port) == ("http", "127.0.0.1", 3128)
    assert proxy.auth == ("us@er", "p:ss w")
    assert proxy.url == "http://127.0.0.1:3128"
    token = base64.b64encode(b"us@er:p:ss w")
    assert proxy.request_headers == ((b"Proxy-Authorization", b"Basic " + token),)
    assert not proxy.is_socks


def test_credentials_are_utf8() -> None:
    proxy = Proxy("http://j%C3%BCrgen:%E2%82%AC@proxy.test:8080/")
    assert proxy.auth == ("jürgen", "€")
    assert proxy.request_headers[0][1] == b"Basic " + base64.b64encode("jürgen:€".encode())


def test_user_without_password() -> None:
    assert Proxy("http://user@127.0.0.1:1").auth == ("user", "")


def test_socks_schemes_and_ipv6() -> None:
    socks = Proxy("SOCKS5://u:p@[::1]:1080")
    assert (socks.scheme, socks.host, socks.port, socks.auth) == ("socks5", "::1", 1080, ("u", "p"))
    assert socks.is_socks
    assert socks.url == "socks5://[::1]:1080"
    assert socks.request_headers == ()  # nothing HTTP about SOCKS
    assert Proxy("socks5h://Proxy.Test:1080").host == "proxy.test"


def test_auth_and_headers_arguments() -> None:
    proxy = Proxy("http://127.0.0.1:3128", auth=("a", "b"), headers={"X-Trace": "1"})
    assert proxy.auth == ("a", "b")
    assert proxy.headers == (("X-Trace", "1"),)
    assert proxy.request_headers == (
        (b"Proxy-Authorization", b"Basic " + base64.b64encode(b"a:b")),
        (b"X-Trace", b"1"),
    )
    bearer = Proxy("http://127.0.0.1:3128", headers=[("Proxy-Authorization", "Bearer t")])
    assert bearer.request_headers == ((b"Proxy-Authorization", b"Bearer t"),)


def test_value_semantics_and_repr() -> None:
    a = Proxy("HTTP://user:secret@127.0.0.1:3128")
    b = Proxy("http://127.0.0.1:3128", auth=("user", "secret"))
    assert a == b
    assert hash(a) == hash(b)
    assert a != Proxy("http://user:other@127.0.0.1:3128")
    assert a != Proxy("http://127.0.0.1:3128")
    assert a != Proxy("http://user:secret@127.0.0.1:3129")
    assert Proxy("socks5://127.0.0.1:1") != Proxy("socks5h://127.0.0.1:1")
    assert "secret" not in repr(a)
    assert repr(a) == "Proxy('http://user:***@127.0.0.1:3128')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1:3128", "https:// proxies"),
        ("ftp://127.0.0.1:21", "scheme must be one of"),
        ("socks4://127.0.0.1:1080", "scheme must be one of"),
        ("127.0.0.1:3128", "needs a scheme"),
        ("http://127.0.0.1", "must name a port"),
        ("http://127.0.0.1:0", "must name a port"),
        ("http://127.0.0.1:99999", "invalid port"),
        ("http://127.0.0.1:http", "invalid port"),
        ("http://127.0.0.1:3128/path", "path, query or fragment"),
        ("http://127.0.0.1:3128?", "path, query or fragment"),
        ("http://127.0.0.1:3128#top", "path, query or fragment"),
        ("http://127.0.0.1:3128\r\nX-Evil: 1", "control characters"),
        ("http://127.0.0.1:3128\n", "control characters"),
        ("http://127.0.0.1 :3128", "spaces"),
        ("http://:3128", "no host"),
        ("http://user:pw@:3128", "no host"),
        ("http://[::1:3128", "unparsable"),
        ("http://[nope]:3128", "unparsable"),
        ("http://%ff:x@127.0.0.1:3128", "not UTF-8"),
        ("http://a%3Ab:x@127.0.0.1:3128", "cannot contain ':'"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Proxy(url)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auth": ("a", "b"), "url": "http://u:p@127.0.0.1:1"}, "not both"),
        ({"headers": {"X-A": "1\r\nX-B: 2"}}, "CR, LF or NUL"),
        ({"headers": {"Bad Name": "1"}}, "invalid header name"),
        ({"headers": {"Host": "x"}}, "set by trio_pool"),
        (
            {"auth": ("a", "b"), "headers": {"proxy-authorization": "Basic x"}},
            "contradict",
        ),
        ({"auth": ("a\n", "b")}, "CR, LF or NUL"),
        ({"url": "socks5://127.0.0.1:1", "headers": {"X-A": "1"}}, "http:// proxies only"),
        ({"url": "socks5://127.0.0.1:1", "auth": ("", "p")}, "1-255 byte"),
        ({"url": "socks5://127.0.0.1:1", "auth": ("u" * 256, "p")}, "1-255 byte"),
    ],
)
def test_contradicting_or_bad_options(kwargs: dict[str, object], message: str) -> None:
    url = kwargs.pop("url", "http://127.0.0.1:3128")
    with pytest.raises(ValueError) as info:
        Proxy(url, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((b"http://127.0.0.1:1",), {}, "proxy URL must be a str, not bytes"),
        ((None,), {}, "proxy URL must be a str, not NoneType"),
        (("http://127.0.0.1:1",), {"auth": ["a", "b"]}, "auth must be"),
        (("http://127.0.0.1:1",), {"auth": ("a", 1)}, "auth must be"),
        (("http://127.0.0.1:1",), {"headers": "X-A: 1"}, "headers must be"),
        (("http://127.0.0.1:1",), {"headers": [("X-A", 1)]}, "headers must hold"),
        (("http://127.0.0.1:1",), {"headers": ["X-A"]}, "headers must hold"),
    ],
)
def test_wrong_types(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError) as info:
        Proxy(*args, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_socks_without_socksio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "socksio", None)  # import socksio now raises
    with pytest.raises(ImportError, match=r"pip install 'trio-pool\[socks\]'"):
        Proxy("socks5://127.0.0.1:1080")
    assert Proxy("http://127.0.0.1:3128").port == 3128  # HTTP proxies need no extra


# -- what the HTTP layer accepts -------------------------------------------------------------


def test_as_proxy() -> None:
    proxy = Proxy("http://127.0.0.1:3128")
    assert as_proxy(None) is None
    assert as_proxy(proxy) is proxy
    assert as_proxy("http://127.0.0.1:3128") == proxy
    assert as_proxy(httpx.URL("http://127.0.0.1:3128")) == proxy
    converted = as_proxy(
        httpx.Proxy("http://u%20x:p@127.0.0.1:3128", headers={"X-Trace": "7"}), "proxy"
    )
    assert converted == Proxy("http://127.0.0.1:3128", auth=("u x", "p"), headers={"x-trace": "7"})
    assert as_proxy(httpx.Proxy("socks5h://127.0.0.1:1080")) == Proxy("socks5h://127.0.0.1:1080")
    with pytest.raises(ValueError, match="ssl_context"):
        as_proxy(httpx.Proxy("http://127.0.0.1:3128", ssl_context=ssl.create_default_context()))
    with pytest.raises(ValueError, match="https:// proxies"):
        as_proxy(httpx.Proxy("https://127.0.0.1:3128"))
    with pytest.raises(TypeError, match=r"^proxies must be"):
        as_proxy(3128, "proxies")


# -- the pool key --------------------------------------------------------------------------


def test_the_route_is_part_of_the_key() -> None:
    one = Proxy("http://127.0.0.1:3128")
    other = Proxy("http://127.0.0.1:3129")
    socks = Proxy("socks5://127.0.0.1:1080")
    keys = {
        make_key(HOST, 443, True, None, True, None),
        make_key(HOST, 443, True, None, True, None, one),
        make_key(HOST, 443, True, None, True, None, other),
        make_key(HOST, 443, True, None, True, None, socks),
        make_key(HOST, 443, True, None, True, None, None, "/run/a.sock"),
        make_key(HOST, 443, True, None, True, None, None, "/run/b.sock"),
        make_key(HOST, 3128, False, None, True, None, Proxy("http://127.0.0.1:3128"), None, False),
        make_key(HOST, 3128, False, None, True, None, Proxy("http://127.0.0.1:3128"), None, True),
    }
    assert len(keys) == 8
    # Equal proxies are one key (value equality, not identity).
    assert make_key(HOST, 1, False, None, True, None, Proxy("http://127.0.0.1:3128")) == make_key(
        HOST, 1, False, None, True, None, Proxy("http://127.0.0.1:3128")
    )
    key = make_key(HOST, 443, True, None, True, None, one)
    assert key == PoolKey(HOST, 443, True, HOST, True, None, one, None, False)
    assert key.proxy is one
    assert make_key(HOST, 80, False, None, True, None).proxy is None  # old keys unchanged


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"proxy": "http://127.0.0.1:3128"}, TypeError, "trio_pool.Proxy(url)"),
        ({"uds": b"/run/x.sock"}, TypeError, "uds must be a str path or None, not bytes"),
        ({"uds": Path("/run/x.sock")}, TypeError, "pass str(path)"),
        ({"uds": ""}, ValueError, "uds must be a non-empty path"),
        ({"uds": "/run/a\x00b"}, ValueError, "without NUL"),
        (
            {"uds": "/run/x.sock", "proxy": Proxy("http://127.0.0.1:3128")},
            ValueError,
            "exclude each other",
        ),
        ({"forward": 1}, TypeError, "forward must be a bool"),
        ({"forward": True}, ValueError, "needs an http:// proxy"),
        (
            {"forward": True, "proxy": Proxy("socks5://127.0.0.1:1080")},
            ValueError,
            "needs an http:// proxy",
        ),
        (
            {"forward": True, "proxy": Proxy("http://127.0.0.1:3128"), "tls": True},
            ValueError,
            "tls must be False",
        ),
        (
            {"forward": True, "proxy": Proxy("http://127.0.0.1:3129")},
            ValueError,
            "host and port must be '127.0.0.1' and 3129",
        ),
    ],
)
async def test_bad_route_arguments_fail_before_any_io(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    async with trio_pool.open_pool() as pool:
        with pytest.raises(error) as info:
            pool.connection(HOST, 3128, **kwargs)  # type: ignore[arg-type]
        assert message in str(info.value)
        for method in (pool.acquire, pool.acquire_new, pool.prewarm):
            with pytest.raises(error):
                await method(HOST, 3128, **kwargs)  # type: ignore[operator]
        if "tls" not in kwargs:
            with pytest.raises(error):
                await pool.acquire_tls(HOST, 3128, **kwargs)  # type: ignore[arg-type]
        assert pool.statistics().connections_created == 0
        assert pool._state.keys == {}


async def test_abstract_unix_socket_name_is_accepted() -> None:
    key = make_key("localhost", 80, False, None, True, None, None, "\x00trio-pool-test")
    assert key.uds == "\x00trio-pool-test"
