"""Bytes that reach an idle TLS connection (issue 12, defect 2).

A TLS record that has only partly arrived cannot be decrypted yet: the SSL object says
"want read" whether the record is a harmless session ticket or the start of a response
nobody asked for. Reusing the connection then lets the next request read those bytes as
its answer. Only complete post-handshake records (tickets) leave an idle connection
reusable; any byte that did not decode into one means it is not.

The server here runs its own :class:`ssl.SSLObject` over a raw socket, so the test
decides exactly which bytes are on the wire and when: a record header alone, a header
and part of its body, a complete record followed by part of the next, for TLS 1.2 and 1.3.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trio
import trio.testing
import trustme

import trio_pool
from trio_pool.http import HTTPClient

from .servers import HOST, start_server

pytestmark = pytest.mark.filterwarnings("error")

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


class RawTLSServer:
    """Completes the handshake, then, once ``send_fault`` is set, writes
    ``fault(ssl_object, outgoing, held)`` raw onto the socket and stays silent.

    ``held`` is what a TLS 1.3 server sends right after the handshake (its session
    tickets), kept back until then so that they arrive while the connection is idle
    and in the same segment as the fault. Records the fault makes come after the
    tickets in sequence, as a real server's would.
    """

    def __init__(self, ca: trustme.CA, version: ssl.TLSVersion) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(self.context)
        self.context.minimum_version = self.context.maximum_version = version
        self.fault: Callable[[ssl.SSLObject, ssl.MemoryBIO, bytes], bytes] = header_only
        self.send_fault = trio.Event()
        self.fault_sent = trio.Event()
        self.port = 0
        # Instead: echo the first message (or send ``reply``) and the fault in one segment.
        self.with_reply = False
        self.reply: bytes | None = None

    async def handle(self, stream: trio.SocketStream) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        try:
            for _ in range(20):
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        await stream.send_all(outgoing.read())
                    data = await stream.receive_some()
                    if not data:
                        return
                    incoming.write(data)
            held = b""
            if tls.version() == "TLSv1.3":
                held = outgoing.read()  # the session tickets: sent later, on purpose
            elif outgoing.pending:
                await stream.send_all(outgoing.read())  # TLS 1.2's last flight
            if self.with_reply:
                for _ in range(20):
                    try:
                        message = tls.read(65536)
                        break
                    except ssl.SSLWantReadError:
                        data = await stream.receive_some()
                        if not data:
                            return
                        incoming.write(data)
                held += record(tls, outgoing, message if self.reply is None else self.reply)
            else:
                await self.send_fault.wait()
            fault = self.fault(tls, outgoing, held)
            if fault:
                await stream.send_all(fault)
            self.fault_sent.set()
            await trio.sleep_forever()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        finally:
            await stream.aclose()


def record(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, data: bytes) -> bytes:
    """One complete encrypted application-data record holding ``data``."""
    tls.write(data)
    return outgoing.read()


def header_only(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, held: bytes) -> bytes:
    return held + record(tls, outgoing, b"HTTP/1.1 200 OK\r\n\r\n")[:5]


def header_and_part(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, held: bytes) -> bytes:
    return held + record(tls, outgoing, b"HTTP/1.1 200 OK\r\n\r\n")[:12]


def record_then_part(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, held: bytes) -> bytes:
    return held + record(tls, outgoing, b"JUNK") + record(tls, outgoing, b"MORE JUNK")[:9]


def four_bytes(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, held: bytes) -> bytes:
    return held + record(tls, outgoing, b"JUNK")[:4]


FAULTS = {
    "header only": header_only,
    "header and part of the body": header_and_part,
    "a record, then part of one": record_then_part,
    "less than a header": four_bytes,
}


@pytest.mark.parametrize("version", VERSIONS, ids=["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_partial_record_on_idle_tls_connection_is_never_reused(
    nursery: trio.Nursery, ca: trustme.CA, version: ssl.TLSVersion, fault: str
) -> None:
    server = RawTLSServer(ca, version)
    server.fault = FAULTS[fault]  # (TLS 1.3: after the session tickets, in one segment)
    server.port = await start_server(nursery, server.handle)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio_pool.open_pool(max_size=2) as pool:
        conn = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        pool.release(conn)
        assert pool.statistics().idle_connections == 1
        server.send_fault.set()
        with trio.fail_after(5):
            await server.fault_sent.wait()
            await trio.lowlevel.wait_readable(conn.stream.transport_stream.socket)  # type: ignore[union-attr]
        again = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        assert again is not conn
        assert not again.reused
        assert conn.is_closed
        pool.discard(again)


@pytest.mark.parametrize("version", VERSIONS, ids=["TLSv1.2", "TLSv1.3"])
async def test_complete_tickets_keep_an_idle_connection_reusable(
    nursery: trio.Nursery, ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    """The other side of the check: whole post-handshake records are not a reason to
    discard (for TLS 1.3 the tickets arrive while the connection is idle)."""
    server = RawTLSServer(ca, version)
    server.fault = lambda tls, outgoing, held: held
    server.port = await start_server(nursery, server.handle)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio_pool.open_pool(max_size=2) as pool:
        conn = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        pool.release(conn)
        server.send_fault.set()
        with trio.fail_after(5):
            await server.fault_sent.wait()
        if version is ssl.TLSVersion.TLSv1_3:
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(conn.stream.transport_stream.socket)  # type: ignore[union-attr]
        again = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        assert again is conn
        assert again.reused
        pool.release(again)


@pytest.mark.parametrize("version", VERSIONS, ids=["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_partial_record_behind_the_reply_is_never_reused(
    nursery: trio.Nursery, ca: trustme.CA, version: ssl.TLSVersion, fault: str
) -> None:
    """The fragment comes in the same segment as the reply, so trio has it in the
    stream's incoming buffer already (not in the socket) when the reply is read."""
    server = RawTLSServer(ca, version)
    server.fault = FAULTS[fault]
    server.with_reply = True
    server.port = await start_server(nursery, server.handle)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio_pool.open_pool(max_size=2) as pool:
        conn = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        await conn.send_all(b"ping")
        with trio.fail_after(5):
            await server.fault_sent.wait()
            assert await conn.receive_some() == b"ping"
        pool.release(conn)
        assert conn.is_closed
        again = await pool.acquire_tls(HOST, server.port, ssl_context=client_context)
        assert again is not conn
        pool.discard(again)


@pytest.mark.parametrize("version", VERSIONS, ids=["TLSv1.2", "TLSv1.3"])
async def test_http_response_never_read_from_a_fragment(
    nursery: trio.Nursery, ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    """End to end: the fragment behind a response would be read as the next response."""
    server = RawTLSServer(ca, version)
    server.fault = header_and_part
    server.with_reply = True
    server.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server.port = await start_server(nursery, server.handle)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool, ssl_context=client_context, timeout=3)
        url = f"https://{HOST}:{server.port}/"
        for _ in range(3):
            assert (await client.request("GET", url)).content == b"ok"
        stats = pool.statistics()
        assert (stats.connections_created, stats.pool_hits) == (3, 0)
