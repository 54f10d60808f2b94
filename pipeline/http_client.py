"""HTTP exchanges for the sink: one request out, status and what matters of the answer back.

Three clients fit the :class:`HttpClient` seam. The default is the stage's own lean keep-alive
client (:mod:`pipeline.http11`): on a fast API the client is most of what the stage spends per
record, and measured on this kind of machine it costs a fraction of aiohttp's CPU per request,
itself a fraction of httpx's (see the README's benchmark). :class:`AiohttpClient` drives aiohttp
directly, for what the lean client leaves out (HTTP proxies). :class:`HttpxClient` runs any httpx
transport, so tests keep using ``httpx.MockTransport`` and users can pass a transport of their own.

None follows a redirect: a ``3xx`` comes back as the answer, with its ``Location``, since a POST
turned into a GET elsewhere would count as the record's acceptance while the API never saw it.

All turn failures into the pipeline's errors the same way: a refused or cut connection is a
``connection`` error, a timeout is a ``timeout``, a certificate that fails verification is a
``tls`` :class:`~pipeline.errors.ConfigOutageError` (the URL or the trust is wrong, no record
is), a request the client refuses to build (a header with a line break) is an
:class:`~pipeline.errors.InvalidRecordError`, and anything nobody foresaw is an
:class:`~pipeline.errors.UnexpectedSendError`, retried a few times only.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Protocol, Self
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from pipeline.errors import (
    ConfigOutageError,
    InvalidRecordError,
    RetryableSendError,
    SendError,
    UnexpectedSendError,
)

# Enough of a refusal's body to say why, in a log line or a dead letter's header.
BODY_EXCERPT_BYTES = 1024


def too_large(limit: int) -> SendError:
    """The error for an answer whose body exceeds a caller's ``max_body``: it is not read on."""
    return RetryableSendError(
        f"the answer's body is larger than {limit} bytes (not read further)", reason="too_large"
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What the sink needs of a response.

    The status, ``Retry-After``, the body of a failure, and the ``Location`` of a redirect (which
    is never followed: see :class:`~pipeline.errors.ConfigOutageError`). An accepted answer
    asked for with ``keep_body`` also has its body (``truncated`` when it was longer than
    kept) and its ``Content-Type``: the API's answer, for the result topic.
    """

    status: int
    retry_after: str | None = None
    body: bytes = b""
    location: str | None = None
    content_type: str | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect (or wait for a pooled connection) and to read an answer."""

    connect: float = 5.0
    read: float = 10.0


class ClosingClient:
    """What every client shares: use as ``async with``, leaving it closes the connections once."""

    _closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def _close(self) -> None:
        raise NotImplementedError


class HttpClient(Protocol):
    """Sends one request; raises a :class:`~pipeline.errors.SendError` when there is no answer."""

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
        """Send and return the answer (any status); the body of a 2xx only when asked.

        A body read with ``read_body`` that exceeds ``max_body`` bytes raises :func:`too_large`
        as soon as it does (the connection is dropped), so an answer cannot fill the memory.
        ``keep_body`` keeps at most that many bytes of a 2xx body and reads the rest without
        keeping it (the answer is ``truncated``): the record was accepted whatever its length.
        """
        ...

    async def aclose(self) -> None:
        """Close connections; idempotent."""
        ...


# What went wrong, in order of precedence: a refused connection before a timeout (some clients
# report a refused connection as a connect timeout, with the refusal as its cause).
_UNREACHABLE = (aiohttp.ClientConnectorError, ConnectionError, httpx.ConnectError)
_TIMED_OUT = (TimeoutError, httpx.TimeoutException)
_EXCHANGE_FAILED = (aiohttp.ClientError, httpx.TransportError, OSError)


def failure(error: BaseException) -> SendError:
    """The pipeline's error for an exchange that produced no answer."""
    known = error if isinstance(error, SendError) else _untrusted(error)
    if known is not None:
        return known
    cause = error.__cause__ or error
    if isinstance(error, _UNREACHABLE) or isinstance(cause, _UNREACHABLE):
        return RetryableSendError(f"Space API unreachable: {cause}", reason="connection")
    if isinstance(error, _TIMED_OUT):
        return RetryableSendError(f"Space API timed out: {error!r}", reason="timeout")
    if isinstance(error, _EXCHANGE_FAILED):
        return RetryableSendError(f"Space API exchange failed: {error!r}", reason="connection")
    if isinstance(error, ValueError | TypeError):  # the client refused what it was given
        return InvalidRecordError(f"the record cannot become a request: {error}")
    message = f"unexpected failure calling the Space API: {error!r}"
    return UnexpectedSendError(message, reason="unexpected")


def _untrusted(error: BaseException) -> ConfigOutageError | None:
    """The outage of an endpoint whose certificate failed verification, if that is ``error``.

    aiohttp wraps the verification error in ``ClientConnectorCertificateError`` (a subclass
    without its message), the lean client raises it as is.
    """
    for candidate in (getattr(error, "certificate_error", None), error.__cause__, error):
        if isinstance(candidate, ssl.SSLCertVerificationError):
            return ConfigOutageError(
                f"the Space API's TLS certificate failed verification ({candidate.verify_message}):"
                " check PIPELINE_SPACE_API_URL, or trust its CA with PIPELINE_SPACE_API_CA_FILE",
                reason="tls",
            )
    return None


class AiohttpClient(ClosingClient):
    """A pooled aiohttp session; async context manager, ``aclose`` idempotent.

    Proxies: ``proxy`` when given, otherwise ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` from the
    environment, resolved once per URL. aiohttp's own ``trust_env`` is left off: it would also
    read ``~/.netrc`` for the API's credentials, and look the proxy up in a thread per request.

    Args:
        timeouts: Connect and read timeouts of one request.
        max_connections: Pool size; match the sender's concurrency so nothing queues for a socket.
        ssl_context: Trust and client certificate for ``https`` (see :mod:`pipeline.tls`).
        proxy: An HTTP proxy every request goes through (``PIPELINE_HTTP_PROXY``).
    """

    def __init__(
        self,
        timeouts: Timeouts,
        max_connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
    ) -> None:
        # One deadline for the whole exchange (connect + read): one timer per request, where a
        # per-read timeout re-arms a timer on every chunk received.
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.connect + timeouts.read, connect=timeouts.connect
        )
        self._max_connections = max_connections
        self._ssl = ssl_context
        self._proxy = proxy
        self._env_proxies: dict[str, str | None] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop, as aiohttp wants.
        connector = _UntouchedConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ssl=self._ssl if self._ssl is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
        )
        return self._session

    def _proxy_for(self, url: str) -> str | None:
        """The environment's proxy for ``url`` (``None`` when ``NO_PROXY`` names its host)."""
        try:
            return self._env_proxies[url]
        except KeyError:
            pass
        parsed = URL(url)
        proxies = getproxies_environment()
        proxy = proxies.get(parsed.scheme)
        if proxy is not None and proxy_bypass_environment(parsed.host or "", proxies):
            proxy = None
        if len(self._env_proxies) > 4096:  # a templated URL per key: keep the cache bounded
            self._env_proxies.clear()
        self._env_proxies[url] = proxy
        return proxy

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
        session = self._session or self._open()
        proxy = self._proxy or self._proxy_for(url)
        try:
            if "@" in url and any(name.lower() == "authorization" for name in headers):
                url = str(URL(url).with_user(None))  # the request's own Authorization wins
            async with session.request(
                method, url, data=body, headers=headers, proxy=proxy, allow_redirects=False
            ) as response:
                return await _answer(response, read_body, max_body, keep_body)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise failure(error) from error

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _answer(
    response: aiohttp.ClientResponse,
    read_body: bool,
    max_body: int | None,
    keep_body: int | None = None,
) -> Answer:
    """What the sink needs of ``response``, its body read to the end when it is accepted."""
    status = response.status
    if status == 101:  # nobody asked to upgrade: the server speaks something else now
        raise ConnectionError("the server switched protocols (101)")
    if 200 <= status < 300 and keep_body is not None:
        body, truncated = await keep_at_most(response.content.iter_any(), keep_body)
        content_type = response.headers.get("Content-Type")
        return Answer(status, body=body, content_type=content_type, truncated=truncated)
    if 200 <= status < 300 and read_body and max_body is not None:
        return Answer(status, body=await _read_at_most(response.content, max_body))
    if 200 <= status < 300 and read_body:
        return Answer(status, body=await response.read())
    if 200 <= status < 300:
        await _discard(response.content)  # read to its end: the connection goes back
        return Answer(status)
    # A refusal's body beyond the excerpt is not read: its connection is closed, not drained.
    payload = await response.content.read(BODY_EXCERPT_BYTES)
    found = response.headers
    return Answer(status, found.get("Retry-After"), payload, found.get("Location"))


async def keep_at_most(chunks: AsyncIterable[bytes], limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a body, and whether there were more (read, never kept)."""
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        if size < limit:
            kept.append(chunk[: limit - size])
        size += len(chunk)
    return b"".join(kept), size > limit


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or :func:`too_large` once more than ``limit`` bytes have come."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(content: aiohttp.StreamReader) -> None:
    """Read the body to its end, keeping none of it: an accepted answer may be any size."""
    while await content.readany():
        pass


class _UntouchedConnector(aiohttp.TCPConnector):
    """aiohttp's pool, handing out only connections on which nothing arrived while idle.

    Bytes on an idle connection are an answer nobody asked for: taken for the next request's
    answer, it would accept or reject the wrong record. aiohttp 3.14 reuses such a connection:
    a whole stray message waits in the protocol's queue (``should_close`` then says so, but the
    pool does not ask), part of one waits in the parser, and bytes the loop has not read yet
    wait in the socket. There is no public hook between the pool and a reused connection, so
    this overrides the pool's private ``_get`` and reads the protocol's private parser; the
    version is bounded in pyproject.toml and the conformance suite catches a change.
    """

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while (connection := await super()._get(key, traces)) is not None:
            if connection.protocol is not None and _untouched(connection.protocol):
                return connection
            connection.close()  # the next pooled one, or a new connection
        return None


def _untouched(protocol: ResponseHandler) -> bool:
    """Whether nothing arrived on the idle ``protocol`` since its last answer ended."""
    if protocol.should_close:  # a stray message queued, a parse error, the server's close
        return False
    parser = protocol._parser  # private: see _UntouchedConnector
    try:
        if parser is not None and parser.feed_eof() is not None:  # part of a message
            return False
    except Exception:  # the part did not even make a message
        return False
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is None:
        return True
    readable = select.poll()
    readable.register(sock.fileno(), select.POLLIN)
    return not readable.poll(0)  # bytes not read yet, or the server's close


class HttpxClient(ClosingClient):
    """Any httpx transport behind the same seam (``httpx.MockTransport`` in tests).

    Args:
        transport: The transport to send through; closed with the client.
        timeouts: Connect and read timeouts of one request.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, timeouts: Timeouts) -> None:
        self._transport = transport
        timeout = httpx.Timeout(timeouts.read, connect=timeouts.connect, pool=timeouts.connect)
        self._extensions = {"timeout": timeout.as_dict()}

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
        """Send one request through the transport and read what the sink needs."""
        truncated = False
        try:
            request = httpx.Request(
                method, url, headers=headers, content=body, extensions=self._extensions
            )
            response = await self._transport.handle_async_request(request)
            try:
                if keep_body is not None and 200 <= response.status_code < 300:
                    payload, truncated = await keep_at_most(response.aiter_bytes(), keep_body)
                elif max_body is None:
                    payload = await response.aread()
                else:
                    payload = b""
                    async for chunk in response.aiter_bytes():
                        payload += chunk
                        if len(payload) > max_body:
                            raise too_large(max_body)
            finally:
                await response.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise failure(error) from error
        status = response.status_code
        if 200 <= status < 300 and keep_body is not None:
            content_type = response.headers.get("content-type")
            return Answer(status, body=payload, content_type=content_type, truncated=truncated)
        if 200 <= status < 300:
            return Answer(status, body=payload if read_body else b"")
        found = response.headers
        excerpt = payload[:BODY_EXCERPT_BYTES]
        return Answer(status, found.get("retry-after"), excerpt, found.get("location"))

    async def _close(self) -> None:
        await self._transport.aclose()
