"""A host's addresses and their health: which address a new connection goes to.

:class:`AddressBook` is synchronous and reads no clock (every method takes ``now``), so
it is tested directly (``tests/test_addresses.py``); resolving names and dialing are
the connector's I/O (:mod:`trio_pool._connector`). Per ``(host, port)`` an
:class:`Upstream` holds the addresses the name resolved to, until ``dns_ttl`` runs
out; per address an :class:`Address` holds its health:

- consecutive failures (a refused or timed-out connect, a failed TLS handshake, a
  reset before the first response byte); ``eject_after`` of them eject it for
  ``eject_for`` seconds, doubling with each ejection that follows an earlier one
  within the longest backoff (at most ten times ``eject_for``); a success resets
  the count;
- after the backoff, exactly one trial connect (half-open); its success restores the
  address, its failure ejects it again;
- an address that a re-resolution no longer returns is *drained*: the pool hands
  its connections out no more and closes them when released or idle.

Which address: the one with the fewest connections of the key that connects, ties
in turn (round robin); the others follow as fallbacks, alternating address families
after the first as RFC 8305 (Happy Eyeballs v2) orders them.

Ejection and restoration are logged once each (logger ``"trio_pool"``).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from ._events import AddressEjected, AddressRestored, EventHook, Resolved
from ._exceptions import HostUnavailable

if TYPE_CHECKING:
    from ._records import PoolKey

__all__ = ["MAX_BACKOFF_FACTOR", "Address", "AddressBook", "Upstream"]

logger: Final = logging.getLogger("trio_pool")

#: The longest ejection, as a multiple of ``eject_for``.
MAX_BACKOFF_FACTOR: Final = 10


class Address:
    """One address of an :class:`Upstream` and its health."""

    __slots__ = (
        "book",
        "drained",
        "ejected_until",
        "ejections",
        "failures",
        "family",
        "index",
        "ip",
        "restored_at",
        "trial",
        "upstream",
    )

    def __init__(self, book: AddressBook, upstream: Upstream, family: int, ip: str) -> None:
        self.book = book
        self.upstream = upstream
        self.family = family
        self.ip = ip
        self.index = 0  # its place in the resolver's answer (round robin starts there)
        self.failures = 0  # consecutive
        self.ejections = 0  # consecutive ejections, for the doubling backoff
        self.ejected_until: float | None = None  # None: in the rotation
        self.restored_at = -math.inf
        self.trial = False  # the half-open trial connect is in flight
        self.drained = False  # left the resolver's answer: its connections are closed

    def __repr__(self) -> str:
        return f"<Address {self.ip} of {self.upstream.name}>"

    # The verdicts a connection passes on (see PooledConnection.receive_some).

    def succeeded(self, now: float, key: PoolKey) -> None:
        """A connection of ``key``'s to it got its first response byte."""
        self.book.succeeded(self, now, key)

    def failed(self, now: float, key: PoolKey) -> None:
        """A new connection of ``key``'s to it failed before its first response byte."""
        self.book.failed(self, now, key)

    def ended(self) -> None:
        """A connection to it closed with no verdict (nothing was ever read)."""
        self.book.abandoned(self)


class Upstream:
    """The addresses of one ``(host, port)``, in the resolver's order.

    Attributes:
        expires_at: When the addresses must be resolved again (``-inf``: never
            resolved yet; ``inf``: never again, ``dns_ttl=None``).
        available_at: Before this time every address is ejected, or a trial connect
            is in flight for the last one (``inf``): a connect fails at once with
            :class:`~trio_pool.HostUnavailable`. ``-inf`` while an address is in the
            rotation.
        users: The key states that hold it (:meth:`AddressBook.attach`); the book
            forgets it when the last one is dropped.
    """

    __slots__ = ("addresses", "available_at", "expires_at", "host", "port", "turn", "users")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.addresses: dict[str, Address] = {}
        self.expires_at = -math.inf
        self.available_at = -math.inf
        self.turn = 0
        self.users = 0

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def refresh(self) -> None:
        """Compute :attr:`available_at` from the addresses' states."""
        at = math.inf if self.addresses else -math.inf
        for address in self.addresses.values():
            if address.ejected_until is None:
                at = -math.inf
                break
            if not address.trial:
                at = min(at, address.ejected_until)
        self.available_at = at

    def unavailable(self, now: float) -> HostUnavailable:
        """The error for a connect while every address is ejected."""
        count = len(self.addresses)
        at = self.available_at
        when = (
            "a trial connect is in flight"
            if at == math.inf
            else f"next try in {max(0.0, at - now):.3g} s"
        )
        which = "its only address is" if count == 1 else f"all {count} addresses are"
        return HostUnavailable(
            f"{self.name} is unavailable: {which} ejected after failing ({when})",
            host=self.host,
            port=self.port,
            addresses=count,
            retry_at=None if at == math.inf else at,
        )


class AddressBook:
    """Every :class:`Upstream` of a pool, and the policy (see the module docstring).

    Args:
        ttl: ``dns_ttl``: seconds an answer is reused (``None``: forever).
        eject_after: Consecutive failures that eject an address (``None``: never).
        eject_for: Seconds of the first ejection.
        on_event: Told of resolutions, ejections and restorations (as
            :class:`~trio_pool.Resolved`, :class:`~trio_pool.AddressEjected` and
            :class:`~trio_pool.AddressRestored`, under the key whose connect or
            connection brought them about); ``None``: no event is built. The pool
            replaces it when a listener is added.
    """

    __slots__ = ("eject_after", "eject_for", "on_event", "ttl", "upstreams")

    def __init__(
        self,
        ttl: float | None,
        eject_after: int | None,
        eject_for: float,
        on_event: EventHook | None = None,
    ) -> None:
        self.ttl = ttl
        self.eject_after = eject_after
        self.eject_for = eject_for
        self.on_event = on_event
        self.upstreams: dict[tuple[str, int], Upstream] = {}

    def upstream(self, host: str, port: int) -> Upstream:
        """The (possibly still unresolved) upstream of ``host:port``."""
        upstream = self.upstreams.get((host, port))
        if upstream is None:
            upstream = self.upstreams[(host, port)] = Upstream(host, port)
        return upstream

    def attach(self, host: str, port: int) -> Upstream:
        """:meth:`upstream`, for a key state that keeps it until :meth:`detach`."""
        upstream = self.upstream(host, port)
        upstream.users += 1
        return upstream

    def detach(self, upstream: Upstream) -> None:
        """A key state that held ``upstream`` was dropped: with no key state left on
        it, the book forgets it (its addresses' health included), so a pool that talks
        to ever new host names does not keep every one it ever dialed."""
        upstream.users -= 1
        if upstream.users <= 0 and self.upstreams.get((upstream.host, upstream.port)) is upstream:
            del self.upstreams[(upstream.host, upstream.port)]

    # -- resolution ------------------------------------------------------------------

    def stale(self, upstream: Upstream, now: float) -> bool:
        """Whether ``upstream`` must be resolved (never resolved, or its TTL ran out)."""
        return now >= upstream.expires_at

    def resolved(
        self,
        upstream: Upstream,
        answer: Iterable[tuple[int, str]],
        now: float,
        key: PoolKey,
    ) -> list[Address]:
        """A resolution of ``upstream`` (for a connect of ``key``'s) returned ``answer``
        (family, IP), in order.

        Addresses kept keep their health; new ones join healthy; addresses no longer
        in the answer are drained.

        Returns:
            The drained addresses (the pool closes their idle connections now and the
            others when they come back).
        """
        old = upstream.addresses
        fresh: dict[str, Address] = {}
        for family, ip in answer:
            if ip in fresh:
                continue
            address = old.get(ip)
            if address is None:
                address = Address(self, upstream, family, ip)
            address.index = len(fresh)
            fresh[ip] = address
        if not fresh:  # pragma: no cover - getaddrinfo raises rather than answer nothing
            raise ValueError("an empty answer")
        drained = [address for ip, address in old.items() if ip not in fresh]
        for address in drained:
            address.drained = True
        upstream.addresses = fresh
        upstream.expires_at = math.inf if self.ttl is None else now + self.ttl
        upstream.refresh()
        if self.on_event is not None:
            self.on_event(Resolved(key, now, tuple(fresh), self.ttl))
        return drained

    def resolve_failed(self, upstream: Upstream, now: float) -> bool:
        """A resolution failed. Known addresses stay in use for another TTL (a DNS
        outage does not take a working host down); returns whether there are any."""
        if not upstream.addresses:
            return False
        upstream.expires_at = math.inf if self.ttl is None else now + self.ttl
        return True

    # -- choosing ---------------------------------------------------------------------

    def plan(self, upstream: Upstream, counts: Mapping[Address, int], now: float) -> list[Address]:
        """The addresses a new connection tries, in order.

        First an address whose backoff ended (its half-open trial, one at a time), else
        the address in the rotation with the fewest connections in ``counts`` (the
        connecting key's), ties in turn; then the other addresses in the rotation, by
        the same order, alternating families after the first (RFC 8305).

        Raises:
            HostUnavailable: Every address is ejected (or on trial).
        """
        if now < upstream.available_at:
            raise upstream.unavailable(now)
        healthy: list[Address] = []
        trial: Address | None = None
        for address in upstream.addresses.values():
            until = address.ejected_until
            if until is None:
                healthy.append(address)
            elif trial is None and until <= now and not address.trial:
                trial = address
        size = len(upstream.addresses)
        turn = upstream.turn
        upstream.turn = (turn + 1) % size
        healthy.sort(key=lambda a: (counts.get(a, 0), (a.index - turn) % size))
        if trial is not None:
            first = trial
        elif healthy:
            first = healthy.pop(0)
        else:  # every one on trial: refresh() said so already
            upstream.refresh()
            raise upstream.unavailable(now)
        same = [a for a in healthy if a.family == first.family]
        other = [a for a in healthy if a.family != first.family]
        order = [first]
        while same or other:
            if other:
                order.append(other.pop(0))
            if same:
                order.append(same.pop(0))
        return order

    def attempt(self, address: Address, now: float) -> None:
        """A connect to ``address`` starts: if its backoff ended, it is the trial."""
        until = address.ejected_until
        if until is not None and until <= now:
            address.trial = True
            address.upstream.refresh()

    # -- verdicts -------------------------------------------------------------------

    def failed(self, address: Address, now: float, key: PoolKey) -> None:
        """A connect of ``key``'s to ``address`` failed, or its new connection failed
        before the first response byte: eject it at ``eject_after`` in a row (at once
        after a failed trial)."""
        address.failures += 1
        if address.trial:
            address.trial = False
            self._eject(address, now, key, repeat=True)
        elif (
            self.eject_after is not None
            and address.ejected_until is None
            and address.failures >= self.eject_after
        ):
            self._eject(address, now, key)

    def succeeded(self, address: Address, now: float, key: PoolKey) -> None:
        """A connection of ``key``'s to ``address`` got its first response byte."""
        address.failures = 0
        if address.ejected_until is not None:
            address.ejected_until = None
            address.trial = False
            address.restored_at = now
            address.upstream.refresh()
            logger.info(
                "trio_pool: address %s of %s restored (a trial connect succeeded)",
                address.ip,
                address.upstream.name,
            )
            if self.on_event is not None:
                self.on_event(AddressRestored(key, now, address.ip))

    def abandoned(self, address: Address) -> None:
        """A connect to ``address`` was cancelled, or its connection closed with no
        verdict: a trial in flight ends, and another may go."""
        if address.trial:
            address.trial = False
            address.upstream.refresh()

    def _eject(self, address: Address, now: float, key: PoolKey, *, repeat: bool = False) -> None:
        """Eject ``address``: for ``eject_for``, doubled per ejection in a row (a failed
        trial, or a new ejection within the longest backoff of its restoration)."""
        longest = self.eject_for * MAX_BACKOFF_FACTOR
        if not repeat and now - address.restored_at > longest:
            address.ejections = 0  # healthy for the longest backoff: start over
        address.ejections += 1
        backoff = min(longest, self.eject_for * 2.0 ** (address.ejections - 1))
        address.ejected_until = now + backoff
        address.upstream.refresh()
        logger.warning(
            "trio_pool: address %s of %s ejected for %.3g s after %d failure(s) in a row",
            address.ip,
            address.upstream.name,
            backoff,
            address.failures,
        )
        if self.on_event is not None:
            self.on_event(AddressEjected(key, now, address.ip, address.failures, now + backoff))


def answer_of(
    infos: Iterable[
        tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]
    ],
) -> list[tuple[int, str]]:
    """``(family, ip)`` pairs of a :func:`trio.socket.getaddrinfo` answer, in order."""
    return [
        (int(family), str(sockaddr[0]))
        for family, _type, _proto, _name, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
