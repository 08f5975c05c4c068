"""A fault-injecting loopback server and the pool soak that runs through it (issue 7).

The server speaks a tiny line protocol: the client sends ``b"%08d\\n" % n`` and, when
nothing goes wrong, gets the same 9 bytes back, so a client can tell a reply to its own
request from anything else (a desync). Per connection or per request it injects, at
random:

- ``reset``: close with ``SO_LINGER`` 0 before replying (the client sees ECONNRESET);
- ``close``: close gracefully before replying (the client sees EOF);
- ``close_after``: reply, then close gracefully (the pooled connection dies idle);
- ``stall``: stop answering, keep the connection open until the client goes;
- ``junk``: reply with unrequested bytes in the same send (between requests);
- ``silent``: accept, then never answer at all (for TLS: no handshake either).

The client side adds ``refused`` (a closed port) and its own random cancellation.
:func:`run_soak` drives thousands of ``pool.connection()`` / ``acquire`` uses through it
and returns the figures; the tests decide what must hold.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

import trio_pool

from .servers import HOST, open_fds, refused_port

__all__ = ["FAULTS", "FaultServer", "PeerClosed", "SoakReport", "run_soak"]

#: Fault kinds the server injects, with their default probabilities.
FAULTS: Final[dict[str, float]] = {
    "silent": 0.01,  # per connection
    "reset": 0.02,  # per request from here on
    "close": 0.02,
    "close_after": 0.03,
    "stall": 0.01,
    "junk": 0.04,
}
_REQUEST_SIZE: Final = 9
_JUNK: Final = b"JUNK-JUNK-JUNK\n"

AnyStream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


def _raw_socket(stream: AnyStream) -> trio.socket.SocketType:
    if isinstance(stream, trio.SSLStream):
        transport = stream.transport_stream
        assert isinstance(transport, trio.SocketStream)
        return transport.socket
    return stream.socket


class FaultServer:
    """A loopback server that injects faults at random; plain TCP or TLS.

    Args:
        seed: Seed of its own random generator (faults are reproducible per seed,
            up to scheduling order).
        faults: Probability of each fault kind (see the module docstring).
        ssl_context: Serve TLS with this server context.

    Attributes:
        injected: How many faults of each kind were injected.
        requests: Requests answered correctly.
        connections: Connections accepted.
        active: Connection handlers still running.
        enabled: Set to False to serve without faults.
    """

    def __init__(
        self,
        seed: int = 0,
        faults: dict[str, float] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.random = random.Random(seed)
        self.faults = dict(FAULTS if faults is None else faults)
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.ssl_context = ssl_context
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.connections = 0
        self.active = 0
        self.enabled = True
        self.idle = trio.Event()
        self.idle.set()

    async def start(self, nursery: trio.Nursery) -> int:
        """Serve in ``nursery`` on a free 127.0.0.1 port; return the port."""
        if self.ssl_context is None:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=HOST))
            sock = listeners[0].socket
        else:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, self._handle, 0, self.ssl_context, host=HOST)
            )
            sock = listeners[0].transport_listener.socket
        return int(sock.getsockname()[1])

    def _pick(self) -> str | None:
        if not self.enabled:
            return None
        roll = self.random.random()
        for kind, chance in self.faults.items():
            if kind == "silent":
                continue
            if roll < chance:
                return kind
            roll -= chance
        return None

    async def _handle(self, stream: AnyStream) -> None:
        self.connections += 1
        self.active += 1
        self.idle = trio.Event()
        try:
            if self.enabled and self.random.random() < self.faults.get("silent", 0.0):
                self.injected["silent"] += 1
                await self._drain(_raw_socket(stream))
                return
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.active -= 1
            if not self.active:
                self.idle.set()

    @staticmethod
    async def _drain(sock: trio.socket.SocketType) -> None:
        """Read and ignore everything until the client goes away."""
        try:
            while await sock.recv(65536):
                pass
        except OSError:
            pass

    async def _serve(self, stream: AnyStream) -> None:
        while True:
            request = b""
            while len(request) < _REQUEST_SIZE:
                chunk = await stream.receive_some(_REQUEST_SIZE - len(request))
                if not chunk:
                    return
                request += chunk
            kind = self._pick()
            if kind is not None:
                self.injected[kind] += 1
            if kind == "reset":
                sock = _raw_socket(stream)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                return
            if kind == "close":
                return
            if kind == "stall":
                if isinstance(stream, trio.SSLStream):
                    while await stream.receive_some():
                        pass
                else:
                    await self._drain(stream.socket)
                return
            self.requests += 1
            await stream.send_all(request + _JUNK if kind == "junk" else request)
            if kind == "close_after":
                return


class PeerClosed(Exception):
    """The server closed the connection before answering."""


class PeerJunk(Exception):
    """The server sent bytes nobody asked for during a borrow (seen by that borrower)."""


class Desync(Exception):
    """A reply that does not answer the request: a reused connection was out of sync."""


@dataclass
class SoakReport:
    """The figures of one soak run."""

    uses: int = 0
    requests: int = 0
    ok: int = 0
    cancelled: int = 0
    desyncs: int = 0
    refused_attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)
    stats: trio_pool.PoolStatistics | None = None
    seconds: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def failures_surfaced(self) -> int:
        """Failures that some fault explains (pool exhaustion is contention, not a fault).

        One failed connect reaches every task that waited on it (connect hand-off), so
        connect errors count as the failed connects behind them, at most.
        """
        connect = sum(n for kind, n in self.failures.items() if kind in _CONNECT_FAILURES)
        if self.stats is not None:
            connect = min(connect, self.stats.connect_failures)
        others = sum(
            n
            for kind, n in self.failures.items()
            if kind != "PoolExhausted" and kind not in _CONNECT_FAILURES
        )
        return others + connect

    def summary(self) -> str:
        stats = self.stats
        lines = [
            f"soak: {self.uses} uses, {self.requests} requests in {self.seconds:.1f} s",
            f"  ok uses {self.ok}, cancelled by caller {self.cancelled}",
            f"  faults injected {self.faults_injected}: {dict(sorted(self.faults.items()))}",
            f"  failures surfaced to callers {sum(self.failures.values())}:"
            f" {dict(sorted(self.failures.items()))}",
            f"  desyncs {self.desyncs}, leaks found {len(self.leaks)} {self.leaks or ''}",
        ]
        if stats is not None:
            lines.append(
                f"  pool: created {stats.connections_created}, closed"
                f" {stats.connections_closed}, hits {stats.pool_hits}, misses"
                f" {stats.pool_misses}, evicted {stats.connections_evicted},"
                f" connect failures {stats.connect_failures}, waits {stats.acquire_wait_count}"
            )
        return "\n".join(lines)


async def _read_reply(conn: trio_pool.PooledConnection, expected: bytes) -> None:
    reply = b""
    while len(reply) < len(expected):
        chunk = await conn.receive_some(len(expected) - len(reply))
        if not chunk:
            raise PeerClosed("the server closed the connection")
        reply += chunk
    if reply != expected:
        raise Desync(f"sent {expected!r}, got {reply!r}")


_CONNECT_FAILURES = ("ConnectError", "ConnectTimeout")


def check_pool(pool: trio_pool.ConnectionPool, where: str) -> list[str]:
    """What is wrong with a pool nobody uses right now (empty list: nothing)."""
    stats = pool.statistics()
    leaks = []
    if stats.active_connections:
        leaks.append(f"{where}: {stats.active_connections} active")
    if stats.tasks_waiting:
        leaks.append(f"{where}: {stats.tasks_waiting} waiting")
    if stats.connecting:
        leaks.append(f"{where}: {stats.connecting} connecting")
    if stats.connections_created - stats.connections_closed != stats.idle_connections:
        leaks.append(f"{where}: invariant broken {stats}")
    return leaks


async def run_soak(
    uses: int,
    *,
    workers: int = 24,
    seed: int = 0,
    faults: dict[str, float] | None = None,
    server_context: ssl.SSLContext | None = None,
    client_context: ssl.SSLContext | None = None,
) -> SoakReport:
    """Run ``uses`` pool uses through fault servers, then check for leaks.

    Two plain fault servers and (with ``server_context`` and ``client_context``) a TLS
    one, plus a refused port; ``max_size=4`` per key and ``max_total=10``, so callers
    also wait in line. Each use borrows a connection (``pool.connection()`` or
    ``acquire`` + ``release``/``discard``), makes 1-3 requests, and may be cancelled
    by its caller at a random moment. Afterwards the pool must hold nothing in use,
    nothing waiting and nothing connecting, its invariant must hold, it must still
    serve ``max_total`` connections at once (with faults off), and once it is closed
    the process must have no more file descriptors open than before.

    Returns:
        The figures; ``report.leaks`` lists every leak found (empty when none).
    """
    rng = random.Random(seed)
    report = SoakReport()
    fds_before = open_fds()
    started = trio.current_time()
    max_size, max_total = 4, 10
    async with trio.open_nursery() as servers:
        plain = [FaultServer(seed + i, faults) for i in (1, 2)]
        ports = [await server.start(servers) for server in plain]
        targets: list[tuple[FaultServer | None, int, dict[str, Any]]] = [
            (plain[0], ports[0], {}),
            (plain[1], ports[1], {}),
        ]
        weights = [0.45, 0.25]
        all_servers = list(plain)
        if server_context is not None and client_context is not None:
            tls = FaultServer(seed + 3, faults, ssl_context=server_context)
            all_servers.append(tls)
            tls_port = await tls.start(servers)
            targets.append((tls, tls_port, {"tls": True, "ssl_context": client_context}))
            weights.append(0.25)
        refused = refused_port()
        targets.append((None, refused, {}))
        weights.append(0.03)
        fds_listening = open_fds()
        next_id = 0

        async with trio_pool.open_pool(
            max_size=max_size,
            max_total=max_total,
            acquire_timeout=2.0,
            connection_timeout=0.25,
        ) as pool:

            async def converse(conn: trio_pool.PooledConnection, requests: int) -> None:
                nonlocal next_id
                for i in range(requests):
                    next_id += 1
                    message = b"%08d\n" % (next_id % 10**8)
                    report.requests += 1
                    await conn.send_all(message)
                    try:
                        await _read_reply(conn, message)
                    except Desync:
                        if i == 0:
                            raise  # the pool handed out a connection with stale bytes
                        # Junk the server sent after our own previous reply, on our own
                        # borrow: the pool never saw it. A failure, not a pool desync.
                        raise PeerJunk from None

            async def one_use() -> None:
                nonlocal next_id
                server, port, kwargs = rng.choices(targets, weights)[0]
                if server is None:
                    report.refused_attempts += 1
                roll = rng.random()
                # 15% cancelled early (mid-acquire, mid-connect, mid-handshake, mid-I/O)
                deadline = rng.uniform(0.0, 0.004) if roll < 0.15 else 0.3
                requests = rng.randint(1, 3)
                manual = rng.random() < 0.3
                with trio.move_on_after(deadline) as scope:
                    try:
                        if manual:
                            conn = await pool.acquire(HOST, port, **kwargs)
                            try:
                                await converse(conn, requests)
                            except BaseException:
                                pool.discard(conn)
                                raise
                            pool.release(conn)
                        else:
                            async with pool.connection(HOST, port, **kwargs) as conn:
                                await converse(conn, requests)
                        report.ok += 1
                    except Desync:
                        report.desyncs += 1
                    except (
                        trio_pool.ConnectError,
                        trio_pool.PoolExhausted,
                        trio.BrokenResourceError,
                        PeerClosed,
                        PeerJunk,
                    ) as exc:
                        report.failures[type(exc).__name__] += 1
                if scope.cancelled_caught:
                    report.cancelled += 1

            remaining = uses

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    report.uses += 1
                    await one_use()

            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker)

            # Hand-off connects may outlive the tasks they were started for (bounded by
            # connection_timeout): let them land or fail before looking for leaks.
            with trio.move_on_after(2.0):
                while pool.statistics().connecting:  # noqa: ASYNC110 - real connects
                    await trio.sleep(0.01)
            report.leaks += check_pool(pool, "after soak")
            report.stats = pool.statistics()
            for server in all_servers:
                report.faults.update(server.injected)
            report.faults["refused"] = report.refused_attempts

            # Full capacity, faults off: max_total connections at once, without waiting.
            for server in all_servers:
                server.enabled = False
            held = []
            live = targets[:-1]  # all but the refused port
            capacity = min(max_total, max_size * len(live))
            try:
                for i in range(capacity):
                    _, port, kwargs = live[i % len(live)]
                    held.append(await pool.acquire(HOST, port, timeout=0, **kwargs))
                for conn in held:
                    next_id += 1
                    message = b"%08d\n" % (next_id % 10**8)
                    await conn.send_all(message)
                    await _read_reply(conn, message)
                try:
                    await pool.acquire(HOST, ports[0], timeout=0)
                except trio_pool.PoolExhausted:
                    pass
                else:
                    report.leaks.append("capacity: acquired beyond the caps")
            except (trio_pool.PoolError, trio.BrokenResourceError, PeerClosed, Desync) as exc:
                report.leaks.append(f"capacity: {len(held)} of {capacity} served ({exc!r})")
            finally:
                for conn in held:
                    pool.release(conn)
            report.leaks += check_pool(pool, "after capacity check")

        with trio.move_on_after(10):
            for server in all_servers:
                await server.idle.wait()
        still_open = sum(server.active for server in all_servers)
        if still_open:
            report.leaks.append(f"sockets: {still_open} still open at the servers")
        if open_fds() != fds_listening:
            report.leaks.append(f"fds: {open_fds() - fds_listening} more with servers idle")
        servers.cancel_scope.cancel()
    if open_fds() != fds_before:
        report.leaks.append(f"fds: {open_fds() - fds_before} more after all closed")
    report.seconds = trio.current_time() - started
    return report
