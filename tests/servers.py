"""Real loopback servers for the tests: started in the test's nursery on 127.0.0.1:0."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Awaitable, Callable
from functools import partial

import trio

Handler = Callable[[trio.SocketStream], Awaitable[None]]
HOST = "127.0.0.1"


async def start_server(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve ``handler`` on a free 127.0.0.1 port in ``nursery``; return the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
    return int(listeners[0].socket.getsockname()[1])


async def echo(stream: trio.SocketStream) -> None:
    """Echo every byte back until the client closes."""
    try:
        async for data in stream:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def close_after_reply(stream: trio.SocketStream) -> None:
    """Echo one message, then close: the pooled connection dies while idle."""
    try:
        data = await stream.receive_some()
        if data:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def reply_then_junk(stream: trio.SocketStream) -> None:
    """Echo one message, then send bytes nobody asked for, then echo on."""
    try:
        data = await stream.receive_some()
        await stream.send_all(data)
        await stream.send_all(b"JUNK")
        await echo(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def stall(stream: trio.SocketStream) -> None:
    """Accept and never answer."""
    await trio.sleep_forever()


def reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the peer sees a connection reset."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def refused_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound then closed)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def unroutable_listener() -> tuple[socket.socket, int]:
    """A listening socket with backlog 0 whose queue we fill, so further connects hang.

    Returns the socket (keep it open) and its port.
    """
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(0)
    return sock, int(sock.getsockname()[1])


async def wait_listening(
    port: int, process: trio.Process, failure: Callable[[], str], timeout: float = 10.0
) -> None:
    """Wait (at most ``timeout`` seconds) until a server process accepts on ``HOST:port``.

    Raises:
        RuntimeError: The process exited first; the message is ``failure()`` (its log).
    """
    with trio.fail_after(timeout):
        while True:
            if process.returncode is not None:
                raise RuntimeError(failure())
            try:
                stream = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.02)
            else:
                await stream.aclose()
                return


async def wait_unix_listening(path: str, timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` seconds) until a server accepts on the Unix socket
    ``path``: a server started with a TCP and a Unix listener may accept on the first
    before it listens on the second (nginx binds and listens one listener at a time)."""
    with trio.fail_after(timeout):
        while True:
            try:
                stream = await trio.open_unix_socket(path)
            except OSError:
                await trio.sleep(0.02)
            else:
                await stream.aclose()
                return
