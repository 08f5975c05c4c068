"""Leak detection (``PoolConfig.leak_detection_threshold``): a connection held too long is
reported, once per loan, by the maintenance pass, with the stack that acquired it.

The mock clock never moves by itself, so connects never time out; the test jumps it.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing

import trio_pool

from .servers import HOST

THRESHOLD = 1.0
INTERVAL = 0.5  # health_check_interval: how often the maintenance pass looks


def leak_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_pool" and r.levelno == logging.WARNING and "held for" in r.getMessage()
    ]


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move time on and let the maintenance task run its pass."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def leaky_config() -> trio_pool.PoolConfig:
    return trio_pool.PoolConfig(leak_detection_threshold=THRESHOLD, health_check_interval=INTERVAL)


async def test_held_connection_is_reported_once_with_its_stack(
    echo_port: int,
    mock_clock: trio.testing.MockClock,
    leaky_config: trio_pool.PoolConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pool")
    async with trio_pool.open_pool(leaky_config) as pool:
        conn = await pool.acquire(HOST, echo_port)
        await advance(mock_clock, THRESHOLD * 0.8)
        assert leak_reports(caplog) == []  # not yet past the threshold

        await advance(mock_clock, THRESHOLD)
        (report,) = leak_reports(caplog)
        assert f"{HOST}:{echo_port}" in report
        assert "leak_detection_threshold" in report
        # Where it was acquired: this test, and the line that called acquire.
        assert "test_held_connection_is_reported_once_with_its_stack" in report
        assert "pool.acquire(HOST, echo_port)" in report

        await advance(mock_clock, 10 * INTERVAL)
        assert len(leak_reports(caplog)) == 1  # once per loan, not once per pass

        pool.release(conn)
        await advance(mock_clock, 10 * THRESHOLD)
        assert len(leak_reports(caplog)) == 1  # returned: nothing more to say

        # The same connection lent again is a new loan, reported again.
        async with pool.connection(HOST, echo_port) as again:
            assert again is conn
            await advance(mock_clock, 2 * THRESHOLD)
            assert len(leak_reports(caplog)) == 2
            assert "pool.connection(HOST, echo_port)" in leak_reports(caplog)[1]


async def test_acquired_at_stack_is_the_users_code_only(
    echo_port: int,
    mock_clock: trio.testing.MockClock,
    leaky_config: trio_pool.PoolConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stack starts at the task's own function and ends at the line that called the
    pool: no trio run-loop frames above it, no trio_pool frames below it."""
    caplog.set_level(logging.WARNING, logger="trio_pool")
    held: list[trio_pool.PooledConnection] = []

    async def handler_that_leaks(pool: trio_pool.ConnectionPool) -> None:
        held.append(await pool.acquire(HOST, echo_port))

    async with trio_pool.open_pool(leaky_config) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(handler_that_leaks, pool)  # a task of its own, from trio's loop
        await trio.testing.wait_all_tasks_blocked()
        await advance(mock_clock, 2 * THRESHOLD)
        pool.release(held[0])
    (report,) = leak_reports(caplog)
    head, stack = report.split("acquired at:\n")
    assert head.startswith(f"connection to {HOST}:{echo_port} (TCP) held for")
    frames = [line for line in stack.splitlines() if line.startswith('  File "')]
    # Started by the nursery: the stack is exactly the task's function.
    assert len(frames) == 1, stack
    assert "in handler_that_leaks" in frames[0]
    assert stack.rstrip().endswith("held.append(await pool.acquire(HOST, echo_port))")
    trio_dir = os.path.dirname(trio.__file__)
    pool_dir = os.path.dirname(trio_pool.__file__)
    assert trio_dir not in stack
    assert pool_dir not in stack


async def test_connection_returned_in_time_is_not_reported(
    echo_port: int,
    mock_clock: trio.testing.MockClock,
    leaky_config: trio_pool.PoolConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pool")
    async with trio_pool.open_pool(leaky_config) as pool:
        for _ in range(5):
            async with pool.connection(HOST, echo_port) as conn:
                await advance(mock_clock, THRESHOLD / 2)
                assert conn.acquired_by is not None
            await advance(mock_clock, THRESHOLD)
        discarded = await pool.acquire(HOST, echo_port)
        pool.discard(discarded)
        await advance(mock_clock, 10 * THRESHOLD)
    assert leak_reports(caplog) == []


async def test_off_by_default(
    echo_port: int, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_pool")
    assert trio_pool.PoolConfig().leak_detection_threshold is None
    async with trio_pool.open_pool(health_check_interval=INTERVAL) as pool:
        conn = await pool.acquire(HOST, echo_port)
        await advance(mock_clock, 100 * INTERVAL)
        assert conn.acquired_by is None  # no stack is even captured
        pool.release(conn)
    assert leak_reports(caplog) == []


@pytest.mark.parametrize("threshold", [0, -1.0, float("nan")])
def test_threshold_must_be_positive(threshold: float) -> None:
    with pytest.raises(ValueError, match="leak_detection_threshold"):
        trio_pool.PoolConfig(leak_detection_threshold=threshold)
