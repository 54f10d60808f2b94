"""The lean HTTP/1.1 client: keep-alive, framing, failures, TLS, against servers that misbehave."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from pipeline.errors import ConfigOutageError, InvalidRecordError, RetryableSendError
from pipeline.http11 import LeanClient
from pipeline.http_client import Timeouts

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire: its head and its body (Content-Length framed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """A raw TCP server running ``handler`` per connection; yields its base URL.

    Every connection is closed, and every handler ended, when the block ends.
    """
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, host, 0, ssl=ssl_context)
    port = srv.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        srv.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            writer.close()
        await srv.wait_closed()


def replying(raw: bytes) -> Handler:
    """A handler that reads one request and answers ``raw``; ``server()`` then closes the
    connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return handler


def client(**timeouts: float) -> LeanClient:
    return LeanClient(Timeouts(**timeouts), 8)


OK = b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_requests_reuse_one_keep_alive_connection_and_arrive_exactly() -> None:
    """Ten requests, one connection; each arrives with its method, target, Host, headers and
    the exact body bytes."""
    connections = 0
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(OK)
        writer.close()

    async with server(handler) as base, client() as http:
        for i in range(10):
            answer = await http.request(
                "POST", f"{base}/v1/items?x=1", {"X-N": str(i)}, b"\x00%d" % i
            )
            assert 204 == answer.status

    assert 1 == connections
    head, body = seen[3]
    assert head.startswith(b"POST /v1/items?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in head
    assert b"\r\nX-N: 3\r\n" in head
    assert b"\x003" == body


async def test_a_connection_the_server_dropped_while_idle_is_replaced_silently() -> None:
    """The server closes keep-alive connections after one answer without saying so: the next
    request notices, and goes again on a new connection, without an error."""
    async with server(replying(OK)) as base, client() as http:
        statuses = [(await http.request("POST", base, {}, b"x")).status for _ in range(5)]

    assert [204] * 5 == statuses


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 422 Unprocessable\r\nContent-Length: 9\r\n\r\nbad field",
        b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbad \r\n5\r\nfield\r\n0\r\n\r\n",
        b"HTTP/1.1 422 Unprocessable\r\nConnection: close\r\n\r\nbad field",
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_an_answer_body_is_read_whatever_its_framing(answer: bytes) -> None:
    """A refusal's body comes whole, framed by length, chunks or the closing socket."""
    async with server(replying(answer)) as base, client() as http:
        result = await http.request("POST", base, {}, b"x")

    assert (422, b"bad field") == (result.status, result.body)


async def test_retry_after_is_read_from_the_answer() -> None:
    """A 429's Retry-After header comes back with the status."""
    answer = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    async with server(replying(answer)) as base, client() as http:
        result = await http.request("POST", base, {}, b"x")

    assert (429, "7") == (result.status, result.retry_after)


async def test_a_slow_answer_is_a_timeout_and_a_refused_connection_is_unreachable() -> None:
    """No answer within the read timeout: ``timeout``; nobody listening: ``connection``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with server(handler) as base, client(read=0.2) as http:
        with pytest.raises(RetryableSendError) as slow:
            await http.request("POST", base, {}, b"x")
    async with client() as http:
        with pytest.raises(RetryableSendError) as refused:
            await http.request("POST", base, {}, b"x")

    assert "timeout" == slow.value.reason
    assert "connection" == refused.value.reason


async def test_a_connection_cut_mid_answer_is_a_connection_error() -> None:
    """Half an answer, then the socket closes: a retryable connection failure."""
    half = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    async with server(replying(half)) as base, client() as http:
        with pytest.raises(RetryableSendError) as raised:
            await http.request("POST", base, {}, b"x")

    assert "connection" == raised.value.reason


async def test_garbage_instead_of_http_is_a_connection_error() -> None:
    """An answer that is not HTTP fails the exchange, retryably, and drops the connection."""
    async with server(replying(b"SSH-2.0-OpenSSH\r\n\r\n")) as base, client() as http:
        with pytest.raises(RetryableSendError):
            await http.request("POST", base, {}, b"x")


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nInjected: 1"}, {"X-Name": "caf\u00e9\u2603"}, {"Bad:Name": "x"}],
    ids=["line-break", "not-latin-1", "colon-in-name"],
)
async def test_a_header_that_cannot_be_sent_is_an_invalid_record(headers: dict[str, str]) -> None:
    """Nothing that would corrupt the request is written: the record is refused, unsent."""
    async with client() as http:
        with pytest.raises(InvalidRecordError):
            await http.request("POST", "http://127.0.0.1:9/", headers, b"x")


async def test_https_with_the_given_trust() -> None:
    """TLS to an API whose certificate the given context trusts; without that trust, the
    endpoint is misconfigured (see tests/test_tls.py)."""
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    authority.configure_trust(client_ctx)
    async with server(replying(OK), server_ctx) as base:
        async with LeanClient(Timeouts(), 4, client_ctx) as http:
            result = await http.request("POST", base, {}, b"x")
        async with client() as untrusting:
            with pytest.raises(ConfigOutageError):
                await untrusting.request("POST", base, {}, b"x")

    assert 204 == result.status


async def test_a_token_answer_body_is_read_in_full_when_asked() -> None:
    """``read_body`` brings a 2xx body (a token); otherwise a 2xx body is drained unread."""
    payload = b'{"access_token": "' + b"t" * 2000 + b'"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)

    async with server(handler) as base, client() as http:
        wanted = await http.request("POST", base, {}, b"x", read_body=True)
        unwanted = await http.request("POST", base, {}, b"x")

    assert payload == wanted.body
    assert b"" == unwanted.body


# Interim answers, and answers nobody asked for


async def test_interim_1xx_answers_are_skipped_and_never_paired_with_the_next_request() -> None:
    """A ``100 Continue`` and a ``103 Early Hints`` precede the real answer: the record gets its
    201, and the next record on the connection its own 422, not the 201 shifted by one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nRetry-After: 9\r\n\r\n"
        )
        await asyncio.sleep(0.1)  # the real answer in a later read
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 422 Unprocessable\r\nContent-Length: 3\r\n\r\nbad")
        await asyncio.sleep(5)

    async with server(handler) as base, client() as http:
        first = await http.request("POST", base, {}, b"1")
        second = await http.request("POST", base, {}, b"2")

    assert (201, None) == (first.status, first.retry_after)
    assert (422, b"bad") == (second.status, second.body)


async def test_a_101_switching_protocols_is_a_failed_exchange() -> None:
    """The stage never asks for an upgrade: a 101 is no answer, and the connection is dropped."""
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    async with server(replying(upgrade)) as base, client() as http:
        with pytest.raises(RetryableSendError) as raised:
            await http.request("POST", base, {}, b"x")

    assert "connection" == raised.value.reason


def answering_then_unsolicited(later: bool) -> tuple[Handler, list[int]]:
    """A server whose first connection sends an extra answer nobody asked for, in the same read
    as the real one or while the connection sits idle; any further request on that connection
    gets a 500, and on a new connection a 204. Yields the count of requests per connection."""
    per_connection: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        while True:
            await read_request(reader)
            per_connection[index] += 1
            if index > 0:
                writer.write(OK)
            elif per_connection[index] > 1:
                writer.write(b"HTTP/1.1 500 Shifted\r\nContent-Length: 0\r\n\r\n")
            elif later:
                writer.write(OK)
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 422 Unasked\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(OK + b"HTTP/1.1 422 Unasked\r\nContent-Length: 0\r\n\r\n")

    return handler, per_connection


@pytest.mark.parametrize("later", [False, True], ids=["same-read", "while-idle"])
async def test_an_answer_nobody_asked_for_retires_the_connection(later: bool) -> None:
    """Bytes after an answer, or an answer with no request waiting: the connection can no longer
    be trusted to pair answers with requests, so the next request goes on a new one."""
    handler, per_connection = answering_then_unsolicited(later)
    async with server(handler) as base, client() as http:
        first = await http.request("POST", base, {}, b"1")
        await asyncio.sleep(0.2)
        second = await http.request("POST", base, {}, b"2")

    assert (204, 204) == (first.status, second.status)
    assert [1, 1] == per_connection


# Keep-alive connections the server closed: replayed only when nothing was sent


async def test_a_connection_closed_while_idle_is_replaced_and_the_request_arrives_once() -> None:
    """The server closes an idle keep-alive connection; the next request sees it was closed
    before writing anything, and goes out once on a new connection, without an error."""
    bodies: list[bytes] = []
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies.append((await read_request(reader))[1])
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        closed.set()

    async with server(handler) as base, client() as http:
        await http.request("POST", base, {}, b"1")
        await closed.wait()
        await asyncio.sleep(0.05)
        answer = await http.request("POST", base, {}, b"2")

    assert 204 == answer.status
    assert [b"1", b"2"] == bodies


async def test_a_request_the_server_read_before_closing_is_not_sent_again() -> None:
    """The server reads the whole request on a reused connection, then closes without an
    answer: it may have acted on it, so that is a failed attempt for the retry policy to count,
    never a silent second POST."""
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            bodies.append((await read_request(reader))[1])
            if len(bodies) == 2:
                return  # read, never answered: server() closes the connection
            writer.write(OK)

    async with server(handler) as base, client() as http:
        await http.request("POST", base, {}, b"1")
        with pytest.raises(RetryableSendError) as raised:
            await http.request("POST", base, {}, b"2")

    assert "connection" == raised.value.reason
    assert [b"1", b"2"] == bodies
