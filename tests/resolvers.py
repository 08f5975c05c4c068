"""Host name resolvers for tests, through trio's custom resolver hook: no test makes a
DNS lookup (:func:`trio.socket.set_custom_hostname_resolver`)."""

from __future__ import annotations

import socket

import trio

from .servers import HOST

_SockAddr = tuple[str, int] | tuple[str, int, int, int]


class LoopbackResolver(trio.abc.HostnameResolver):
    """Answers every name with 127.0.0.1, and records each name asked for as trio
    passes it (bytes, IDNA-encoded). Subclasses answer otherwise in :meth:`answer_for`
    (``None``: no such name, a :class:`socket.gaierror`)."""

    def __init__(self) -> None:
        self.names: list[bytes | str | None] = []

    def answer_for(self, name: str) -> list[str] | None:
        return [HOST]

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, _SockAddr]]:
        await trio.lowlevel.checkpoint()
        self.names.append(host)
        answer = self.answer_for(host.decode() if isinstance(host, bytes) else str(host))
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        assert isinstance(port, (int, bytes, str))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port)))
            for ip in answer
        ]

    async def getnameinfo(
        self, sockaddr: _SockAddr, flags: int
    ) -> tuple[str, str]:  # pragma: no cover - never called
        raise NotImplementedError
