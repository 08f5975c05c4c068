"""``local_address`` and ``socket_options`` (issue 22): the source address a server sees,
and options read back from the socket, through httpx (ours and httpx's own transport on
the same server), the HTTP client, and a host name's address book."""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

import trio_pool
from trio_pool import ConnectError
from trio_pool._route import Route
from trio_pool.http import HTTPClient

from .httpx_pair import ours, theirs
from .servers import HOST
from .upstreams import IPS, NAME, ReplicaResolver, Replicas

OPTIONS = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 7),
]


class PeerServer:
    """An HTTP/1.1 server on 127.0.0.1 answering ``ok``; records each client address."""

    def __init__(self) -> None:
        self.port = 0
        self.peers: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.peers.append(stream.socket.getpeername()[0])
        data = b""
        try:
            while True:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    _, _, data = data.partition(b"\r\n\r\n")
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except trio.BrokenResourceError:
            pass


@pytest.fixture
async def server(nursery: trio.Nursery) -> PeerServer:
    peer = PeerServer()
    listeners = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host=HOST))
    peer.port = listeners[0].socket.getsockname()[1]
    return peer


Make = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.mark.parametrize("make", [ours, theirs], ids=["pool", "httpx"])
async def test_httpx_local_address_and_socket_options(make: Make, server: PeerServer) -> None:
    async with make(local_address="127.0.0.2", socket_options=OPTIONS) as client:
        response = await client.get(f"http://{HOST}:{server.port}/")
        assert response.text == "ok"
        sock = response.extensions["network_stream"].get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert server.peers == ["127.0.0.2"]


async def test_http_client_keys_apart_by_socket_settings(server: PeerServer) -> None:
    url = f"http://{HOST}:{server.port}/"
    async with trio_pool.open_pool() as pool:
        for local in ("127.0.0.3", "127.0.0.4", None, "127.0.0.3"):
            client = HTTPClient(pool, local_address=local)
            assert (await client.request("GET", url)).status == 200
        assert pool.statistics().connections_created == 3
    assert server.peers == ["127.0.0.3", "127.0.0.4", "127.0.0.1"]


async def test_a_host_names_dials_use_local_address(nursery: trio.Nursery) -> None:
    replicas = Replicas(nursery)
    for ip in IPS[:2]:
        await replicas.start(ip)
    trio.socket.set_custom_hostname_resolver(ReplicaResolver(IPS[:2]))
    async with trio_pool.open_pool() as pool:
        key = pool.lookup(
            Route(NAME, replicas.port, local_address="127.0.0.7", socket_options=OPTIONS)
        )
        for _ in range(2):
            conn = await pool.acquire_on(key, None, None, new=True)
            assert isinstance(conn, trio_pool.PooledConnection)
            sock = conn.stream.socket  # type: ignore[union-attr]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            pool.discard(conn)
    assert replicas.peers == {IPS[0]: ["127.0.0.7"], IPS[1]: ["127.0.0.7"]}


async def test_an_option_the_system_refuses_is_a_connect_error(server: PeerServer) -> None:
    async with trio_pool.open_pool() as pool:
        key = pool.lookup(Route(HOST, server.port, socket_options=[(socket.SOL_SOCKET, 4242, 1)]))
        with pytest.raises(ConnectError, match="cannot set the socket option"):
            await pool.acquire_on(key, None, None)
        assert pool.statistics().connect_failures == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"local_address": "localhost"}, ValueError, "local_address must be an IP address"),
        ({"local_address": b"127.0.0.1"}, TypeError, "local_address must be a str"),
        ({"local_address": "127.0.0.1", "uds": "/tmp/x"}, ValueError, "Unix socket"),
        ({"socket_options": "abc"}, TypeError, "socket_options must be an iterable"),
        ({"socket_options": [(1, 2)]}, TypeError, "each socket option"),
        ({"socket_options": [(1, "2", 3)]}, TypeError, "option must be an int"),
        ({"socket_options": [(1, 2, 3.0)]}, TypeError, "value must be an int or bytes"),
        ({"socket_options": [(1, 2, 3, 4)]}, ValueError, "value None"),
    ],
)
def test_bad_socket_settings_raise_before_io(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Route(NAME, 80, **kwargs)


def test_socket_settings_normalize() -> None:
    route = Route(NAME, 80, socket_options=[(1, 2, bytearray(b"x")), [][:0] or (1, 3, None, 4)])
    assert route.socket_options == ((1, 2, b"x"), (1, 3, None, 4))
    assert Route(NAME, 80, socket_options=[]).socket_options is None
    assert Route(NAME, 80, socket_options=[]) == Route(NAME, 80)
