"""Replicas of one upstream on loopback: 127.0.0.2 ... 127.0.0.9 on one port number, and
a hostname resolver (no DNS) that answers ``replicas.test`` with some of them."""

from __future__ import annotations

import socket
from collections import Counter
from functools import partial

import trio

from .resolvers import LoopbackResolver
from .servers import echo, reset

NAME = "replicas.test"
IPS = [f"127.0.0.{n}" for n in range(2, 10)]


class ReplicaResolver(LoopbackResolver):
    """Answers :data:`NAME` with :attr:`answer` (change it mid-test); counts lookups."""

    def __init__(self, answer: list[str]) -> None:
        super().__init__()
        self.answer = answer

    def answer_for(self, name: str) -> list[str] | None:
        return self.answer if name == NAME else None

    @property
    def lookups(self) -> int:
        return sum(1 for name in self.names if name in (NAME, NAME.encode()))


class Replicas:
    """Servers on ``IPS`` sharing :attr:`port`, each started, stopped or stalled alone.

    Attributes:
        accepted: Connections each replica accepted.
        peers: The client address of every accepted connection, per replica.
        mode: Per replica, what it does with a connection: ``"echo"`` or ``"reset"``
            (closed with a reset before any byte).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.port = 0
        self.accepted: Counter[str] = Counter()
        self.peers: dict[str, list[str]] = {}
        self.mode: dict[str, str] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stalled: dict[str, list[socket.socket]] = {}

    async def start(self, ip: str, mode: str = "echo") -> None:
        """Serve on ``ip`` (the first one started picks the port)."""
        self.mode[ip] = mode
        scope = self._scopes[ip] = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            with scope:
                await trio.serve_tcp(
                    partial(self._handle, ip), self.port, host=ip, task_status=task_status
                )

        listeners = await self._nursery.start(serve)
        self.port = int(listeners[0].socket.getsockname()[1])

    def stop(self, ip: str) -> None:
        """Stop listening on ``ip`` (connects are refused) and drop its connections."""
        self._scopes.pop(ip).cancel()

    def stall(self, ip: str) -> None:
        """Listen on ``ip`` but never accept, backlog full: connects hang."""
        listener = socket.socket()
        listener.bind((ip, self.port))
        listener.listen(0)
        held = [listener]
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((ip, self.port))
            held.append(filler)
        self._stalled[ip] = held

    def close(self) -> None:
        for held in self._stalled.values():
            for sock in held:
                sock.close()

    async def _handle(self, ip: str, stream: trio.SocketStream) -> None:
        self.accepted[ip] += 1
        self.peers.setdefault(ip, []).append(stream.socket.getpeername()[0])
        if self.mode[ip] == "reset":
            reset(stream)
            return
        await echo(stream)
