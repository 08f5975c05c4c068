"""Dialing a host name's addresses: the I/O around :class:`~trio_pool._addresses.AddressBook`.

:func:`dial` tries the addresses the book planned, in order, the way RFC 8305 (Happy
Eyeballs v2) does and :func:`trio.open_tcp_stream` does for its own resolution: the
first at once, each next one when the previous failed or after 250 ms, first to
connect wins and the others are cancelled. Each attempt is a
:func:`trio.open_tcp_stream` to an IP literal (one attempt, no lookup), so a cancelled
attempt closes its socket. A refused connect is recorded against its address at once;
an attempt overtaken by one started after it counts as a timed-out connect; what was
still in flight when the whole connect timed out is recorded by the caller
(:meth:`Dial.settle`), since only it knows whether the cancellation was a timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import trio

from ._addresses import Address, AddressBook
from ._records import PoolKey

__all__ = ["ATTEMPT_DELAY", "Dial", "dial"]

#: Seconds before the next address is tried while an attempt is still in flight
#: (RFC 8305's recommended "Connection Attempt Delay", trio's default too).
ATTEMPT_DELAY: Final = 0.25


class Dial:
    """One connect's attempts: those in flight, and the address that won.

    Each attempt counts in its key's ``counts`` (connections per address) while it is
    in flight and, for the winner, until the connect ends, so concurrent connects
    spread over the addresses before any of them has connected.
    """

    __slots__ = ("address", "counts", "in_flight", "key")

    def __init__(self, key: PoolKey, counts: dict[Address, int]) -> None:
        self.key = key  # whose connect it is (for the book's events)
        self.counts = counts
        self.in_flight: list[Address] = []
        self.address: Address | None = None  # connected (TLS and the rest may follow)

    def start(self, address: Address) -> None:
        self.in_flight.append(address)
        self.counts[address] = self.counts.get(address, 0) + 1

    def stop(self, address: Address) -> None:
        """``address``'s attempt is over (or its connect: the connection counts now)."""
        left = self.counts[address] - 1
        if left:
            self.counts[address] = left
        else:
            del self.counts[address]

    def won(self) -> Address | None:
        """The connect succeeded: the winner, its dial no longer counted."""
        address = self.address
        if address is not None:
            self.stop(address)
            self.address = None
        return address

    def settle(self, book: AddressBook, failed: bool, now: float) -> None:
        """The connect ended without a connection: ``failed`` (it timed out, or the
        TLS handshake failed) counts against every address still in flight or
        connected; otherwise (cancelled) they are let go without a verdict."""
        addresses = [*self.in_flight]
        if self.address is not None:
            addresses.append(self.address)
        self.in_flight.clear()
        self.address = None
        for address in addresses:
            self.stop(address)
            if failed:
                book.failed(address, now, self.key)
            else:
                book.abandoned(address)


async def dial(
    book: AddressBook,
    plan: Sequence[Address],
    port: int,
    attempts: Dial,
    local_address: str | None = None,
) -> trio.SocketStream:
    """Connect to the first of ``plan`` that answers (see the module docstring); the
    winner is ``attempts.address``.

    Raises:
        OSError: Every attempt failed (their errors are the ``__cause__``, a group).
    """
    winner: trio.SocketStream | None = None
    winner_started = 0
    errors: list[OSError] = []

    async def attempt(address: Address, failed: trio.Event, number: int) -> None:
        nonlocal winner, winner_started
        try:
            stream = await trio.open_tcp_stream(address.ip, port, local_address=local_address)
        except OSError as exc:
            attempts.in_flight.remove(address)
            attempts.stop(address)
            book.failed(address, trio.current_time(), attempts.key)
            errors.append(exc)
            failed.set()
            return
        except BaseException:  # Cancelled (maybe in a group, from trio's own nursery)
            if winner is not None:
                # Lost the race. Started before the winner: slower than a fallback
                # started at least ATTEMPT_DELAY later, a timed-out connect (so a
                # stalling address is ejected although a fallback serves every
                # connect); started after it: no verdict.
                attempts.in_flight.remove(address)
                attempts.stop(address)
                if number < winner_started:
                    book.failed(address, trio.current_time(), attempts.key)
                else:
                    book.abandoned(address)
            raise
        attempts.in_flight.remove(address)
        if winner is None:
            winner = stream
            winner_started = number
            attempts.address = address
            nursery.cancel_scope.cancel()
        else:  # pragma: no cover - two connects in the same scheduler tick
            attempts.stop(address)
            stream.socket.close()
            book.abandoned(address)

    async with trio.open_nursery() as nursery:
        for number, address in enumerate(plan):
            # Counted before any checkpoint: the next connect's plan sees this one.
            book.attempt(address, trio.current_time())
            attempts.start(address)
            failed = trio.Event()
            nursery.start_soon(attempt, address, failed, number)
            with trio.move_on_after(ATTEMPT_DELAY):
                await failed.wait()
            if winner is not None:
                break
    if winner is None:
        message = f"all attempts to connect to {plan[0].upstream.name} failed"
        raise OSError(message) from ExceptionGroup(message, errors)
    return winner
