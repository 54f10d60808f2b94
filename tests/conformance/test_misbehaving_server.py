"""A raw server that does what HTTP allows but few servers do, and what it forbids but networks,
proxies and broken deployments still produce.

Each case sends several records one after the other on one sink (so connections are reused) and
says what the pipeline must make of each, and what the server must have seen.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from pipeline.errors import ConfigOutageError, RejectedError
from pipeline.http_client import BODY_EXCERPT_BYTES
from tests.conformance.servers import (
    CREATED,
    RawServer,
    answer,
    answer_and_close,
    answer_then,
    close_without_answer,
    endless,
    huge,
)
from tests.conformance.verdicts import SinkTo, attempt, key, verdict, verdicts

T = TypeVar("T")

MiB = 1 << 20
# The most a client may hold while it reads an answer, whatever the answer's size.
MEMORY_BOUND = 5 * MiB

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
NO_SUCH_ORBIT = (
    b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 13\r\n\r\nno such orbit"
)
STALE = b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 5\r\n\r\nstale"


def chunked(status: bytes, *chunks: bytes) -> bytes:
    """An answer in chunks, ending with trailers."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (
        b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n" % status
        + body
        + b"0\r\nX-Checksum: 0xfeed\r\nX-Served-By: raw\r\n\r\n"
    )


async def peak_memory(awaitable: Awaitable[T]) -> tuple[T, int]:
    """What ``awaitable`` returns, and the most Python memory held at once while it ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = await awaitable
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# 1xx: interim answers come before the real one


async def test_interim_1xx_answers_are_skipped_and_the_final_answer_counts(
    sink_to: SinkTo,
) -> None:
    """100 Continue, 102 Processing and 103 Early Hints (with headers), alone, several, in one
    write or apart: each record is delivered on its final 201, and arrives once."""
    async with (
        RawServer(
            answer(CONTINUE + CREATED),
            answer(PROCESSING, EARLY_HINTS, CREATED),
            answer(CONTINUE + EARLY_HINTS + PROCESSING + CREATED),
        ) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered"] * 4 == await verdicts(sink, 0, 1, 2, 3)

    assert [key(0), key(1), key(2), key(3)] == server.keys


async def test_a_422_after_a_1xx_rejects_its_own_record_and_no_other(sink_to: SinkTo) -> None:
    """1xx then 201, 1xx then 422, 1xx then 201: delivered, rejected, delivered, never swapped;
    the rejection carries the 422's own body."""
    async with (
        RawServer(
            answer(CONTINUE, CREATED),
            answer(EARLY_HINTS, NO_SUCH_ORBIT),
            answer(CONTINUE, CREATED),
        ) as server,
        sink_to(server.url) as sink,
    ):
        errors = [await attempt(sink, offset) for offset in range(3)]

    assert ["delivered", "rejected 422", "delivered"] == [verdict(e) for e in errors]
    assert isinstance(errors[1], RejectedError)
    assert "no such orbit" == errors[1].body
    assert [key(0), key(1), key(2)] == server.keys


async def test_101_switching_protocols_is_an_error_to_retry_never_an_answer(
    sink_to: SinkTo,
) -> None:
    """Nobody asked to upgrade: a 101 means the server speaks something else now."""
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    async with (
        RawServer(answer(CREATED), answer(switching)) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered", "retried connection", "delivered"] == await verdicts(sink, 0, 1, 2)


# Framing: chunks and trailers, bodies that end with the connection, HTTP/1.0


async def test_a_chunked_body_with_trailers_is_read_to_its_end(sink_to: SinkTo) -> None:
    """Chunked 2xx answers with trailers on one keep-alive connection, and a chunked 422 whose
    body is the rejection's excerpt."""
    async with (
        RawServer(
            answer(chunked(b"200 OK", b"{", b'"id": 7', b"}")),
            answer(chunked(b"201 Created", b"{}")),
            answer(chunked(b"422 Unprocessable Entity", b"no such ", b"orbit")),
            answer(chunked(b"200 OK", b"ok")),
        ) as server,
        sink_to(server.url) as sink,
    ):
        errors = [await attempt(sink, offset) for offset in range(4)]

    assert ["delivered", "delivered", "rejected 422", "delivered"] == [verdict(e) for e in errors]
    assert isinstance(errors[2], RejectedError)
    assert "no such orbit" == errors[2].body
    assert [key(0), key(1), key(2), key(3)] == server.keys


async def test_a_body_that_ends_when_the_server_closes_is_read_to_its_end(
    sink_to: SinkTo,
) -> None:
    """No Content-Length, ``Connection: close``: the body is whatever comes before the close."""
    close_delimited = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall good"
    refusal = b"HTTP/1.1 422 Unprocessable Entity\r\nConnection: close\r\n\r\nno such orbit"
    async with (
        RawServer(
            answer_and_close(close_delimited),
            answer_and_close(refusal),
            answer_and_close(close_delimited),
        ) as server,
        sink_to(server.url) as sink,
    ):
        errors = [await attempt(sink, offset) for offset in range(3)]

    assert ["delivered", "rejected 422", "delivered"] == [verdict(e) for e in errors]
    assert isinstance(errors[1], RejectedError)
    assert "no such orbit" == errors[1].body
    assert [key(0), key(1), key(2)] == server.keys


async def test_http_1_0_answers_are_understood(sink_to: SinkTo) -> None:
    """An HTTP/1.0 answer then a close, one kept alive on request of the server, one whose body
    ends with the connection: all delivered, each record once."""
    async with (
        RawServer(
            answer_and_close(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            answer(b"HTTP/1.0 201 Created\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
            answer_and_close(b"HTTP/1.0 200 OK\r\n\r\nends with the connection"),
        ) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered"] * 4 == await verdicts(sink, 0, 1, 2, 3)

    assert [key(0), key(1), key(2), key(3)] == server.keys


# Keep-alive connections the server closes without a word


async def test_a_keep_alive_connection_the_server_closed_while_idle_is_not_used_again(
    sink_to: SinkTo,
) -> None:
    """The server closes every connection right after its answer, without ``Connection:
    close``: each next record goes out on a new connection, delivered, and arrives once."""
    async with (
        RawServer(*[answer_and_close(CREATED)] * 3) as server,
        sink_to(server.url) as sink,
    ):
        outcomes = []
        for offset in range(3):
            outcomes.append(verdict(await attempt(sink, offset)))
            await asyncio.sleep(0.1)  # idle: the close arrives meanwhile

    assert ["delivered"] * 3 == outcomes
    assert [key(0), key(1), key(2)] == server.keys


async def test_a_request_the_server_read_and_never_answered_is_retried_not_replayed(
    sink_to: SinkTo,
) -> None:
    """On a reused connection the server reads the second record in full, then closes without
    a byte of answer. It may have acted on it: the client must not send it again on its own (the
    sender retries it, with its backoff); the server saw it once."""
    async with (
        RawServer(answer(CREATED), close_without_answer()) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered", "retried connection", "delivered"] == await verdicts(sink, 0, 1, 2)

    assert [key(0), key(1), key(2)] == server.keys


# Bodies too big to keep, and bodies without an end


async def test_a_huge_2xx_body_is_delivered_without_being_kept(sink_to: SinkTo) -> None:
    """50 MiB of accepted answer: the sink needs none of it, and holds no more than a few MiB."""
    async with (
        RawServer(huge(b"200 OK", 50 * MiB)) as server,
        sink_to(server.url, read=15) as sink,
    ):
        error, peak = await peak_memory(attempt(sink, 0))
        assert "delivered" == verdict(error)
        assert peak < MEMORY_BOUND, f"held {peak / MiB:.1f} MiB while reading"
        assert ["delivered"] == await verdicts(sink, 1)

    assert [key(0), key(1)] == server.keys


async def test_a_huge_error_body_is_cut_to_an_excerpt(sink_to: SinkTo) -> None:
    """A 10 MiB 422: rejected with at most 1 KiB of its body, in bounded memory."""
    async with (
        RawServer(huge(b"422 Unprocessable Entity", 10 * MiB)) as server,
        sink_to(server.url, read=15) as sink,
    ):
        error, peak = await peak_memory(attempt(sink, 0))
        assert "rejected 422" == verdict(error)
        assert isinstance(error, RejectedError)
        assert 0 < len(error.body.encode()) <= BODY_EXCERPT_BYTES
        assert peak < MEMORY_BOUND, f"held {peak / MiB:.1f} MiB while reading"
        assert ["delivered"] == await verdicts(sink, 1)

    assert [key(0), key(1)] == server.keys


async def test_a_body_that_never_ends_times_out_and_is_retried(sink_to: SinkTo) -> None:
    """A chunked 200 that goes on for ever: the read timeout ends it, a retry, not an answer."""
    async with (
        RawServer(endless(b"200 OK")) as server,
        sink_to(server.url, read=1.0) as sink,
    ):
        assert ["retried timeout", "delivered"] == await verdicts(sink, 0, 1)

    assert [key(0), key(1)] == server.keys


# Answers that are not HTTP


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 OK", b"HTTP/1.1 2x1 Created", b"SPACE/1.1 201 Created"],
    ids=["no-status", "not-a-number", "not-http"],
)
async def test_a_malformed_status_line_is_a_connection_error_never_an_answer(
    sink_to: SinkTo, status_line: bytes
) -> None:
    async with (
        RawServer(
            answer(CREATED), answer(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        ) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered", "retried connection", "delivered"] == await verdicts(sink, 0, 1, 2)

    assert [key(0), key(1), key(2)] == server.keys


@pytest.mark.parametrize(
    "lengths",
    [b"Content-Length: 2\r\nContent-Length: 4\r\n", b"Content-Length: 2, 4\r\n"],
    ids=["two-headers", "one-list"],
)
async def test_conflicting_content_lengths_are_a_connection_error_never_an_answer(
    sink_to: SinkTo, lengths: bytes
) -> None:
    """Which length is true? Guessing is how responses get split: no answer, a retry."""
    async with (
        RawServer(
            answer(CREATED), answer(b"HTTP/1.1 201 Created\r\n" + lengths + b"\r\n{}{}")
        ) as server,
        sink_to(server.url) as sink,
    ):
        assert ["delivered", "retried connection", "delivered"] == await verdicts(sink, 0, 1, 2)

    assert [key(0), key(1), key(2)] == server.keys


# Bytes nobody asked for


async def test_an_answer_sent_while_no_request_waits_is_never_taken_for_the_next_one(
    sink_to: SinkTo,
) -> None:
    """After its answer the server sends a whole 422 while the connection is idle: that
    connection is done for; the next record goes out on a new one and gets its own 201."""
    async with (
        RawServer(answer_then(CREATED, STALE)) as server,
        sink_to(server.url) as sink,
    ):
        outcomes = [verdict(await attempt(sink, 0))]
        await asyncio.sleep(0.1)  # the unsolicited answer arrives meanwhile
        outcomes.append(verdict(await attempt(sink, 1)))

    assert ["delivered", "delivered"] == outcomes
    assert [key(0), key(1)] == server.keys
    assert server.connection_of(key(0)) != server.connection_of(key(1)), (
        "used again after stray bytes"
    )


@pytest.mark.parametrize(
    "leftover",
    [STALE, b"HTTP/1.1 422 Unproc", b"garbage"],
    ids=["a-whole-answer", "half-an-answer", "junk"],
)
async def test_bytes_left_after_an_answer_are_never_read_as_the_next_answer(
    sink_to: SinkTo, client_name: str, leftover: bytes
) -> None:
    """The answer comes with more bytes behind it in the same write: the answer counts, the
    connection is done for, and the next record gets its own answer on a new one.

    One difference is allowed, and only in the safe direction: aiohttp's C parser raises on junk
    before it hands over the answer it completed in the same read, so with aiohttp that record
    is retried (same Idempotency-Key) rather than delivered. Never is an answer misattributed.
    """
    first = "delivered"
    if client_name == "aiohttp" and leftover == b"garbage":
        first = "retried connection"
    async with (
        RawServer(answer(CREATED + leftover)) as server,
        sink_to(server.url) as sink,
    ):
        assert [first, "delivered"] == await verdicts(sink, 0, 1)

    assert [key(0), key(1)] == server.keys
    assert server.connection_of(key(0)) != server.connection_of(key(1)), (
        "used again after stray bytes"
    )


# Answers the policy classifies


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_an_outage_of_the_configured_url_and_never_followed(
    sink_to: SinkTo, status: int
) -> None:
    """The URL setting is wrong: an outage "config" naming the Location, and the server at the
    Location sees nothing (a redirected POST may lose its body or land somewhere unvetted)."""
    async with RawServer() as elsewhere:
        redirect = b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (
            status,
            elsewhere.url.encode(),
        )
        async with RawServer(answer(redirect)) as server, sink_to(server.url) as sink:
            errors = [await attempt(sink, offset) for offset in range(2)]

    assert ["outage config", "delivered"] == [verdict(e) for e in errors]
    assert isinstance(errors[0], ConfigOutageError)
    assert (status, elsewhere.url) == (errors[0].status, errors[0].location)
    assert [] == elsewhere.seen
    assert [key(0), key(1)] == server.keys


async def test_statuses_that_are_no_acceptance_are_outages_retries_or_rejections(
    sink_to: SinkTo,
) -> None:
    """401 is an auth outage; 503 and 429 are retried when the server says (``Retry-After``);
    422 rejects the record."""
    async with (
        RawServer(
            answer(
                b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="space"\r\n'
                b"Content-Length: 0\r\n\r\n"
            ),
            answer(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
            ),
            answer(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nslow"
            ),
            answer(NO_SUCH_ORBIT),
        ) as server,
        sink_to(server.url) as sink,
    ):
        errors = [await attempt(sink, offset) for offset in range(5)]

    assert ["outage auth", "retried 503", "retried 429", "rejected 422", "delivered"] == [
        verdict(e) for e in errors
    ]
    assert [7.0, 1.0] == [getattr(e, "retry_after", None) for e in errors[1:3]]
    assert [key(offset) for offset in range(5)] == server.keys
