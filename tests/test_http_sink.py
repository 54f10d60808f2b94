"""The HTTP sink: exact requests for records and batches, and every answer classified."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TypeVar

import httpx
import pytest
from backports import zstd

from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import (
    AuthError,
    ConfigOutageError,
    InvalidRecordError,
    RejectedError,
    RetryableSendError,
)
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, Answer, HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.policy import Classification, parse_statuses
from pipeline.records import idempotency_key
from tests.fakes import Record
from tests.test_http11 import read_request
from tests.test_http11 import server as raw_server

URL = "https://space.example/v1/records"
TOKEN = "s3cret"

Handler = Callable[[httpx.Request], httpx.Response]
E = TypeVar("E", bound=Exception)


class FakeServer:
    """An ``httpx.MockTransport`` handler that records requests and answers as told."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda request: httpx.Response(200))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    @property
    def request(self) -> httpx.Request:
        assert 1 == len(self.requests)
        return self.requests[0]


def sink_for(server: Handler, config: HttpSinkConfig | None = None, **kwargs: object) -> HttpSink:
    """An HttpSink talking to ``server`` through ``httpx.MockTransport``."""
    config = config or HttpSinkConfig(**({"url": URL} | kwargs))  # type: ignore[arg-type]
    return HttpSink(config, HttpxClient(httpx.MockTransport(server), Timeouts()))


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def api(server: FakeServer) -> AsyncIterator[HttpSink]:
    async with sink_for(server) as sink:
        yield sink


def answering(status: int, **kwargs: object) -> Handler:
    return lambda request: httpx.Response(status, **kwargs)


async def raised_by(handler: Handler, error_type: type[E]) -> E:
    """The ``error_type`` that sending one record to ``handler`` raises."""
    async with sink_for(handler) as api:
        with pytest.raises(error_type) as raised:
            await api.send(Record())
    return raised.value


# The request


async def test_a_record_is_posted_to_the_url_with_its_exact_value_bytes(
    api: HttpSink, server: FakeServer
) -> None:
    """The value goes out byte for byte, never parsed or re-encoded."""
    value = b'\x00\xff{"not": "json"\n'

    await api.send(Record(value=value))

    assert "POST" == server.request.method
    assert URL == str(server.request.url)
    assert value == server.request.content


async def test_a_record_without_a_value_is_posted_with_an_empty_body(
    api: HttpSink, server: FakeServer
) -> None:
    """A tombstone (``value=None``) is delivered as an empty body."""
    await api.send(Record(value=None))

    assert b"" == server.request.content


async def test_the_request_names_the_record_in_its_headers(
    api: HttpSink, server: FakeServer
) -> None:
    """Idempotency-Key is ``topic/partition/offset``; the X-Kafka-* headers say the same."""
    await api.send(Record(topic="orders", partition=3, offset=42))

    headers = server.request.headers
    assert "orders/3/42" == headers["Idempotency-Key"]
    assert "orders" == headers["X-Kafka-Topic"]
    assert "3" == headers["X-Kafka-Partition"]
    assert "42" == headers["X-Kafka-Offset"]
    assert "space-pipeline" == headers["User-Agent"]


def test_the_idempotency_key_is_topic_partition_offset() -> None:
    """The key names the record the same way on every redelivery."""
    assert "payments.v2/0/9000000000" == idempotency_key(
        Record(topic="payments.v2", partition=0, offset=9_000_000_000)
    )


@pytest.mark.parametrize("header_name", ["content-type", "Content-Type", "CONTENT-TYPE"])
async def test_the_content_type_comes_from_the_record_header(
    api: HttpSink, server: FakeServer, header_name: str
) -> None:
    """A record's own ``content-type`` header (any case) wins over the configured default."""
    record = Record(headers=[("trace", b"abc"), (header_name, b"application/avro")])

    await api.send(record)

    assert "application/avro" == server.request.headers["Content-Type"]


async def test_the_content_type_defaults_to_the_configured_one() -> None:
    """Without a record header, the configured content type is sent."""
    server = FakeServer()

    async with sink_for(server, content_type="text/csv") as api:
        await api.send(Record(headers=[("trace", b"abc")]))

    assert "text/csv" == server.request.headers["Content-Type"]


async def test_the_default_content_type_is_json(api: HttpSink, server: FakeServer) -> None:
    """Out of the box records are declared as JSON."""
    await api.send(Record())

    assert "application/json" == server.request.headers["Content-Type"]


async def test_a_token_is_sent_as_a_bearer_authorization_with_the_static_headers() -> None:
    """``token`` becomes ``Authorization: Bearer <token>``; static headers ride along."""
    server = FakeServer()
    headers = {"X-Tenant": "acme", "X-Env": "prod"}

    async with sink_for(server, token=TOKEN, headers=headers) as api:
        await api.send(Record())

    headers = server.request.headers
    assert f"Bearer {TOKEN}" == headers["Authorization"]
    assert "acme" == headers["X-Tenant"]
    assert "prod" == headers["X-Env"]


async def test_without_a_token_no_authorization_is_sent(api: HttpSink, server: FakeServer) -> None:
    """No token, no Authorization header."""
    await api.send(Record())

    assert "Authorization" not in server.request.headers


def test_the_token_is_not_in_the_config_repr() -> None:
    """A logged config never shows the secret."""
    assert TOKEN not in repr(HttpSinkConfig(URL, token=TOKEN))


# The answer


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_a_2xx_answer_accepts_the_record(status: int) -> None:
    """Any 2xx means accepted: ``send`` returns."""
    server = FakeServer(answering(status))

    async with sink_for(server) as api:
        await api.send(Record())

    assert 1 == len(server.requests)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (408, "408"),
        (409, "409"),
        (425, "425"),
        (429, "429"),
        (500, "5xx"),
        (502, "5xx"),
        (503, "5xx"),
    ],
)
async def test_a_retryable_status_raises_a_retryable_send_error(status: int, reason: str) -> None:
    """408, 409 (a request with the same Idempotency-Key still in progress), 425, 429 and 5xx
    may succeed later: RetryableSendError, ``retryable`` true."""
    error = await raised_by(FakeServer(answering(status, text="busy")), RetryableSendError)

    assert error.retryable is True
    assert status == error.status
    assert reason == error.reason
    assert error.retry_after is None


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "whenever"}, None),
        (503, [(b"Retry-After", b"\xb2")], None),
    ],
    ids=["seconds-429", "seconds-503", "unreadable", "non-ascii-bytes"],
)
async def test_retry_after_in_seconds_is_read_and_garbage_is_ignored(
    status: int, headers: object, expected: float | None
) -> None:
    """``Retry-After: 7`` on a 429 or 503 becomes ``retry_after == 7``; a garbage Retry-After
    (not a number, or not even ASCII) still gives a retryable error, with no delay of its
    own."""
    error = await raised_by(FakeServer(answering(status, headers=headers)), RetryableSendError)

    assert expected == error.retry_after


async def test_retry_after_as_an_http_date_is_read_from_the_answer() -> None:
    """``Retry-After: <HTTP-date>`` becomes the seconds until then."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    server = FakeServer(answering(503, headers={"Retry-After": when}))

    error = await raised_by(server, RetryableSendError)

    assert error.retry_after is not None
    assert 110.0 < error.retry_after <= 120.0


@pytest.mark.parametrize("status", [400, 404, 405, 410, 413, 422])
async def test_any_other_4xx_rejects_the_record_with_status_and_body_excerpt(status: int) -> None:
    """A status neither retried nor an auth failure is RejectedError, ``retryable`` false, with
    the start of the body."""
    body = "field 'id' is required. " * 50
    error = await raised_by(FakeServer(answering(status, text=body)), RejectedError)

    assert error.retryable is False
    assert status == error.status
    assert "4xx" == error.reason
    assert body[:1024] == error.body


@pytest.mark.parametrize("status", [401, 403, 407])
async def test_an_auth_status_is_an_auth_outage_not_a_rejection(status: int) -> None:
    """401, 403 and 407 say nothing about the record: AuthError, retried, an outage."""
    error = await raised_by(FakeServer(answering(status)), AuthError)

    assert error.retryable is True
    assert "auth" == error.outage
    assert status == error.status


class Answering:
    """An :class:`~pipeline.http_client.HttpClient` that gives one scripted answer to every
    request, as a client that never follows redirects reports them."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        read_body: bool = False,
    ) -> Answer:
        self.requests.append((method, url))
        return self.answer

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_an_outage_of_the_configured_url_naming_where_it_points(
    status: int,
) -> None:
    """A 3xx says the configured URL is wrong, not the record: ConfigOutageError (an outage,
    retried, never a rejection), with the status and the Location in its attributes and its
    message, so the operator reads where to point the URL setting."""
    moved = "https://new.space.example/v2/records"
    client = Answering(Answer(status, location=moved))

    async with HttpSink(HttpSinkConfig(URL), client) as api:
        with pytest.raises(ConfigOutageError) as raised:
            await api.send(Record())

    error = raised.value
    assert (True, "config", "redirect") == (error.retryable, error.outage, error.reason)
    assert (status, moved) == (error.status, error.location)
    assert str(status) in str(error)
    assert moved in str(error)
    assert "URL" in str(error)
    assert [("POST", URL)] == client.requests


async def test_a_redirect_location_never_shows_a_secret() -> None:
    """A Location with a password or a signed query is masked in the error (it reaches the
    log and ``/readyz``)."""
    moved = "https://u:pa55@new.space.example/v2?sig=abc123&tenant=acme"
    client = Answering(Answer(302, location=moved))

    async with HttpSink(HttpSinkConfig(URL), client) as api:
        with pytest.raises(ConfigOutageError) as raised:
            await api.send(Record())

    text = f"{raised.value} {raised.value.location}"
    assert "pa55" not in text
    assert "abc123" not in text
    assert "tenant=acme" in text


async def test_the_classification_is_configurable() -> None:
    """Statuses move between classes as configured: here 404 is retried and 418 is auth."""
    classes = Classification(retry=parse_statuses("404"), auth=parse_statuses("418"))
    config = HttpSinkConfig(URL, classification=classes)

    async with sink_for(FakeServer(answering(404)), config) as api:
        with pytest.raises(RetryableSendError):
            await api.send(Record())
    async with sink_for(FakeServer(answering(418)), config) as api:
        with pytest.raises(AuthError):
            await api.send(Record())
    async with sink_for(FakeServer(answering(503)), config) as api:
        with pytest.raises(RejectedError):
            await api.send(Record())


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (httpx.ConnectError("connection refused"), "connection"),
        (httpx.RemoteProtocolError("peer closed"), "connection"),
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
    ],
    ids=["connect-error", "protocol-error", "read-timeout", "connect-timeout"],
)
async def test_transport_failures_raise_retryable_send_errors(
    failure: httpx.TransportError, reason: str
) -> None:
    """Connection trouble and timeouts are retryable, labelled ``connection`` or ``timeout``."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    error = await raised_by(fail, RetryableSendError)

    assert error.retryable is True
    assert reason == error.reason
    assert error.status is None
    assert failure is error.__cause__


# Lifecycle


async def test_close_is_idempotent() -> None:
    """Closing twice, or closing and then leaving ``async with``, is fine."""
    api = sink_for(FakeServer())

    async with api:
        await api.close()
        await api.close()


# Records that cannot become a request


@pytest.mark.parametrize(
    "headers",
    [[("content-type", None)], [("content-type", b"text/plain\r\nX-Evil: 1")]],
    ids=["none-value", "line-break"],
)
async def test_a_record_that_cannot_become_a_request_is_rejected_unsent(
    server: FakeServer, headers: list[tuple[str, bytes | None]]
) -> None:
    """A header value that is None, or holds CR/LF, is the record's fault: InvalidRecordError
    (final, so the rejection rules apply), and nothing reaches the API."""
    async with sink_for(server) as api:
        with pytest.raises(InvalidRecordError) as raised:
            await api.send(Record(headers=headers))

    assert raised.value.retryable is False
    assert [] == server.requests


async def test_a_line_break_caught_only_by_the_real_client_is_a_rejection_too() -> None:
    """aiohttp itself refuses a header with a line break (a static one, here): that too is an
    InvalidRecordError, never a retry loop."""
    from pipeline.dev.stub_api import StubConfig, StubServer  # noqa: PLC0415
    from pipeline.http_client import AiohttpClient  # noqa: PLC0415

    async with StubServer(StubConfig(latency_ms=0)) as stub:
        config = HttpSinkConfig(stub.url, headers={"X-Bad": "a\r\nb"})
        async with HttpSink(config, AiohttpClient(Timeouts(), 4)) as api:
            with pytest.raises(InvalidRecordError):
                await api.send(Record())
        assert 0 == stub.stats().requests


# Request mapping


async def test_the_url_names_the_record_with_its_key_escaped(server: FakeServer) -> None:
    """``{topic}``, ``{partition}`` and ``{key}`` fill the URL; the key is URL-escaped."""
    url = "https://space.example/v1/{topic}/{partition}/items/{key}"

    async with sink_for(server, url=url) as api:
        await api.send(Record(topic="orders", partition=3, key=b"a/b c?"))

    assert "/v1/orders/3/items/a%2Fb%20c%3F" == server.request.url.raw_path.decode()


@pytest.mark.parametrize(
    "key", [b".", b"..", b"%2e", b"%2E%2e", b".%2E", b"%252e"], ids=lambda key: key.decode()
)
async def test_a_key_that_would_be_a_dot_segment_rejects_the_record(
    server: FakeServer, key: bytes
) -> None:
    """``/spaces/{key}/items`` with the key ``..`` would be ``/spaces/../items``, which servers
    and aiohttp resolve to ``/items``: another resource. Servers decode ``%2E`` (some twice)
    before they resolve, so escaping cannot save it: the record is rejected, saying why, and
    nothing is sent."""
    async with sink_for(server, url="https://space.example/spaces/{key}/items") as api:
        with pytest.raises(InvalidRecordError) as raised:
            await api.send(Record(key=key))

    assert "dot segment" in str(raised.value)
    assert [] == server.requests


async def test_a_topic_that_would_be_a_dot_segment_rejects_the_record(server: FakeServer) -> None:
    """The same holds for ``{topic}``."""
    async with sink_for(server, url="https://space.example/{topic}/items") as api:
        with pytest.raises(InvalidRecordError):
            await api.send(Record(topic=".."))

    assert [] == server.requests


async def test_a_key_that_completes_a_dot_segment_with_the_template_rejects_the_record(
    server: FakeServer,
) -> None:
    """``/spaces/.{key}/items`` with the key ``.`` is ``/spaces/../items`` too."""
    async with sink_for(server, url="https://space.example/spaces/.{key}/items") as api:
        with pytest.raises(InvalidRecordError):
            await api.send(Record(key=b"."))
        await api.send(Record(key=b"a"))

    assert "/spaces/.a/items" == server.request.url.raw_path.decode()


@pytest.mark.parametrize(
    ("key", "path"),
    [
        (b"../admin", "/spaces/..%2Fadmin/items"),
        (b"a/b?x=1#f", "/spaces/a%2Fb%3Fx%3D1%23f/items"),
        (b"...", "/spaces/.../items"),
        (b".env", "/spaces/.env/items"),
    ],
)
async def test_other_keys_with_dots_or_slashes_stay_inside_their_one_segment(
    server: FakeServer, key: bytes, path: str
) -> None:
    """A slash, ``?`` or ``#`` is escaped, so the key stays one segment; dots that do not make
    a whole ``.`` or ``..`` segment are an ordinary name."""
    async with sink_for(server, url="https://space.example/spaces/{key}/items") as api:
        await api.send(Record(key=key))

    assert path == server.request.url.raw_path.decode()


async def test_a_key_url_without_a_key_rejects_the_record(server: FakeServer) -> None:
    """``{key}`` with a record that has none cannot be sent: a rejection, not a guess."""
    async with sink_for(server, url="https://space.example/{key}") as api:
        with pytest.raises(InvalidRecordError):
            await api.send(Record(key=None))


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_the_method_is_configurable(server: FakeServer, method: str) -> None:
    """PUT or PATCH instead of POST."""
    async with sink_for(server, method=method) as api:
        await api.send(Record())

    assert method == server.request.method


async def test_trace_context_headers_are_forwarded_and_others_are_not(server: FakeServer) -> None:
    """By default ``traceparent`` and ``tracestate`` go on as HTTP headers; other Kafka headers
    stay in Kafka."""
    headers = [("traceparent", b"00-abc-def-01"), ("tracestate", b"k=v"), ("secret", b"x")]

    async with sink_for(server) as api:
        await api.send(Record(headers=headers))

    sent = server.request.headers
    assert "00-abc-def-01" == sent["traceparent"]
    assert "k=v" == sent["tracestate"]
    assert "secret" not in sent


@pytest.mark.parametrize("name", ["Content-Length", "host", "Transfer-Encoding", "Proxy-Foo"])
def test_a_framing_header_can_never_be_forwarded_even_if_listed(name: str) -> None:
    """A sink built without the settings' checks refuses it too: a record's ``Content-Length``
    header must never reach the wire."""
    with pytest.raises(ValueError, match="forward"):
        sink_for(FakeServer(), forward_headers=("traceparent", name))


@pytest.mark.parametrize("name", ["host", "Content-Length", "transfer-encoding", "connection"])
def test_a_static_framing_header_is_refused(name: str) -> None:
    """Static headers may not frame the request either."""
    with pytest.raises(ValueError, match=name):
        sink_for(FakeServer(), headers={name: "x"})


async def test_a_static_header_replaces_a_default_of_any_case(server: FakeServer) -> None:
    """``user-agent`` replaces our ``User-Agent``: one header on the wire, never two."""
    async with sink_for(server, headers={"user-agent": "mine/1.0"}) as api:
        await api.send(Record())

    assert ["mine/1.0"] == server.request.headers.get_list("User-Agent")


async def test_a_forwarded_header_replaces_a_static_one_of_any_case(server: FakeServer) -> None:
    """The record's own ``x-tenant`` wins over the static ``X-Tenant``, and only one is sent."""
    async with sink_for(
        server, headers={"X-Tenant": "default"}, forward_headers=("x-tenant",)
    ) as api:
        await api.send(Record(headers=[("x-tenant", b"acme")]))
        await api.send(Record())

    assert [["acme"], ["default"]] == [r.headers.get_list("X-Tenant") for r in server.requests]


async def test_an_invalid_forwarded_header_rejects_the_record(server: FakeServer) -> None:
    """A forwarded header with a line break is the record's fault, never a crash or a retry."""
    async with sink_for(server, forward_headers=("x-tenant",)) as api:
        with pytest.raises(InvalidRecordError):
            await api.send(Record(headers=[("X-Tenant", b"a\nb")]))


async def test_a_tombstone_becomes_a_delete_when_asked(server: FakeServer) -> None:
    """``tombstones=delete``: a record without a value is a DELETE to its URL, no body."""
    async with sink_for(server, url="https://space.example/{key}", tombstones="delete") as api:
        await api.send(Record(key=b"k1", value=None))
        await api.send(Record(key=b"k2", value=b"{}"))

    assert ["DELETE", "POST"] == [r.method for r in server.requests]
    assert "/k1" == server.requests[0].url.path
    assert b"" == server.requests[0].content


# Batches


def batch_of(*offsets: int, **kwargs: object) -> list[Record]:
    return [Record(offset=o, value=b'{"n": %d}' % o, **kwargs) for o in offsets]  # type: ignore[arg-type]


async def test_a_json_array_batch_embeds_values_and_names_its_span(server: FakeServer) -> None:
    """One request: a JSON array of the values as they are, and headers naming first and
    last offsets, so the API can tell a redelivered batch by its key."""
    async with sink_for(server, batch_format="json-array") as api:
        await api.send(batch_of(10, 11, 12))

    request = server.request
    assert b'[{"n": 10},{"n": 11},{"n": 12}]' == request.content
    assert "application/json" == request.headers["Content-Type"]
    assert "orders/3/10-12" == request.headers["Idempotency-Key"]
    assert "10" == request.headers["X-Kafka-Offset"]
    assert "12" == request.headers["X-Kafka-Last-Offset"]
    assert "3" == request.headers["X-Batch-Size"]


async def test_an_ndjson_batch_has_one_value_per_line(server: FakeServer) -> None:
    """NDJSON: newline-delimited values, with a tombstone as ``null``."""
    records = [*batch_of(1), Record(offset=2, value=None)]

    async with sink_for(server, batch_format="ndjson") as api:
        await api.send(records)

    assert b'{"n": 1}\nnull\n' == server.request.content
    assert "application/x-ndjson" == server.request.headers["Content-Type"]


async def test_a_value_with_a_line_break_cannot_be_framed_as_ndjson(server: FakeServer) -> None:
    """NDJSON cannot carry a value holding a newline: the batch is invalid, never mangled."""
    records = [Record(offset=1, value=b'{"a":\n1}')]

    async with sink_for(server, batch_format="ndjson") as api:
        with pytest.raises(InvalidRecordError):
            await api.send(records)


# The real client


async def test_the_aiohttp_client_delivers_and_says_connection_for_a_refused_one() -> None:
    """Over real HTTP the default client delivers; with nobody listening the failure is a
    ``connection`` error, not a timeout."""
    from pipeline.dev.broker import free_port  # noqa: PLC0415
    from pipeline.dev.stub_api import StubConfig, StubServer  # noqa: PLC0415
    from pipeline.http_client import AiohttpClient  # noqa: PLC0415

    async with StubServer(StubConfig(latency_ms=0)) as stub:
        async with HttpSink(HttpSinkConfig(stub.url), AiohttpClient(Timeouts(), 4)) as api:
            await api.send(Record())
        assert 1 == stub.stats().unique
    nobody = f"http://127.0.0.1:{free_port()}/items"
    async with HttpSink(HttpSinkConfig(nobody), AiohttpClient(Timeouts(), 4)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())
    assert "connection" == raised.value.reason


async def test_the_aiohttp_client_times_out_as_a_timeout() -> None:
    """An API slower than the read timeout is a ``timeout``, retried."""
    from pipeline.dev.stub_api import StubConfig, StubServer  # noqa: PLC0415
    from pipeline.http_client import AiohttpClient  # noqa: PLC0415

    async with StubServer(StubConfig(latency_ms=2_000)) as stub:
        client = AiohttpClient(Timeouts(connect=1, read=0.2), 4)
        async with HttpSink(HttpSinkConfig(stub.url), client) as api:
            with pytest.raises(RetryableSendError) as raised:
                await api.send(Record())
    assert "timeout" == raised.value.reason


async def test_an_unexpected_failure_is_retried_a_few_times_only() -> None:
    """Something nobody classified (a bug) is UnexpectedSendError: retryable, but with its own
    attempt limit, so it ends as a failure of the record instead of a retry loop."""
    from pipeline.errors import UnexpectedSendError  # noqa: PLC0415
    from pipeline.retry import Backoff  # noqa: PLC0415

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug")

    error = await raised_by(broken, UnexpectedSendError)

    backoff = Backoff()
    assert backoff.retry_delay(error, 1) is not None
    assert backoff.retry_delay(error, error.max_attempts) is None


# Secrets never leave the sink in what the API answered


def echoing(status: int = 422) -> Handler:
    """An API that echoes our request's Authorization, API key and URL in its error body."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen = {
            "authorization": request.headers.get("authorization"),
            "x-api-key": request.headers.get("x-api-key"),
            "url": str(request.url),
        }
        return httpx.Response(status, json={"error": "unwanted", "request": seen})

    return answer


class StaticTokens:
    """A token source that hands out the token it was given."""

    def __init__(self, token: str) -> None:
        self.value = token

    async def token(self) -> str:
        return self.value

    def invalidate(self, token: str) -> None:
        pass


@pytest.mark.parametrize(
    ("config", "secrets"),
    [
        ({"token": "t0ken-abc"}, ["t0ken-abc"]),
        ({"headers": {"X-Api-Key": "key-123"}}, ["key-123"]),
        ({"headers": {"Authorization": "Basic dXNlcjpwYTU1"}}, ["dXNlcjpwYTU1"]),
        ({"url": URL + "?api_key=qk-456&tenant=acme"}, ["qk-456"]),
    ],
    ids=["bearer", "api-key-header", "basic", "query-key"],
)
async def test_an_error_body_echoing_our_credentials_is_scrubbed(
    config: dict[str, object], secrets: list[str]
) -> None:
    """What the API echoes of our ``Authorization``, a static API key or a signed URL is masked
    in the rejection's body, which goes to the halt log and the dead letter's x-error-body."""
    error = await raised_with(echoing(), RejectedError, **config)

    for secret in secrets:
        assert secret not in error.body
    assert "********" in error.body
    assert "unwanted" in error.body


async def test_an_echoed_oauth2_token_is_scrubbed() -> None:
    """The OAuth2 token of the request is known only then: it is masked too."""
    client = HttpxClient(httpx.MockTransport(echoing()), Timeouts())
    async with HttpSink(HttpSinkConfig(URL), client, auth=StaticTokens("dyn-t0ken")) as api:
        with pytest.raises(RejectedError) as raised:
            await api.send(Record())

    assert "dyn-t0ken" not in raised.value.body
    assert "Bearer ********" in raised.value.body


async def test_a_secret_cut_by_the_end_of_the_excerpt_is_masked_too() -> None:
    """The body excerpt stops at 1 KiB; a token cut there must not show its first half."""
    token = "abcdefghijklmnop"

    def long_echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text="x" * 1004 + request.headers["authorization"])

    error = await raised_with(long_echo, RejectedError, token=token)

    assert "abcdefgh" not in error.body
    assert error.body.endswith("********")


async def raised_with(handler: Handler, error_type: type[E], **config: object) -> E:
    """The ``error_type`` that sending one record to ``handler`` raises, configured so."""
    async with sink_for(handler, **config) as api:
        with pytest.raises(error_type) as raised:
            await api.send(Record())
    return raised.value


# Compressed request bodies


def decompressed(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    return zstd.decompress(body)


def realistic_batch(count: int) -> list[Record]:
    """Records like a Space API receives: JSON events, similar in shape, different in values."""
    rng = random.Random(7)
    kinds = ["created", "updated", "deleted"]
    records = []
    for offset in range(count):
        event = {
            "id": f"evt-{offset:08d}",
            "space": f"space-{rng.randint(1, 50)}",
            "type": rng.choice(kinds),
            "at": f"2026-12-05T21:{offset % 60:02d}:{rng.randint(0, 59):02d}Z",
            "payload": {
                "temperature": round(rng.uniform(-20, 40), 2),
                "humidity": rng.randint(0, 100),
            },
        }
        records.append(Record(offset=offset, value=json.dumps(event).encode()))
    return records


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_a_compressed_body_says_so_and_decompresses_to_the_value(
    server: FakeServer, encoding: str
) -> None:
    """``compression``: the body is compressed and ``Content-Encoding`` names how."""
    value = b'{"id": 7, "note": "' + b"compress me " * 20 + b'"}'

    async with sink_for(server, compression=encoding) as api:
        await api.send(Record(value=value))

    assert encoding == server.request.headers["Content-Encoding"]
    assert value == decompressed(encoding, server.request.content)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_a_json_batch_shrinks_several_fold(server: FakeServer, encoding: str) -> None:
    """A batch of 200 realistic JSON events goes out at least 4 times smaller, and whole."""
    records = realistic_batch(200)

    async with sink_for(server, compression=encoding, batch_format="json-array") as api:
        await api.send(records)

    sent = server.request.content
    original = decompressed(encoding, sent)
    assert [json.loads(r.value) for r in records] == json.loads(original)  # type: ignore[arg-type]
    assert len(original) / len(sent) >= 4, f"{len(original)} -> {len(sent)} bytes"


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_a_big_batch_is_compressed_whole(server: FakeServer, encoding: str) -> None:
    """A batch big enough to be compressed off the event loop arrives whole too."""
    records = realistic_batch(5000)

    async with sink_for(server, compression=encoding, batch_format="ndjson") as api:
        await api.send(records)

    lines = decompressed(encoding, server.request.content).splitlines()
    assert [r.value for r in records] == lines


async def test_empty_bodies_and_deletes_are_not_compressed(server: FakeServer) -> None:
    """Nothing to compress: no ``Content-Encoding`` for an empty body or a DELETE."""
    async with sink_for(server, url="https://space.example/{key}", compression="gzip") as api:
        await api.send(Record(value=None))
    async with sink_for(
        server, url="https://space.example/{key}", compression="zstd", tombstones="delete"
    ) as api:
        await api.send(Record(value=None))

    assert [("POST", b""), ("DELETE", b"")] == [(r.method, r.content) for r in server.requests]
    assert all("Content-Encoding" not in r.headers for r in server.requests)


async def test_without_compression_the_body_goes_as_it_is(
    api: HttpSink, server: FakeServer
) -> None:
    """The default sends the value unchanged, with no ``Content-Encoding``."""
    await api.send(Record(value=b'{"id": 7}'))

    assert b'{"id": 7}' == server.request.content
    assert "Content-Encoding" not in server.request.headers


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_both_clients_send_the_compressed_body_over_the_wire(
    client: str, encoding: str
) -> None:
    """A raw server sees the header and a body that decompresses to the value, whichever
    client the sink uses."""
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    value = b'{"greeting": "' + b"hello " * 50 + b'"}'
    async with raw_server(handler) as base:
        http = LeanClient(Timeouts(), 4) if client == "lean" else AiohttpClient(Timeouts(), 4)
        config = HttpSinkConfig(f"{base}/items", compression=encoding)  # type: ignore[arg-type]
        async with HttpSink(config, http) as api:
            await api.send(Record(value=value))
            await api.send(Record(offset=43, value=value))

    assert 2 == len(seen)
    for head, body in seen:
        assert f"content-encoding: {encoding}".encode() in head.lower()
        assert value == decompressed(encoding, body)


async def test_the_stub_api_takes_compressed_batches() -> None:
    """The reference receiver decodes both encodings and counts every record of a batch."""
    async with StubServer(StubConfig(latency_ms=0)) as stub:
        for encoding, first in (("gzip", 0), ("zstd", 100)):
            records = [Record(offset=first + r.offset, value=r.value) for r in realistic_batch(100)]
            config = HttpSinkConfig(stub.url, compression=encoding, batch_format="json-array")  # type: ignore[arg-type]
            async with HttpSink(config, LeanClient(Timeouts(), 2)) as api:
                await api.send(records)
        stats = stub.stats()

    assert (200, 0) == (stats.records, stats.header_mismatches)
