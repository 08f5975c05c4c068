"""Proxies that misbehave (issue 15): real trio servers playing HTTP and SOCKS5 proxies.

Each refuses, asks for credentials, closes or resets mid-tunnel, stalls, or answers junk;
every case must raise our typed error (:class:`~trio_pool.ProxyError` with the status
where there is one, :class:`~trio_pool.ConnectError` otherwise) and leak no socket and
no slot. The proxies here never connect anywhere: a "tunnel" is the fake proxy itself
playing the origin.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool import ConnectError, ConnectionPool, ConnectTimeout, Proxy, ProxyError

from .checks import assert_settled, settle_connects
from .proxies import read_head
from .servers import HOST, open_fds, start_server

HTTPScript = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def _http_proxy(script: HTTPScript, heads: list[bytes], stream: trio.SocketStream) -> None:
    try:
        head = await read_head(stream)
        heads.append(head)
        if head:
            await script(stream, head)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def fake_http_proxy(
    nursery: trio.Nursery, script: HTTPScript, url: str = "http://{host}:{port}"
) -> tuple[Proxy, list[bytes]]:
    """A proxy running ``script`` after reading each request head; the heads it read."""
    heads: list[bytes] = []
    port = await start_server(nursery, partial(_http_proxy, script, heads))
    return Proxy(url.format(host=HOST, port=port)), heads


def answer(reply: bytes) -> HTTPScript:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(reply)

    return script


async def reset(stream: trio.SocketStream, head: bytes) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def hang(stream: trio.SocketStream, head: bytes) -> None:
    """Never answer; close when the client does."""
    async for _ in stream:
        pass


async def established_then_echo(stream: trio.SocketStream, head: bytes) -> None:
    """``100 Continue``, then a ``200`` dripped byte by byte with a banner glued to its
    last byte, then echo: the bytes behind the head must reach the caller."""
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Connection established\r\n\r\n"
    for byte in reply[:-1]:
        await stream.send_all(bytes([byte]))
        await trio.sleep(0.001)
    await stream.send_all(reply[-1:] + b"BANNER\n")
    async for data in stream:
        await stream.send_all(data)


async def expect_failure(
    pool: trio_pool.ConnectionPool, proxy: Proxy, error: type[Exception], **kwargs: object
) -> Exception:
    with pytest.raises(error) as info:
        await pool.acquire(HOST, 4433, proxy=proxy, **kwargs)  # type: ignore[arg-type]
    assert_settled(pool)
    assert pool.statistics().connect_failures == 1
    return info.value


# -- HTTP CONNECT ----------------------------------------------------------------------


async def test_connect_request_carries_the_authority_and_proxy_headers(
    nursery: trio.Nursery,
) -> None:
    proxy, heads = await fake_http_proxy(
        nursery, answer(b"HTTP/1.1 403 Forbidden\r\n\r\n"), "http://u%3F:p%40@{host}:{port}"
    )
    proxy = Proxy(proxy.url, auth=proxy.auth, headers={"X-Trace": "42"})
    async with trio_pool.open_pool() as pool:
        for host in ("origin.test", "::1"):
            with pytest.raises(ProxyError):
                await pool.acquire(host, 443, tls=True, proxy=proxy)
    assert heads == [
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic dT86cEA=\r\n"
        b"X-Trace: 42\r\n\r\n" % (authority, authority)
        for authority in (b"origin.test:443", b"[::1]:443")
    ]


async def test_international_names_reach_the_proxy_idna_encoded(nursery: trio.Nursery) -> None:
    proxy, heads = await fake_http_proxy(nursery, answer(b"HTTP/1.1 403 Forbidden\r\n\r\n"))
    socks = FakeSocks(reply=b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    socks_proxy = await start_socks(nursery, socks, "socks5h")
    async with trio_pool.open_pool() as pool:
        for via in (proxy, socks_proxy):
            with pytest.raises(ProxyError):
                await pool.acquire("bücher.test", 443, proxy=via)
        # A name no proxy can be sent fails before connecting to it.
        for via in (proxy, socks_proxy):
            with pytest.raises(ConnectError, match="cannot send a host name of 300 bytes"):
                await pool.acquire("a" * 300, 443, proxy=via)
        assert_settled(pool)
    assert heads == [
        b"CONNECT xn--bcher-kva.test:443 HTTP/1.1\r\nHost: xn--bcher-kva.test:443\r\n\r\n"
    ]
    assert socks.requests == [(3, b"xn--bcher-kva.test", 443)]
    assert socks.methods == [b"\x00"]  # (the 300-byte name never connected)


@pytest.mark.parametrize(("status", "reason"), [(403, b"Forbidden"), (502, b"Bad Gateway")])
async def test_refused_connect_raises_proxy_error_with_the_status(
    nursery: trio.Nursery, status: int, reason: bytes
) -> None:
    reply = b"HTTP/1.1 %d %s\r\nContent-Length: 5\r\n\r\nnope\n" % (status, reason)
    proxy, _ = await fake_http_proxy(nursery, answer(reply))
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        exc = await expect_failure(pool, proxy, ProxyError, tls=True)
    assert isinstance(exc, ProxyError)
    assert exc.status == status
    assert exc.proxy == proxy.url
    assert f"refused CONNECT 127.0.0.1:4433: {status} {reason.decode()}" in str(exc)
    assert isinstance(exc, ConnectError)
    assert open_fds() == fds


async def test_proxy_asking_for_credentials(nursery: trio.Nursery) -> None:
    reply = (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n'
    )
    proxy, _ = await fake_http_proxy(nursery, answer(reply))
    async with trio_pool.open_pool() as pool:
        exc = await expect_failure(pool, proxy, ProxyError)
    assert isinstance(exc, ProxyError)
    assert exc.status == 407
    assert 'challenge: Basic realm="corp"; give credentials in the proxy URL' in str(exc)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (answer(b""), "closed the connection before answering CONNECT"),
        (answer(b"HTTP/1.1 200 Conn"), "closed the connection before answering CONNECT"),
        (answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "with something that is not HTTP"),
        (answer(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 40000), "with something that is not HTTP"),
        (reset, "broke the tunnel"),
    ],
    ids=["close", "half-a-head", "junk", "endless-head", "reset"],
)
async def test_broken_connect_answers(
    nursery: trio.Nursery, script: HTTPScript, message: str
) -> None:
    proxy, _ = await fake_http_proxy(nursery, script)
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        exc = await expect_failure(pool, proxy, ProxyError, tls=True)
    assert isinstance(exc, ProxyError)
    assert exc.status is None
    assert message in str(exc)
    assert open_fds() == fds


@pytest.fixture(scope="module")
def client_ctx() -> ssl.SSLContext:
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    return context


async def close_after_200(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")


async def half_a_server_hello(stream: trio.SocketStream, head: bytes) -> None:
    await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert (await stream.receive_some())[:1] == b"\x16"  # the ClientHello, inside the tunnel
    await stream.send_all(b"\x16\x03\x03\x00\x40" + b"\x02" * 10)


@pytest.mark.parametrize("script", [close_after_200, half_a_server_hello])
async def test_tunnel_closing_during_tls(
    nursery: trio.Nursery, client_ctx: ssl.SSLContext, script: HTTPScript
) -> None:
    proxy, _ = await fake_http_proxy(nursery, script)
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        exc = await expect_failure(pool, proxy, ConnectError, tls=True, ssl_context=client_ctx)
    # (the route named, issue 20 item 13)
    assert f"TLS handshake with 127.0.0.1:4433 through the proxy {proxy.url} failed" in str(exc)
    assert open_fds() == fds


async def test_bytes_behind_the_connect_response_are_not_lost(
    nursery: trio.Nursery, pool: ConnectionPool
) -> None:
    proxy, _ = await fake_http_proxy(nursery, established_then_echo)
    conn = await pool.acquire(HOST, 4433, proxy=proxy)
    received = b""
    with trio.fail_after(5):
        while len(received) < len(b"BANNER\n"):
            received += await conn.receive_some()
    assert received == b"BANNER\n"
    await conn.send_all(b"ping")
    assert await conn.receive_some() == b"ping"
    pool.release(conn)
    assert_settled(pool)


@pytest.mark.parametrize("max_connecting", [None, 64])
async def test_stalled_proxy_times_out_and_cancellation_leaks_nothing(
    nursery: trio.Nursery, max_connecting: int | None
) -> None:
    proxy, heads = await fake_http_proxy(nursery, hang)
    fds = open_fds()
    async with trio_pool.open_pool(connection_timeout=0.3, max_connecting=max_connecting) as pool:
        with pytest.raises(ConnectTimeout):
            await pool.acquire(HOST, 4433, tls=True, proxy=proxy)
        assert_settled(pool)
        with trio.move_on_after(0.1) as scope:
            await pool.acquire(HOST, 4433, tls=True, proxy=proxy)
        assert scope.cancelled_caught
        if max_connecting is None:
            # Tied connects: the cancelled task's own connect was cancelled with it.
            stats = pool.statistics()
            assert stats.connect_failures == 1  # a cancelled connect is no failure
        else:
            # Hand-off: the connect outlives its cancelled task and times out on its own.
            await settle_connects(pool)
            stats = pool.statistics()
            assert stats.connect_failures == 2
        assert_settled(stats)
    await trio.testing.wait_all_tasks_blocked()  # the proxy saw both EOFs and closed
    assert len(heads) == 2
    assert open_fds() == fds


# -- SOCKS5 ---------------------------------------------------------------------------


async def receive_exactly(stream: trio.SocketStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        assert chunk, "client closed early"
        data += chunk
    return data


class FakeSocks:
    """A SOCKS5 server speaking the protocol right up to where it was told to go wrong.

    ``greeting`` and ``reply`` replace its answers (``b""``: close instead); it records
    the methods offered, the login and the ``CONNECT`` request (atype, address, port).
    After a success it sends ``BANNER`` in the same write as the reply, then echoes.
    """

    def __init__(self, *, greeting: bytes | None = None, reply: bytes | None = None) -> None:
        self.greeting = greeting
        self.reply = reply
        self.methods: list[bytes] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.requests: list[tuple[int, bytes, int]] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        version, count = await receive_exactly(stream, 2)
        assert version == 5
        methods = await receive_exactly(stream, count)
        self.methods.append(methods)
        greeting = self.greeting
        if greeting is None:
            greeting = b"\x05\x02" if b"\x02" in methods else b"\x05\x00"
        if not greeting:
            return
        await stream.send_all(greeting)
        if greeting == b"\x05\x02":
            _, ulen = await receive_exactly(stream, 2)
            user = await receive_exactly(stream, ulen)
            (plen,) = await receive_exactly(stream, 1)
            self.logins.append((user, await receive_exactly(stream, plen)))
            if self.logins[-1] != (b"u", b"p"):
                await stream.send_all(b"\x01\x01")
                return
            await stream.send_all(b"\x01\x00")
        if greeting[1:] not in (b"\x00", b"\x02"):
            return
        _, command, _, atype = await receive_exactly(stream, 4)
        assert command == 1
        if atype == 3:
            (length,) = await receive_exactly(stream, 1)
            address = await receive_exactly(stream, length)
        else:
            address = await receive_exactly(stream, 4 if atype == 1 else 16)
        (port,) = struct.unpack("!H", await receive_exactly(stream, 2))
        self.requests.append((atype, address, port))
        if self.reply is not None:
            await stream.send_all(self.reply)
            return
        # Success, bound "to" a domain name, and the origin speaking first.
        await stream.send_all(b"\x05\x00\x00\x03\x0abound.here\x01\xbbBANNER\n")
        async for data in stream:
            await stream.send_all(data)


async def start_socks(nursery: trio.Nursery, socks: FakeSocks, scheme: str = "socks5") -> Proxy:
    port = await start_server(nursery, socks.serve)
    return Proxy(f"{scheme}://{HOST}:{port}")


@pytest.mark.parametrize(
    ("host", "scheme", "request_"),
    [
        ("localhost", "socks5h", (3, b"localhost", 4433)),
        ("127.0.0.1", "socks5", (1, b"\x7f\x00\x00\x01", 4433)),
        ("::1", "socks5h", (4, b"\x00" * 15 + b"\x01", 4433)),
    ],
)
async def test_socks_request_and_banner(
    nursery: trio.Nursery, host: str, scheme: str, request_: tuple[int, bytes, int]
) -> None:
    socks = FakeSocks()
    proxy = await start_socks(nursery, socks, scheme)
    async with trio_pool.open_pool() as pool:
        conn = await pool.acquire(host, 4433, proxy=proxy)
        received = b""
        with trio.fail_after(5):
            while len(received) < len(b"BANNER\n"):
                received += await conn.receive_some()
        assert received == b"BANNER\n"  # nothing behind the reply was swallowed
        await conn.send_all(b"ping")
        assert await conn.receive_some() == b"ping"
        pool.release(conn)
        assert_settled(pool)
    assert socks.methods == [b"\x00"]
    assert socks.requests == [request_]


async def test_socks_login(nursery: trio.Nursery) -> None:
    socks = FakeSocks()
    port = await start_server(nursery, socks.serve)
    async with trio_pool.open_pool() as pool:
        with pytest.raises(ProxyError, match="rejected the user name and password"):
            await pool.acquire(HOST, 4433, proxy=Proxy(f"socks5://u:bad@{HOST}:{port}"))
        conn = await pool.acquire(HOST, 4433, proxy=Proxy(f"socks5://u:p@{HOST}:{port}"))
        pool.release(conn)
        assert_settled(pool)
    assert socks.methods == [b"\x02", b"\x02"]
    assert socks.logins == [(b"u", b"bad"), (b"u", b"p")]


@pytest.mark.parametrize(
    ("socks", "message"),
    [
        (FakeSocks(greeting=b"HT"), "answered with something that is not SOCKS5"),
        (FakeSocks(greeting=b"\x05\xff"), "accepts none of our login methods (it wants"),
        (FakeSocks(greeting=b"\x05\x7e"), "malformed reply"),
        (FakeSocks(greeting=b""), "closed the connection during the handshake"),
        (FakeSocks(greeting=b"\x05"), "closed the connection during the handshake"),
        (
            FakeSocks(reply=b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"),
            "refused CONNECT: connection not allowed by ruleset",
        ),
        (
            FakeSocks(reply=b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"),
            "refused CONNECT: command not supported",
        ),
        (FakeSocks(reply=b"\x05\x42\x00\x01\x00\x00\x00\x00\x00\x00"), "malformed reply"),
        (FakeSocks(reply=b"\x05\x00\x00\x09\x00\x00\x00"), "malformed reply"),
        (FakeSocks(reply=b"HTTP/1.1 400 Bad\r\n\r\n"), "answered CONNECT with something that"),
        (FakeSocks(reply=b"\x05\x00\x00\x01\x7f"), "closed the connection during the handshake"),
    ],
    ids=[
        "junk-greeting",
        "no-acceptable-method",
        "unknown-method",
        "close-at-greeting",
        "half-a-greeting",
        "ruleset",
        "command-not-supported",
        "unknown-reply-code",
        "unknown-address-type",
        "junk-reply",
        "half-a-reply",
    ],
)
async def test_broken_socks_answers(nursery: trio.Nursery, socks: FakeSocks, message: str) -> None:
    proxy = await start_socks(nursery, socks)
    fds = open_fds()
    async with trio_pool.open_pool() as pool:
        exc = await expect_failure(pool, proxy, ProxyError, tls=True)
    assert isinstance(exc, ProxyError)
    assert exc.status is None
    assert message in str(exc)
    assert str(exc).startswith(f"the SOCKS5 proxy {proxy.url} ")
    assert open_fds() == fds


# -- stalls: a connect that times out names the proxy and the phase (issue 20, item 13) --


async def stall_after(answers: list[bytes], stream: trio.SocketStream) -> None:
    """A proxy that answers each of the client's first writes with the next of
    ``answers``, then never again (it reads on until the client gives up)."""
    try:
        for reply in answers:
            await stream.receive_some()
            await stream.send_all(reply)
        async for _ in stream:
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def start_stalling(nursery: trio.Nursery, scheme: str, answers: list[bytes]) -> Proxy:
    port = await start_server(nursery, partial(stall_after, answers))
    return Proxy(f"{scheme}://user:s3cr3t@{HOST}:{port}")


@pytest.mark.parametrize(
    ("scheme", "answers", "tls", "phase"),
    [
        ("http", [], False, "CONNECT exchange with the proxy"),
        ("http", [], True, "CONNECT exchange with the proxy"),
        (
            "http",
            [b"HTTP/1.1 200 Connection established\r\n\r\n"],
            True,
            "TLS handshake with the origin",
        ),
        ("socks5", [], True, "SOCKS5 handshake with the proxy"),
        ("socks5h", [], False, "SOCKS5 handshake with the proxy"),
        ("socks5", [b"\x05\x02"], True, "SOCKS5 handshake with the proxy"),  # at the login
        ("socks5h", [b"\x05\x02", b"\x01\x00"], True, "SOCKS5 CONNECT request to the proxy"),
        ("socks5", [b"\x05\x02", b"\x01\x00"], False, "SOCKS5 CONNECT request to the proxy"),
    ],
    ids=[
        "http-connect",
        "http-connect-tls",
        "http-tls-to-origin",
        "socks-greeting",
        "socks5h-greeting",
        "socks-login",
        "socks5h-request",
        "socks-request",
    ],
)
async def test_stalled_proxy_names_the_proxy_and_the_phase(
    nursery: trio.Nursery, scheme: str, answers: list[bytes], tls: bool, phase: str
) -> None:
    proxy = await start_stalling(nursery, scheme, answers)
    async with trio_pool.open_pool(connection_timeout=30) as pool:
        with pytest.raises(ConnectTimeout) as info:
            await pool.acquire("localhost", 4433, tls=tls, proxy=proxy, connect_timeout=0.3)
        assert_settled(pool)
    message = str(info.value)
    assert message == (
        f"connecting to localhost:4433 through the proxy {proxy.url} took longer than"
        f" 0.3 s (connect timeout, during the {phase})"
    )
    assert "cr3t" not in message


async def test_unreachable_proxy_names_the_proxy_and_the_tcp_connect(hanging_port: int) -> None:
    proxy = Proxy(f"http://user:s3cr3t@{HOST}:{hanging_port}")
    async with trio_pool.open_pool(connection_timeout=0.3) as pool:
        with pytest.raises(ConnectTimeout) as info:
            await pool.acquire("localhost", 4433, tls=True, proxy=proxy)
        with pytest.raises(ConnectTimeout) as forwarded:
            await pool.acquire(HOST, hanging_port, proxy=proxy, forward=True)
        assert_settled(pool)
    assert str(info.value) == (
        f"connecting to localhost:4433 through the proxy {proxy.url} took longer than"
        " 0.3 s (connect timeout, during the TCP connect to the proxy)"
    )
    assert str(forwarded.value) == (
        f"connecting to the proxy {proxy.url} (to forward requests) took longer than"
        " 0.3 s (connect timeout, during the TCP connect to the proxy)"
    )
