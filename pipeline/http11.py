"""A lean HTTP/1.1 client for the one thing the sink does: a request, its status, a few headers.

aiohttp's client is general: cookies, redirects, proxies, auth, tracing, multidicts, a writer task
per request. On a fast Space API that generality is most of the stage's CPU per record (measured:
about 60 us of CPU per request, where this client takes a fraction; see the README's benchmark).
This client keeps only what the sink needs: keep-alive connections to the API, a request written
in one piece, and the answer read with ``httptools`` (uvicorn's C parser of llhttp): status,
``Retry-After``, ``Location``, and the body of a failure or of a token answer (or, for the
result topic, the body and ``Content-Type`` of an accepted answer, kept up to a limit).

It does what RFC 9110 asks of every client: interim ``1xx`` answers are skipped, the URL is
percent-encoded as aiohttp (yarl) encodes it, ``user:password@`` in the URL becomes
``Authorization: Basic`` unless the request carries its own ``Authorization``, an IPv6 host is
named in brackets. Answers are paired with requests strictly: bytes that arrive when no request
waits retire the connection. A request is written again on a new connection only when the reused
one was seen closed before anything was written; once written, a lost connection is a failed
attempt for the retry policy, since the server may have acted on it.

What it does not do, by design: proxies (no ``CONNECT``), following redirects (a ``3xx`` is the
answer, with its ``Location``), cookies, compression, ``Expect: 100-continue``, HTTP/2. Choose
``PIPELINE_HTTP_CLIENT=aiohttp`` when an HTTP proxy stands between the stage and the API.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from base64 import b64encode
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

import httptools
from yarl import URL

from pipeline.http_client import (
    BODY_EXCERPT_BYTES,
    Answer,
    ClosingClient,
    Timeouts,
    failure,
    too_large,
)

_Origin = tuple[str, str, int]  # scheme, host, port


class _Target(NamedTuple):
    """What a URL means on the wire, worked out once per distinct URL."""

    origin: _Origin
    host: str  # the Host header: brackets around IPv6, no default port
    target: str  # percent-encoded path and query
    basic: str | None  # Authorization from user:password@ in the URL


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._readable: select.poll | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._retry_after: str | None = None
        self._location: str | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._keep_alive = True
        self._want_body = False
        self._max_body: int | None = None
        self._keep_body: int | None = None
        self._content_type: str | None = None
        self.answered = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._readable = select.poll()
            self._readable.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # nobody asked: answers would pair off by one
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"unreadable HTTP answer: {error}"))
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionError("the server switched protocols"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.answered and not self._keep_alive:  # a body that ends with the socket
                waiter.set_result(self._answer())
            else:
                waiter.set_exception(exc or ConnectionResetError("the connection closed"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # a second answer in the same read as the first
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif len(name) == 8 and name.lower() == b"location":
            self._location = value.decode("latin-1")
        elif self._keep_body is not None and len(name) == 12 and name.lower() == b"content-type":
            self._content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self.answered = self._status >= 200

    def on_body(self, body: bytes) -> None:
        keep = self._keep_body
        if keep is not None and 200 <= self._status < 300:  # kept up to the limit, counted on
            if self._body_size < keep:
                self._body.append(body[: keep - self._body_size])
            self._body_size += len(body)
            return
        excerpt = not 200 <= self._status < 300 and self._body_size < BODY_EXCERPT_BYTES
        if self._want_body or excerpt:
            self._body.append(body)
            self._body_size += len(body)
            if self._max_body is not None and self._body_size > self._max_body:
                self._fail(too_large(self._max_body))

    def on_message_complete(self) -> None:
        if self._status < 200:  # interim (RFC 9110, 15.2): the answer is still to come
            if self._status == 101:
                self._fail(ConnectionError("the server switched protocols (101)"))
            self._retry_after = self._location = None
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._answer())

    # The exchange

    def exchange(
        self,
        request: bytes,
        want_body: bool,
        max_body: int | None = None,
        keep_body: int | None = None,
    ) -> asyncio.Future[Answer]:
        """Write ``request`` and return the future of its answer."""
        assert self.transport is not None  # noqa: S101 - connected
        self._status, self._retry_after, self._location = 0, None, None
        self._body, self._body_size, self._content_type = [], 0, None
        self._want_body, self._max_body, self.answered = want_body, max_body, False
        self._keep_body = keep_body
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    @property
    def reusable(self) -> bool:
        """Whether the last exchange left the connection open for the next."""
        return not self.closed and self._keep_alive

    def untouched(self) -> bool:
        """Whether an idle connection may take a request: still open, and nothing arrived.

        What arrives on an idle connection is its end (the server closed it) or bytes nobody
        asked for; the loop may not have read it yet, so the socket itself is asked, as httpcore
        does. Only this way is a request never written into a connection already known dead.
        """
        if self.closed:
            return False
        return self._readable is None or not self._readable.poll(0)  # an EOF stays readable

    def close(self) -> None:
        """Drop the connection (an answer that never finished makes it unusable)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _answer(self) -> Answer:
        body = b"".join(self._body)
        keep = self._keep_body
        if keep is not None and 200 <= self._status < 300:
            truncated = self._body_size > keep
            return Answer(
                self._status, body=body, content_type=self._content_type, truncated=truncated
            )
        if not self._want_body:
            body = body[:BODY_EXCERPT_BYTES]
        return Answer(self._status, self._retry_after, body, self._location)

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
        self._targets: dict[str, _Target] = {}

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        read_body: bool = False,
        max_body: int | None = None,
        keep_body: int | None = None,
    ) -> Answer:
        """Send one request and read what the sink needs of the answer."""
        try:
            target = self._target(url)
            request = _serialize(method, target, headers, body)
        except ValueError as error:  # UnicodeError included: not a request anyone can send
            raise failure(error) from error
        body_wanted = (read_body, max_body, keep_body)
        origin = target.origin
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.untouched():
                return await self._exchange(origin, connection, request, body_wanted)
            connection.close()  # closed by the server while idle: nothing was sent on it
        connection = await self._connect(origin)
        return await self._exchange(origin, connection, request, body_wanted)

    async def _exchange(
        self,
        origin: _Origin,
        connection: _Connection,
        request: bytes,
        body_wanted: tuple[bool, int | None, int | None],
    ) -> Answer:
        try:
            async with asyncio.timeout(self._timeouts.read):
                answer = await connection.exchange(request, *body_wanted)
        except asyncio.CancelledError:
            connection.close()
            raise
        except (ConnectionError, OSError, TimeoutError) as error:
            connection.close()  # written, maybe acted on: an attempt, never replayed here
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

    def _target(self, url: str) -> _Target:
        """What ``url`` means on the wire, parsed once per distinct URL."""
        found = self._targets.get(url)
        if found is None:
            parsed = URL(url)  # yarl, as aiohttp: the same percent-encoding, byte for byte
            host = parsed.raw_host
            if parsed.scheme not in ("http", "https") or not host or parsed.port is None:
                raise ValueError(f"not an http(s) URL: {url!r}")
            basic = None
            if parsed.raw_user is not None or parsed.raw_password is not None:
                credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode("latin-1")
                basic = "Basic " + b64encode(credentials).decode("ascii")
            found = _Target(
                (parsed.scheme, host, parsed.port),
                parsed.host_port_subcomponent or host,
                parsed.raw_path_qs,
                basic,
            )
            if len(self._targets) > 4096:  # a templated URL per key: keep the cache bounded
                self._targets.clear()
            self._targets[url] = found
        return found

    async def _close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


def _serialize(
    method: str, target: _Target, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target.target} HTTP/1.1", f"Host: {target.host}"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    if target.basic is not None and not any(n.lower() == "authorization" for n in headers):
        lines.append(f"Authorization: {target.basic}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head
