"""The two httpx clients a parity test compares on the same loopback server: one over
:class:`~trio_pool.httpx.PoolTransport` (a pool of its own), one over httpx's own
transport, each built with the same transport arguments."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

import trio_pool
from trio_pool.httpx import PoolTransport

Transport = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def ours(**kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client on a PoolTransport of a pool of its own."""
    async with (
        trio_pool.open_pool() as pool,
        httpx.AsyncClient(transport=PoolTransport(pool, **kwargs)) as client,
    ):
        yield client


@asynccontextmanager
async def theirs(**kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client on httpx's own transport with the same arguments."""
    kwargs.setdefault("trust_env", False)  # as PoolTransport's default
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(**kwargs)) as client:
        yield client
