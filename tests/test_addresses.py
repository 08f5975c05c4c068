"""The address book driven directly, h11-style (issue 23): no sockets, no clock.

:class:`~trio_pool._addresses.AddressBook` decides which address a new connection goes
to and when an address is ejected, restored or drained; the last tests drive it through
:class:`~trio_pool._state.PoolState` with the fakes of ``state_fakes``.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import Counter

import pytest

from trio_pool import ConnectError, HostUnavailable
from trio_pool._addresses import Address, AddressBook, Upstream, answer_of
from trio_pool._state import CONNECT

from .state_fakes import World, fake_stream, make_key

V4 = socket.AF_INET
V6 = socket.AF_INET6
FOUR = [(V4, f"127.0.0.{n}") for n in range(2, 6)]
KEY = make_key("replicas.test")  # whose connects: the events' key


def resolved(book: AddressBook, answer: list[tuple[int, str]], now: float = 0.0) -> Upstream:
    upstream = book.upstream("replicas.test", 80)
    book.resolved(upstream, answer, now, KEY)
    return upstream


def first_choice(
    book: AddressBook, upstream: Upstream, counts: dict[Address, int], now: float = 0.0
) -> Address:
    return book.plan(upstream, counts, now)[0]


def fail(book: AddressBook, address: Address, times: int, now: float) -> None:
    for _ in range(times):
        book.attempt(address, now)
        book.failed(address, now, KEY)


def test_fewest_connections_first_ties_in_turn() -> None:
    book = AddressBook(10.0, 5, 5.0)
    upstream = resolved(book, FOUR)
    counts: Counter[Address] = Counter()
    chosen = []
    for _ in range(100):
        address = first_choice(book, upstream, counts)
        counts[address] += 1
        chosen.append(address.ip)
    assert sorted(counts.values()) == [25, 25, 25, 25]
    # Ties go in turn: the first four connections go to four different addresses.
    assert len(set(chosen[:4])) == 4
    # With one address behind, it is chosen until it catches up.
    busy = upstream.addresses["127.0.0.3"]
    counts[busy] -= 3
    assert [first_choice(book, upstream, counts).ip for _ in range(1)] == ["127.0.0.3"]


def test_ties_rotate_even_with_no_connection_kept() -> None:
    """Connections that close at once (counts stay 0) still spread in turn."""
    book = AddressBook(10.0, 5, 5.0)
    upstream = resolved(book, FOUR)
    seen = [first_choice(book, upstream, {}).ip for _ in range(8)]
    assert Counter(seen) == Counter({ip: 2 for _, ip in FOUR})


def test_fallbacks_alternate_families_after_the_first() -> None:
    book = AddressBook(10.0, 5, 5.0)
    answer = [(V6, "::1"), (V6, "::2"), (V6, "::3"), (V4, "127.0.0.2"), (V4, "127.0.0.3")]
    upstream = resolved(book, answer)
    plan = book.plan(upstream, {}, 0.0)
    families = [a.family for a in plan]
    assert families[0] != families[1]
    assert families[1] != families[2]
    assert sorted(a.ip for a in plan) == sorted(ip for _, ip in answer)


def test_ejected_after_eject_after_failures_in_a_row(caplog: pytest.LogCaptureFixture) -> None:
    book = AddressBook(10.0, 3, 5.0)
    upstream = resolved(book, FOUR)
    bad = upstream.addresses["127.0.0.2"]
    fail(book, bad, 2, 1.0)
    book.succeeded(bad, 1.0, KEY)  # a success resets the count
    with caplog.at_level(logging.INFO, logger="trio_pool"):
        fail(book, bad, 2, 2.0)
        assert bad.ejected_until is None
        fail(book, bad, 1, 2.0)
        assert bad.ejected_until == 7.0
        fail(book, bad, 3, 2.5)  # failures of attempts already in flight: no new ejection
    assert bad.ejected_until == 7.0
    assert [r.getMessage() for r in caplog.records] == [
        "trio_pool: address 127.0.0.2 of replicas.test:80 ejected for 5 s after 3 failure(s)"
        " in a row"
    ]
    for now in (2.0, 6.9):
        assert bad not in book.plan(upstream, {}, now)


def test_eject_after_none_never_ejects() -> None:
    book = AddressBook(10.0, None, 5.0)
    upstream = resolved(book, FOUR[:1])
    fail(book, upstream.addresses["127.0.0.2"], 1000, 0.0)
    assert first_choice(book, upstream, {}).ip == "127.0.0.2"


def test_all_ejected_host_unavailable_then_one_trial(caplog: pytest.LogCaptureFixture) -> None:
    book = AddressBook(10.0, 1, 5.0)
    upstream = resolved(book, FOUR[:2])
    a, b = upstream.addresses.values()
    fail(book, a, 1, 0.0)
    fail(book, b, 1, 1.0)
    with pytest.raises(HostUnavailable) as info:
        book.plan(upstream, {}, 2.0)
    error = info.value
    assert isinstance(error, ConnectError)
    assert (error.host, error.port, error.addresses, error.retry_at) == (
        "replicas.test",
        80,
        2,
        5.0,
    )
    assert str(error) == (
        "replicas.test:80 is unavailable: all 2 addresses are ejected after failing"
        " (next try in 3 s)"
    )
    # After the backoff: exactly one trial connect.
    plan = book.plan(upstream, {}, 5.0)
    assert plan == [a]
    book.attempt(a, 5.0)
    assert upstream.available_at == 6.0  # b's backoff ends then
    with pytest.raises(HostUnavailable, match=r"next try in 0\.5 s"):
        book.plan(upstream, {}, 5.5)
    # At 6.0 b's backoff ended too: it is the next trial, a's is still in flight.
    assert book.plan(upstream, {}, 6.0) == [b]
    with caplog.at_level(logging.INFO, logger="trio_pool"):
        book.succeeded(a, 7.0, KEY)
    assert a.ejected_until is None
    assert a.failures == 0
    assert "restored" in caplog.records[-1].getMessage()
    assert book.plan(upstream, {}, 7.0)[0] is b  # b's trial first, then a
    assert a in book.plan(upstream, {}, 7.0)


def test_failed_trials_double_the_backoff_up_to_ten_times() -> None:
    book = AddressBook(10.0, 1, 5.0)
    upstream = resolved(book, FOUR[:1])
    (a,) = upstream.addresses.values()
    now = 0.0
    backoffs = []
    fail(book, a, 1, now)
    for _ in range(6):
        assert a.ejected_until is not None
        backoffs.append(a.ejected_until - now)
        now = a.ejected_until
        assert book.plan(upstream, {}, now) == [a]
        fail(book, a, 1, now)  # the trial fails
    assert backoffs == [5.0, 10.0, 20.0, 40.0, 50.0, 50.0]


def test_an_abandoned_trial_lets_another_go() -> None:
    book = AddressBook(10.0, 1, 5.0)
    upstream = resolved(book, FOUR[:1])
    (a,) = upstream.addresses.values()
    fail(book, a, 1, 0.0)
    book.attempt(a, 5.0)
    with pytest.raises(HostUnavailable):
        book.plan(upstream, {}, 5.0)
    assert upstream.available_at == math.inf
    with pytest.raises(HostUnavailable, match="a trial connect is in flight") as info:
        book.plan(upstream, {}, 6.0)
    assert info.value.retry_at is None
    book.abandoned(a)  # cancelled, or closed before any byte was read
    assert book.plan(upstream, {}, 5.0) == [a]


def test_restored_and_ejected_again_soon_doubles_then_starts_over() -> None:
    book = AddressBook(10.0, 1, 5.0)
    upstream = resolved(book, FOUR[:2])
    a = upstream.addresses["127.0.0.2"]
    fail(book, a, 1, 0.0)
    book.attempt(a, 5.0)
    book.succeeded(a, 5.5, KEY)
    fail(book, a, 1, 6.0)  # ejected again within the longest backoff: doubled
    assert a.ejected_until == 6.0 + 10.0
    book.attempt(a, 16.0)
    book.succeeded(a, 16.0, KEY)
    fail(book, a, 1, 100.0)  # healthy for longer than the longest backoff: 5 s again
    assert a.ejected_until == 105.0


def test_reresolution_keeps_health_and_drains_dropped_addresses() -> None:
    book = AddressBook(10.0, 2, 5.0)
    upstream = resolved(book, FOUR, now=0.0)
    assert not book.stale(upstream, 9.9)
    assert book.stale(upstream, 10.0)
    kept = upstream.addresses["127.0.0.3"]
    fail(book, kept, 1, 1.0)
    dropped = upstream.addresses["127.0.0.2"]
    drained = book.resolved(upstream, [(V4, "127.0.0.3"), (V4, "127.0.0.9")], 10.0, KEY)
    assert sorted(a.ip for a in drained) == ["127.0.0.2", "127.0.0.4", "127.0.0.5"]
    assert dropped in drained
    assert all(a.drained for a in drained)
    assert upstream.addresses["127.0.0.3"] is kept
    assert kept.failures == 1
    assert sorted(upstream.addresses) == ["127.0.0.3", "127.0.0.9"]
    assert upstream.expires_at == 20.0


def test_failed_resolution_keeps_the_known_addresses() -> None:
    book = AddressBook(10.0, 5, 5.0)
    upstream = book.upstream("replicas.test", 80)
    assert book.stale(upstream, 0.0)
    assert not book.resolve_failed(upstream, 0.0)
    book.resolved(upstream, FOUR, 0.0, KEY)
    assert book.resolve_failed(upstream, 10.0)
    assert upstream.expires_at == 20.0
    assert len(upstream.addresses) == 4


def test_ttl_none_resolves_once_and_zero_every_time() -> None:
    once = AddressBook(None, 5, 5.0)
    upstream = resolved(once, FOUR)
    assert not once.stale(upstream, 1e9)
    always = AddressBook(0.0, 5, 5.0)
    upstream = resolved(always, FOUR)
    assert always.stale(upstream, 0.0)


def test_answer_of_keeps_inet_addresses_in_order() -> None:
    infos = [
        (V6, socket.SOCK_STREAM, 6, "", ("::1", 80, 0, 0)),
        (V4, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 80)),
    ]
    assert answer_of(infos) == [(V6, "::1"), (V4, "127.0.0.2")]


# -- through the pool's state machine ----------------------------------------------------


def test_take_fails_at_once_while_every_address_is_ejected() -> None:
    world = World()
    pool = world.state(eject_after=1)
    state = pool.key_state(make_key("replicas.test"), 0.0)
    upstream = state.upstream = pool.addresses.upstream("replicas.test", 80)
    pool.addresses.resolved(upstream, FOUR[:1], 0.0, KEY)
    fail(pool.addresses, upstream.addresses["127.0.0.2"], 1, 0.0)
    with pytest.raises(HostUnavailable):
        pool.take(state, 1.0)
    assert pool.total == 0
    assert world.connects == []


def test_connections_counted_per_address_and_drained() -> None:
    world = World()
    pool = world.state(max_connecting=None)
    state = pool.key_state(make_key("replicas.test"), 0.0)
    upstream = state.upstream = pool.addresses.upstream("replicas.test", 80)
    pool.addresses.resolved(upstream, FOUR[:2], 0.0, KEY)
    a, b = upstream.addresses.values()
    conns = []
    for address in (a, a, b):
        assert pool.take(state, 0.0) is CONNECT
        conns.append(pool.connected(state, fake_stream(), 0.0, address=address))
    assert state.address_counts == {a: 2, b: 1}
    assert conns[0].address == "127.0.0.2"
    pool.release(conns[0], 1.0)  # idle
    # A re-resolution drops a: its idle connection closes now, its borrowed one when
    # it comes back; b's connection is untouched.
    pool.drain(pool.addresses.resolved(upstream, FOUR[1:2], 2.0, KEY), 2.0)
    assert world.closed == [conns[0]]
    assert state.address_counts == {a: 1, b: 1}
    pool.release(conns[1], 3.0)
    assert world.closed == [conns[0], conns[1]]
    pool.release(conns[2], 3.0)
    assert state.address_counts == {b: 1}
    assert pool.take(state, 4.0) is conns[2]


def test_an_unproven_connection_closing_ends_its_trial() -> None:
    world = World()
    pool = world.state(max_connecting=None, eject_after=1)
    state = pool.key_state(make_key("replicas.test"), 0.0)
    upstream = state.upstream = pool.addresses.upstream("replicas.test", 80)
    pool.addresses.resolved(upstream, FOUR[:1], 0.0, KEY)
    (a,) = upstream.addresses.values()
    fail(pool.addresses, a, 1, 0.0)
    assert pool.take(state, 5.0) is CONNECT  # the backoff ended
    pool.addresses.attempt(a, 5.0)  # the trial connects
    conn = pool.connected(state, fake_stream(), 5.0, address=a)
    assert conn._unproven is a
    pool.discard(conn, 6.0)  # closed with nothing read: no verdict
    assert not a.trial
    assert pool.addresses.plan(upstream, {}, 6.0) == [a]
