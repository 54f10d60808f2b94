"""A lean HTTP/1.1 client for the one thing the sink does: a request, its status, a few headers.

aiohttp's client is general: cookies, redirects, proxies, auth, tracing, multidicts, a writer task
per request. On a fast Space API that generality is most of the stage's CPU per record (measured:
about 60 us of CPU per request, where this client takes a fraction; see the README's benchmark).
This client keeps only what the sink needs: keep-alive connections to the API, a request written
in one piece, and the answer read with ``httptools`` (uvicorn's C parser of llhttp): status,
``Retry-After``, and the body of a failure or of a token answer.

What it does not do, by design: proxies, redirects, cookies, compression, HTTP/2. Choose
``PIPELINE_HTTP_CLIENT=aiohttp`` when an HTTP proxy stands between the stage and the API.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

from pipeline.http_client import (
    BODY_EXCERPT_BYTES,
    Answer,
    ClosingClient,
    Timeouts,
    failure,
    too_large,
)

_Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._retry_after: str | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._keep_alive = True
        self._want_body = False
        self._max_body: int | None = None
        self.answered = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"unreadable HTTP answer: {error}"))
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("the server upgraded the connection"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.answered and not self._keep_alive:  # a body that ends with the socket
                waiter.set_result(self._answer())
            else:
                waiter.set_exception(exc or ConnectionResetError("the connection closed"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self.answered = True

    def on_body(self, body: bytes) -> None:
        excerpt = not 200 <= self._status < 300 and self._body_size < BODY_EXCERPT_BYTES
        if self._want_body or excerpt:
            self._body.append(body)
            self._body_size += len(body)
            if self._max_body is not None and self._body_size > self._max_body:
                self._fail(too_large(self._max_body))

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._answer())

    # The exchange

    def exchange(
        self, request: bytes, want_body: bool, max_body: int | None = None
    ) -> asyncio.Future[Answer]:
        """Write ``request`` and return the future of its answer."""
        assert self.transport is not None  # noqa: S101 - connected
        self.used = True
        self._status, self._retry_after, self._body, self._body_size = 0, None, [], 0
        self._want_body, self._max_body, self.answered = want_body, max_body, False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    @property
    def reusable(self) -> bool:
        """Whether the last exchange left the connection open for the next."""
        return not self.closed and self._keep_alive

    def close(self) -> None:
        """Drop the connection (an answer that never finished makes it unusable)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _answer(self) -> Answer:
        body = b"".join(self._body)
        if not self._want_body:
            body = body[:BODY_EXCERPT_BYTES]
        return Answer(self._status, self._retry_after, body)

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()


class LeanClient(ClosingClient):
    """Keep-alive HTTP/1.1 connections to the API; an async context manager.

    Args:
        timeouts: Connect timeout, and read timeout of one answer.
        max_connections: Idle connections kept per origin (the sender bounds how many are busy).
        ssl_context: For ``https`` URLs; the system's default trust when not given.
    """

    def __init__(
        self, timeouts: Timeouts, max_connections: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._timeouts = timeouts
        self._max_idle = max_connections
        self._ssl = ssl_context
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._targets: dict[str, tuple[_Origin, str, str]] = {}

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        read_body: bool = False,
        max_body: int | None = None,
    ) -> Answer:
        """Send one request and read what the sink needs of the answer."""
        try:
            origin, host, target = self._target(url)
            request = _serialize(method, host, target, headers, body)
        except ValueError as error:  # UnicodeError included: not a request anyone can send
            raise failure(error) from error
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                try:
                    return await self._exchange(origin, connection, request, read_body, max_body)
                except _StaleConnectionError:
                    break  # the server had closed it meanwhile: once more, on a new one
        connection = await self._connect(origin)
        try:
            return await self._exchange(origin, connection, request, read_body, max_body)
        except _StaleConnectionError as error:
            raise failure(error.__cause__ or error) from error

    async def _exchange(
        self,
        origin: _Origin,
        connection: _Connection,
        request: bytes,
        read_body: bool,
        max_body: int | None = None,
    ) -> Answer:
        reused = connection.used
        try:
            async with asyncio.timeout(self._timeouts.read):
                answer = await connection.exchange(request, read_body, max_body)
        except asyncio.CancelledError:
            connection.close()
            raise
        except (ConnectionError, OSError) as error:
            connection.close()
            if reused and not connection.answered:
                raise _StaleConnectionError from error
            raise failure(error) from error
        except TimeoutError as error:
            connection.close()
            raise failure(error) from error
        if connection.reusable and len(self._idle.setdefault(origin, deque())) < self._max_idle:
            self._idle[origin].append(connection)
        else:
            connection.close()
        return answer

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        secure = scheme == "https"
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeouts.connect):
                _, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self._ssl if secure else None,
                    server_hostname=host if secure else None,
                )
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise failure(error) from error
        return connection

    def _target(self, url: str) -> tuple[_Origin, str, str]:
        """Origin, Host header and request target of ``url``, parsed once per distinct URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            default = port == (443 if parts.scheme == "https" else 80)
            host = parts.hostname if default else f"{parts.hostname}:{port}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = ((parts.scheme, parts.hostname, port), host, target)
            if len(self._targets) > 4096:  # a templated URL per key: keep the cache bounded
                self._targets.clear()
            self._targets[url] = found
        return found

    async def _close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


class _StaleConnectionError(Exception):
    """A reused connection closed before any answer: the server had dropped it while idle."""


def _serialize(
    method: str, host: str, target: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head
