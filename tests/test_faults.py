"""Fault injection (issue 7): thousands of pool uses through a server that resets, closes,
stalls, sends junk, never answers or refuses, with callers cancelling at random.

Whatever the faults, afterwards the pool holds nothing in use, waiting or connecting,
its statistics invariant holds, it serves at full capacity, and no file descriptor is
left open; no caller ever reads a reply meant for another request, and every failure a
caller sees is explained by an injected fault.
"""

from __future__ import annotations

import os
import ssl

import pytest
import trio
import trustme

import trio_pool

from .faults import FaultServer, PeerClosed, SoakReport, run_soak
from .servers import HOST


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def check(report_text: str, report: SoakReport) -> None:
    assert report.leaks == [], report_text
    assert report.desyncs == 0, report_text
    # Every failure a caller saw is explained by a fault (pool exhaustion aside).
    assert report.failures_surfaced <= report.faults_injected, report_text
    assert report.uses, report_text
    assert report.ok, report_text


async def test_soak_plain_and_tls(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    seed = int(os.environ.get("TRIO_POOL_SOAK_SEED", "7"))
    report = await run_soak(
        2000, seed=seed, server_context=server_context, client_context=client_context
    )
    text = report.summary()
    print(text)
    check(text, report)
    # The faults really happened, and really reached some callers.
    assert report.faults_injected >= 20, text
    assert {"reset", "close", "junk", "refused"} <= set(report.faults), text
    assert report.failures_surfaced > 0, text
    assert report.cancelled > 0, text


async def test_soak_every_fault_often() -> None:
    """A nastier mix, plain TCP only: about a third of requests meet a fault."""
    faults = {
        "silent": 0.05,
        "reset": 0.08,
        "close": 0.06,
        "close_after": 0.08,
        "stall": 0.03,
        "junk": 0.08,
    }
    report = await run_soak(600, seed=11, faults=faults, workers=12)
    text = report.summary()
    print(text)
    check(text, report)
    assert set(faults) <= set(report.faults), text


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_long_soak(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    seed: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server_context, client_context = tls_contexts
    uses = int(os.environ.get("TRIO_POOL_SOAK_USES", "25000"))
    report = await run_soak(
        uses, seed=seed, workers=48, server_context=server_context, client_context=client_context
    )
    text = report.summary()
    with capsys.disabled():
        print(f"\n[seed {seed}] {text}")
    check(text, report)


# -- each fault on its own: what a caller sees, and that the pool recovers --------------


async def request(pool: trio_pool.ConnectionPool, port: int, n: int) -> bytes:
    async with pool.connection(HOST, port) as conn:
        message = b"%08d\n" % n
        await conn.send_all(message)
        reply = b""
        while len(reply) < len(message):
            chunk = await conn.receive_some(len(message) - len(reply))
            if not chunk:
                raise PeerClosed
            reply += chunk
        return reply


@pytest.mark.parametrize(
    ("fault", "surfaces"),
    [
        ("reset", trio.BrokenResourceError),
        ("close", PeerClosed),
        ("close_after", None),
        ("junk", None),
    ],
)
async def test_single_fault(
    nursery: trio.Nursery, fault: str, surfaces: type[BaseException] | None
) -> None:
    server = FaultServer(faults={fault: 1.0})
    port = await server.start(nursery)
    async with trio_pool.open_pool(max_size=1, acquire_timeout=0) as pool:
        if surfaces is None:
            assert await request(pool, port, 1) == b"00000001\n"
        else:
            with pytest.raises(surfaces):
                await request(pool, port, 1)
        assert server.injected[fault] == 1
        server.enabled = False
        if fault == "close_after":
            with trio.fail_after(5):
                await server.idle.wait()  # the pooled connection is dead now
        # The pool recovers on the next use, with max_size=1: no slot was lost, and the
        # dead or dirty connection is never handed out again.
        assert await request(pool, port, 2) == b"00000002\n"
        stats = pool.statistics()
        assert stats.active_connections == 0
        assert stats.connections_created - stats.connections_closed == stats.idle_connections
        assert stats.pool_hits == 0  # nothing from the first connection was reusable
    with trio.fail_after(5):
        await server.idle.wait()


@pytest.mark.parametrize("fault", ["stall", "silent"])
async def test_stalling_fault_cancelled_by_caller(nursery: trio.Nursery, fault: str) -> None:
    server = FaultServer(faults={fault: 1.0})
    port = await server.start(nursery)
    async with trio_pool.open_pool(max_size=1, acquire_timeout=0) as pool:
        with trio.move_on_after(0.05) as scope:
            await request(pool, port, 1)
        assert scope.cancelled_caught
        server.enabled = False
        assert await request(pool, port, 2) == b"00000002\n"
        assert pool.statistics().connections_closed == 1
    with trio.fail_after(5):
        await server.idle.wait()
