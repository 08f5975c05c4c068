"""HTTP/1.1 keep-alive on a :class:`~trio_pool.ConnectionPool`, with h11.

.. code-block:: python

    from trio_pool.http import HTTPClient

    async with trio_pool.open_pool() as pool:
        client = HTTPClient(pool)
        response = await client.request("GET", "http://127.0.0.1:8080/")
        async with client.stream("GET", "https://example.org/big") as response:
            async for chunk in response.aiter_bytes():
                ...

A connection goes back to the pool after a complete response that allows keep-alive,
and is discarded otherwise. Idempotent requests are retried once on a new connection
when a reused one turns out to have been closed by the server while idle.

``HTTPClient(pool, http2=True)`` speaks HTTP/2 where the server agrees (ALPN), sharing
each connection among concurrent requests, a stream each (the ``h2`` extra).
"""

from ._client import IDEMPOTENT_METHODS as IDEMPOTENT_METHODS
from ._client import HTTPClient as HTTPClient
from ._client import StreamContext as StreamContext
from ._exceptions import HTTPError as HTTPError
from ._exceptions import LocalProtocolError as LocalProtocolError
from ._exceptions import NetworkError as NetworkError
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import ReadError as ReadError
from ._exceptions import ReadTimeout as ReadTimeout
from ._exceptions import RemoteProtocolError as RemoteProtocolError
from ._exceptions import RequestTimeout as RequestTimeout
from ._exceptions import ResponseNotRead as ResponseNotRead
from ._exceptions import StreamClosed as StreamClosed
from ._exceptions import StreamConsumed as StreamConsumed
from ._exceptions import StreamError as StreamError
from ._exceptions import WriteError as WriteError
from ._exceptions import WriteTimeout as WriteTimeout
from ._h2_exceptions import RequestNotProcessed as RequestNotProcessed
from ._h2_exceptions import StreamReset as StreamReset
from ._models import Response as Response
from ._timeouts import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._timeouts import USE_CLIENT_DEFAULT as USE_CLIENT_DEFAULT
from ._timeouts import Timeout as Timeout

__all__ = [
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "USE_CLIENT_DEFAULT",
    "HTTPClient",
    "HTTPError",
    "LocalProtocolError",
    "NetworkError",
    "PoolTimeout",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "RequestNotProcessed",
    "RequestTimeout",
    "Response",
    "ResponseNotRead",
    "StreamClosed",
    "StreamConsumed",
    "StreamContext",
    "StreamError",
    "StreamReset",
    "Timeout",
    "WriteError",
    "WriteTimeout",
]
