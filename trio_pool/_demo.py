"""``python -m trio_pool demo``: what pooling saves, measured live on loopback servers.

The demo starts small request/response servers on ``127.0.0.1`` (plain TCP, and TLS with
a certificate from a throwaway :mod:`trustme` CA) in the same trio run, then drives the
same workload against them several ways:

* a new TCP connection per request (what a client without a pool does);
* pooled TCP connections (:meth:`~trio_pool.ConnectionPool.connection`);
* a new TLS connection per request, each with a full handshake;
* pooled TLS connections, where the connections the pool still has to open resume the
  TLS session of the first one.

Every way starts with one request per host (as any client does), then runs the rest at
the given concurrency. Nothing is slowed down artificially: the servers answer at once,
so what separates the rows is the cost of connecting and handshaking.
"""

from __future__ import annotations

import math
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, TextIO

import trio

from ._exceptions import PoolError
from ._pool import ConnectionPool, open_pool
from ._util import check_int

__all__ = ["DemoSummary", "ModeResult", "run_demo"]

HOST: Final = "127.0.0.1"
REQUEST: Final = b"GET /item/42 please\n"
RESPONSE: Final = b"OK " + REQUEST

DEFAULT_REQUESTS: Final = 2000
DEFAULT_CONCURRENCY: Final = 20
DEFAULT_HOSTS: Final = 4
MAX_HOSTS: Final = 64

_TTY_REFRESH: Final = 0.25  # seconds between redraws of the live table on a terminal


@dataclass(frozen=True)
class Mode:
    """One way of sending the workload."""

    key: str
    title: str
    tls: bool
    pooled: bool


MODES: Final = (
    Mode("tcp-new", "TCP, no pool", tls=False, pooled=False),
    Mode("tcp-pooled", "TCP, pooled", tls=False, pooled=True),
    Mode("tls-new", "TLS, no pool", tls=True, pooled=False),
    Mode("tls-pooled", "TLS, pooled", tls=True, pooled=True),
)


@dataclass(frozen=True)
class ModeResult:
    """What one way of sending the workload did (live, or at the end).

    Attributes:
        mode: The mode's key: ``tcp-new``, ``tcp-pooled``, ``tls-new`` or ``tls-pooled``.
        title: The mode's name as shown in the table.
        pooled: Whether requests went through a :class:`~trio_pool.ConnectionPool`.
        tls: Whether requests went over TLS.
        total: Requests to send.
        done: Requests answered.
        errors: Requests that failed.
        seconds: Time taken so far.
        connections_created: Connections opened.
        connections_closed: Connections closed.
        idle: Connections idle in the pool (0 without a pool).
        active: Connections in use.
        hits: Requests served by a pooled connection.
        misses: Requests that opened a connection.
        tls_handshakes: TLS handshakes completed.
        tls_resumptions: Of those, handshakes that resumed a session.
        p50: Median request latency in seconds (connect included).
        p99: 99th percentile request latency in seconds.
    """

    mode: str
    title: str
    pooled: bool
    tls: bool
    total: int
    done: int
    errors: int
    seconds: float
    connections_created: int
    connections_closed: int
    idle: int
    active: int
    hits: int
    misses: int
    tls_handshakes: int
    tls_resumptions: int
    p50: float
    p99: float

    @property
    def requests_per_second(self) -> float:
        """Answered requests per second."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``; 0.0 before any request."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True)
class DemoSummary:
    """The demo's results, one :class:`ModeResult` per mode run."""

    requests: int
    concurrency: int
    hosts: int
    results: tuple[ModeResult, ...]

    def __getitem__(self, mode: str) -> ModeResult:
        for result in self.results:
            if result.mode == mode:
                return result
        raise KeyError(mode)

    def speedup(self, tls: bool) -> float | None:
        """Requests per second pooled over new-connection-per-request (``None`` if not run)."""
        try:
            new = self["tls-new" if tls else "tcp-new"]
            pooled = self["tls-pooled" if tls else "tcp-pooled"]
        except KeyError:
            return None
        if new.requests_per_second == 0:
            return None
        return pooled.requests_per_second / new.requests_per_second


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Run:
    """Live counters of one mode; pooled modes read most of theirs from the pool."""

    def __init__(self, mode: Mode, total: int) -> None:
        self.mode = mode
        self.total = total
        self.done = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.started = trio.current_time()
        self.finished: float | None = None
        self.pool: ConnectionPool | None = None
        # Used by the modes without a pool.
        self.created = 0
        self.closed = 0
        self.active = 0
        self.tls_handshakes = 0

    def result(self) -> ModeResult:
        end = self.finished if self.finished is not None else trio.current_time()
        ordered = sorted(self.latencies)
        common = {
            "mode": self.mode.key,
            "title": self.mode.title,
            "pooled": self.mode.pooled,
            "tls": self.mode.tls,
            "total": self.total,
            "done": self.done,
            "errors": self.errors,
            "seconds": end - self.started,
            "p50": _percentile(ordered, 0.50),
            "p99": _percentile(ordered, 0.99),
        }
        if self.pool is not None:
            stats = self.pool.statistics()
            return ModeResult(
                **common,  # type: ignore[arg-type]
                connections_created=stats.connections_created,
                connections_closed=stats.connections_closed,
                idle=stats.idle_connections,
                active=stats.active_connections,
                hits=stats.pool_hits,
                misses=stats.pool_misses,
                tls_handshakes=stats.tls_handshakes,
                tls_resumptions=stats.tls_resumptions,
            )
        return ModeResult(
            **common,  # type: ignore[arg-type]
            connections_created=self.created,
            connections_closed=self.closed,
            idle=0,
            active=self.active,
            hits=0,
            misses=self.done + self.errors,
            tls_handshakes=self.tls_handshakes,
            tls_resumptions=0,
        )


# -- servers ---------------------------------------------------------------------------


async def _answer_lines(stream: trio.abc.Stream) -> None:
    """Answer every newline-terminated request with ``OK <request>``."""
    buffer = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            await stream.send_all(b"OK " + line)


async def _serve(stream: trio.abc.Stream) -> None:
    """Answer requests until the client leaves, then close the stream."""
    try:
        await _answer_lines(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _tls_server(context: ssl.SSLContext) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def serve(stream: trio.SocketStream) -> None:
        await _serve(trio.SSLStream(stream, context, server_side=True, https_compatible=True))

    return serve


async def _start_servers(
    nursery: trio.Nursery,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    count: int,
) -> list[int]:
    ports = []
    for _ in range(count):
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
        ports.append(int(listeners[0].socket.getsockname()[1]))
    return ports


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context trusting a CA made just now."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


# -- clients ----------------------------------------------------------------------------


async def _exchange(stream: trio.abc.Stream) -> None:
    """Send one request and read its whole response."""
    await stream.send_all(REQUEST)
    response = b""
    while not response.endswith(b"\n"):
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("the server closed the connection")
        response += data
    if response != RESPONSE:
        raise trio.BrokenResourceError(f"unexpected response {response!r}")


async def _request_new(run: _Run, context: ssl.SSLContext | None, port: int) -> None:
    """A new connection (and full TLS handshake) for one request, then close it."""
    tcp = await trio.open_tcp_stream(HOST, port)
    run.created += 1
    run.active += 1
    stream: trio.abc.Stream = tcp
    try:
        if context is not None:
            tls = trio.SSLStream(tcp, context, server_hostname=HOST, https_compatible=True)
            await tls.do_handshake()
            run.tls_handshakes += 1
            stream = tls
        await _exchange(stream)
    finally:
        run.active -= 1
        run.closed += 1
        await trio.aclose_forcefully(stream)


async def _request_pooled(pool: ConnectionPool, context: ssl.SSLContext | None, port: int) -> None:
    async with pool.connection(HOST, port, tls=context is not None, ssl_context=context) as conn:
        await _exchange(conn)


async def _run_mode(
    run: _Run, ports: Sequence[int], concurrency: int, context: ssl.SSLContext | None
) -> ModeResult:
    """Send the workload one way; the result is taken before the pool closes."""
    if not run.mode.pooled:
        await _drive(run, ports, concurrency, partial(_request_new, run, context))
        return run.result()
    async with open_pool(max_size=concurrency) as pool:
        run.pool = pool
        await _drive(run, ports, concurrency, partial(_request_pooled, pool, context))
        return run.result()


async def _drive(
    run: _Run,
    ports: Sequence[int],
    concurrency: int,
    request: Callable[[int], Awaitable[None]],
) -> None:
    """One request per host first, then the rest with ``concurrency`` workers."""

    async def one(port: int) -> None:
        start = trio.current_time()
        try:
            await request(port)
        except (OSError, trio.BrokenResourceError, PoolError):
            run.errors += 1
        else:
            run.latencies.append(trio.current_time() - start)
            run.done += 1

    targets = [ports[i % len(ports)] for i in range(run.total)]
    first, rest = targets[: len(ports)], iter(targets[len(ports) :])

    async def worker() -> None:
        for port in rest:
            await one(port)

    async with trio.open_nursery() as nursery:
        for port in first:
            nursery.start_soon(one, port)
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    run.finished = trio.current_time()


# -- display -------------------------------------------------------------------------------

# (header, alignment) of each column; the last, the TLS resumptions, only with TLS modes.
# Widths follow the figures: the table stays within 79 columns (an 80-column terminal)
# up to 999,999 requests and six-figure rates.
_COLUMNS: Final = (
    ("mode", "<"),
    ("done", ">"),
    ("req/s", ">"),
    ("hit rate", ">"),
    ("opened", ">"),
    ("idle", ">"),
    ("active", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("resumed", ">"),
)
_FAILED: Final = ("failed", ">")  # after "done", only when a request failed
_COUNTS: Final = frozenset({"done", "opened"})  # at most the total: as wide as it


def _milliseconds(seconds: float) -> str:
    """A latency in milliseconds with three significant figures (``4.03``, ``53.4``,
    ``1,500``)."""
    ms = seconds * 1000
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:,.0f}"


def _cells(result: ModeResult) -> dict[str, str]:
    return {
        "mode": result.title,
        "done": f"{result.done:,}",
        "failed": f"{result.errors:,}",
        "req/s": f"{result.requests_per_second:,.0f}",
        "hit rate": f"{result.hit_rate:.1%}" if result.pooled else "-",
        "opened": f"{result.connections_created:,}",
        "idle": f"{result.idle:,}" if result.pooled else "-",
        "active": f"{result.active:,}",
        "p50 ms": _milliseconds(result.p50),
        "p99 ms": _milliseconds(result.p99),
        "resumed": f"{result.tls_resumptions:,}" if result.tls else "-",
    }


def table(results: Sequence[ModeResult], *, tls: bool | None = None) -> list[str]:
    """The results as lines of a plain-text table, header first.

    Each column is as wide as its widest figure (counts at least as wide as the total,
    so a live table keeps its shape as they grow). A ``failed`` column appears when a
    request failed.

    Args:
        results: One row each.
        tls: Show the TLS resumptions column (default: if any result is a TLS mode).
    """
    if tls is None:
        tls = any(r.tls for r in results)
    columns = list(_COLUMNS if tls else _COLUMNS[:-1])
    if any(r.errors for r in results):
        columns.insert(2, _FAILED)
    rows = [_cells(r) for r in results]
    total = len(f"{max((r.total for r in results), default=0):,}")
    widths = [
        max(len(name), *(len(row[name]) for row in rows), total if name in _COUNTS else 0)
        for name, _ in columns
    ]

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(cells, columns, widths, strict=True)
        ).rstrip()

    header = line([name for name, _ in columns])
    return [header, "-" * len(header), *(line([row[n] for n, _ in columns]) for row in rows)]


class _Display:
    """Redraws the table in place on a terminal; otherwise names each mode as it runs
    and prints the table once, at the end."""

    def __init__(self, out: TextIO, live: bool, tls: bool) -> None:
        self.out = out
        self.live = live
        self.tls = tls
        self.color = live and "NO_COLOR" not in os.environ
        self.drawn = 0
        self.width = 1000
        if live:
            try:
                self.width = os.get_terminal_size(out.fileno()).columns
            except (AttributeError, OSError, ValueError):
                pass

    def style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def write(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def draw(self, results: Sequence[ModeResult], *, final: bool = False) -> None:
        """Draw the table; on a terminal, over the previous drawing.

        Live drawings are cut to the terminal's width, since a wrapped line would throw
        the redrawing off; the final one is printed whole.
        """
        lines = table(results, tls=self.tls)
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # back to the top, clear below
        cut = self.live and not final
        for number, line in enumerate(lines):
            if cut:
                line = line[: self.width - 1]
            self.out.write((self.style(line, "1") if number == 0 else line) + "\n")
        self.out.flush()
        self.drawn = len(lines) if cut else 0

    def starting(self, number: int, count: int, mode: Mode) -> None:
        """Say which mode runs now (when not on a terminal); :meth:`finished` ends the line.

        Deliberately unlike a table row: the figures are in the table at the end.
        """
        self.out.write(f"  running {number}/{count}: {mode.title} ...")
        self.out.flush()

    def finished(self, result: ModeResult) -> None:
        failed = f", {result.errors:,} failed" if result.errors else ""
        self.write(f" {result.seconds:.1f} s{failed}")


async def _watch(display: _Display, done: list[ModeResult], run: _Run) -> None:
    """Redraw the live table while ``run`` is in progress (cancelled when it ends)."""
    while True:
        display.draw([*done, run.result()])
        await trio.sleep(_TTY_REFRESH)


# -- summary ----------------------------------------------------------------------------


def summary_lines(summary: DemoSummary) -> list[str]:
    """What the demo found, in words (lines under 80 columns)."""
    lines = []
    for tls, label in ((False, "TCP"), (True, "TLS")):
        try:
            new = summary["tls-new" if tls else "tcp-new"]
            pooled = summary["tls-pooled" if tls else "tcp-pooled"]
        except KeyError:
            continue
        speedup = summary.speedup(tls)
        lines.append(
            f"  {label}: pooled {pooled.requests_per_second:,.0f} req/s,"
            f" connecting per request {new.requests_per_second:,.0f} req/s"
            + (f": {speedup:.1f}x" if speedup is not None else "")
        )
        # The hit rate next to the counts it is made of: acquires, not connections. A
        # connect started for a waiter that a released connection served first leaves
        # one connection more than there were misses (it goes idle).
        acquires = pooled.hits + pooled.misses
        lines.append(
            f"       hit rate {pooled.hit_rate:.1%} ({pooled.hits:,} of {acquires:,} requests"
            " reused a pooled connection)"
        )
        saved = new.connections_created - pooled.connections_created
        lines.append(
            f"       {pooled.connections_created:,} connections opened, not"
            f" {new.connections_created:,}: {saved:,} {label} handshakes saved"
        )
        extra = pooled.connections_created - pooled.misses
        if extra > 0:
            lines.append(
                f"       ({pooled.misses:,} for the misses, {extra:,} started for waiters"
                " a released one served first)"
            )
        if tls:
            full = pooled.tls_handshakes - pooled.tls_resumptions
            lines.append(
                f"       {pooled.tls_handshakes:,} handshakes when pooled: {full:,} full,"
                f" {pooled.tls_resumptions:,} resumed (no certificate sent)"
            )
        if pooled.p50 > 0:
            lines.append(
                f"       median latency {new.p50 * 1000:.2f} ms -> {pooled.p50 * 1000:.2f} ms"
                f" ({new.p50 / pooled.p50:.1f}x lower)"
            )
    errors = sum(r.errors for r in summary.results)
    if errors:
        lines.append(f"  {errors:,} requests failed")
    return lines


# -- entry points -------------------------------------------------------------------------


def _check_count(name: str, value: object, low: int, high: int | None = None) -> int:
    count = check_int(name, value)
    if count < low or (high is not None and count > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {count!r}")
    return count


async def run_demo(
    *,
    requests: int = DEFAULT_REQUESTS,
    concurrency: int = DEFAULT_CONCURRENCY,
    hosts: int = DEFAULT_HOSTS,
    tls: bool = True,
    out: TextIO | None = None,
    live: bool | None = None,
) -> DemoSummary:
    """Run the demo in the current trio run and return what it measured.

    Args:
        requests: Requests sent in each mode.
        concurrency: Tasks sending requests at once.
        hosts: Servers (distinct pool keys), each on its own ``127.0.0.1`` port.
        tls: Also run the TLS modes (needs :mod:`trustme`).
        out: Where to write the table and summary (default :data:`sys.stdout`).
        live: Redraw the table in place with ANSI codes (default: if ``out`` is a
            terminal); otherwise name each mode as it runs and print the table once,
            at the end.

    Returns:
        The results of every mode run.

    Raises:
        ValueError: A count is out of range (the message names it).
        TypeError: A count is not an int.
    """
    _check_count("requests", requests, 1)
    _check_count("concurrency", concurrency, 1)
    _check_count("hosts", hosts, 1, MAX_HOSTS)
    if out is None:
        out = sys.stdout
    if live is None:
        live = out.isatty()
    display = _Display(out, live, tls)
    server_context = client_context = None
    if tls:
        server_context, client_context = _tls_contexts()
    modes = [m for m in MODES if tls or not m.tls]

    servers_text = f"{hosts} server{'s' if hosts > 1 else ''}"
    display.write(
        display.style("trio_pool demo", "1")
        + f": {requests:,} requests each way, {concurrency} at a time, to {servers_text}"
        f" on {HOST}"
    )
    display.write(
        f"  one request = send a {len(REQUEST)}-byte line, read its {len(RESPONSE)}-byte answer"
    )
    display.write("  the servers run in this process (same trio run), sharing its CPU; no delays")
    display.write("  each way starts with one request per host, as any client does")
    display.write()
    done: list[ModeResult] = []
    async with trio.open_nursery() as servers:
        plain_ports = await _start_servers(servers, _serve, hosts)
        tls_ports: list[int] = []
        if server_context is not None:
            tls_ports = await _start_servers(servers, _tls_server(server_context), hosts)
        for number, mode in enumerate(modes, 1):
            run = _Run(mode, requests)
            context = client_context if mode.tls else None
            ports = tls_ports if mode.tls else plain_ports
            if live:
                async with trio.open_nursery() as watching:
                    watching.start_soon(_watch, display, done, run)
                    result = await _run_mode(run, ports, concurrency, context)
                    watching.cancel_scope.cancel()
            else:
                display.starting(number, len(modes), mode)
                result = await _run_mode(run, ports, concurrency, context)
                display.finished(result)
            done.append(result)
        servers.cancel_scope.cancel()
    summary = DemoSummary(requests, concurrency, hosts, tuple(done))
    if not live:
        display.write()
    display.draw(done, final=True)  # on a terminal: over the live table
    display.write()
    display.write(display.style("Summary", "1"))
    for line in summary_lines(summary):
        display.write(line)
    return summary


def main(
    requests: int = DEFAULT_REQUESTS,
    concurrency: int = DEFAULT_CONCURRENCY,
    hosts: int = DEFAULT_HOSTS,
    tls: bool = True,
) -> int:
    """Run the demo in a new trio run; the exit status for ``python -m trio_pool demo``."""
    if tls:
        try:
            import trustme  # noqa: F401
        except ImportError:
            print(
                "the TLS modes need trustme (pip install trustme): running without TLS",
                file=sys.stderr,
            )
            tls = False
    try:
        summary = trio.run(
            lambda: run_demo(requests=requests, concurrency=concurrency, hosts=hosts, tls=tls)
        )
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        if not _only_broken_pipes(exc):
            raise
        # Whoever read the output left (``| head``): stop quietly, as a pipeline expects.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    return 1 if any(r.errors for r in summary.results) else 0


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)
