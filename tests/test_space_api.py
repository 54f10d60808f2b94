"""The Space API client: one exact POST per record, and every answer classified."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from pipeline.errors import RejectedError, RetryableSendError
from pipeline.space_api import SpaceApi, SpaceApiConfig, classify, idempotency_key
from tests.fakes import Record

URL = "https://space.example/v1/records"
TOKEN = "s3cret"

Handler = Callable[[httpx.Request], httpx.Response]


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


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def api(server: FakeServer) -> AsyncIterator[SpaceApi]:
    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as client:
        yield client


def answering(status: int, **kwargs: object) -> Handler:
    return lambda request: httpx.Response(status, **kwargs)


# The request


async def test_a_record_is_posted_to_the_url_with_its_exact_value_bytes(
    api: SpaceApi, server: FakeServer
) -> None:
    """The value goes out byte for byte, never parsed or re-encoded."""
    value = b'\x00\xff{"not": "json"\n'

    await api.send(Record(value=value))

    assert "POST" == server.request.method
    assert URL == str(server.request.url)
    assert value == server.request.content


async def test_a_record_without_a_value_is_posted_with_an_empty_body(
    api: SpaceApi, server: FakeServer
) -> None:
    """A tombstone (``value=None``) is delivered as an empty body."""
    await api.send(Record(value=None))

    assert b"" == server.request.content


async def test_the_request_names_the_record_in_its_headers(
    api: SpaceApi, server: FakeServer
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
    api: SpaceApi, server: FakeServer, header_name: str
) -> None:
    """A record's own ``content-type`` header (any case) wins over the configured default."""
    record = Record(headers=[("trace", b"abc"), (header_name, b"application/avro")])

    await api.send(record)

    assert "application/avro" == server.request.headers["Content-Type"]


async def test_the_content_type_defaults_to_the_configured_one() -> None:
    """Without a record header, the configured content type is sent."""
    server = FakeServer()
    config = SpaceApiConfig(URL, content_type="text/csv")

    async with SpaceApi(config, transport=httpx.MockTransport(server)) as api:
        await api.send(Record(headers=[("trace", b"abc")]))

    assert "text/csv" == server.request.headers["Content-Type"]


async def test_the_default_content_type_is_json(api: SpaceApi, server: FakeServer) -> None:
    """Out of the box records are declared as JSON."""
    await api.send(Record())

    assert "application/json" == server.request.headers["Content-Type"]


async def test_a_token_is_sent_as_a_bearer_authorization_with_the_static_headers() -> None:
    """``token`` becomes ``Authorization: Bearer <token>``; static headers ride along."""
    server = FakeServer()
    config = SpaceApiConfig(URL, token=TOKEN, headers={"X-Tenant": "acme", "X-Env": "prod"})

    async with SpaceApi(config, transport=httpx.MockTransport(server)) as api:
        await api.send(Record())

    headers = server.request.headers
    assert f"Bearer {TOKEN}" == headers["Authorization"]
    assert "acme" == headers["X-Tenant"]
    assert "prod" == headers["X-Env"]


async def test_without_a_token_no_authorization_is_sent(api: SpaceApi, server: FakeServer) -> None:
    """No token, no Authorization header."""
    await api.send(Record())

    assert "Authorization" not in server.request.headers


def test_the_token_is_not_in_the_config_repr() -> None:
    """A logged config never shows the secret."""
    assert TOKEN not in repr(SpaceApiConfig(URL, token=TOKEN))


# The answer


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_a_2xx_answer_accepts_the_record(status: int) -> None:
    """Any 2xx means accepted: ``send`` returns."""
    server = FakeServer(answering(status))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        await api.send(Record())

    assert 1 == len(server.requests)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(408, "408"), (425, "425"), (429, "429"), (500, "5xx"), (502, "5xx"), (503, "5xx")],
)
async def test_a_retryable_status_raises_a_retryable_send_error(status: int, reason: str) -> None:
    """408, 425, 429 and 5xx may succeed later: RetryableSendError, ``retryable`` true."""
    server = FakeServer(answering(status, text="busy"))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    error = raised.value
    assert error.retryable is True
    assert status == error.status
    assert reason == error.reason
    assert error.retry_after is None


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_is_read_from_the_answer(status: int) -> None:
    """``Retry-After: 7`` on a 429 or 503 becomes ``retry_after == 7``."""
    server = FakeServer(answering(status, headers={"Retry-After": "7"}))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    assert 7.0 == raised.value.retry_after


async def test_retry_after_as_an_http_date_is_read_from_the_answer() -> None:
    """``Retry-After: <HTTP-date>`` becomes the seconds until then."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    server = FakeServer(answering(503, headers={"Retry-After": when}))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    assert raised.value.retry_after is not None
    assert 110.0 < raised.value.retry_after <= 120.0


async def test_an_unreadable_retry_after_is_ignored() -> None:
    """A garbage Retry-After still gives a retryable error, with no delay of its own."""
    server = FakeServer(answering(429, headers={"Retry-After": "whenever"}))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    assert raised.value.retry_after is None


async def test_a_retry_after_of_non_ascii_bytes_is_ignored() -> None:
    """A Retry-After that is not a number still gives a RetryableSendError."""
    server = FakeServer(answering(503, headers=[(b"Retry-After", b"\xb2")]))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    assert raised.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
async def test_any_other_4xx_rejects_the_record_with_status_and_body_excerpt(status: int) -> None:
    """A 4xx that is not retryable is RejectedError, ``retryable`` false, with the body start."""
    body = "field 'id' is required. " * 50
    server = FakeServer(answering(status, text=body))

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(server)) as api:
        with pytest.raises(RejectedError) as raised:
            await api.send(Record())

    error = raised.value
    assert error.retryable is False
    assert status == error.status
    assert "4xx" == error.reason
    assert body[:300] == error.body


def test_classify_turns_answers_into_none_or_an_error() -> None:
    """``classify`` is the whole decision: None to accept, else the error that says what next."""
    accepted = classify(httpx.Response(204))
    retry = classify(httpx.Response(504))
    reject = classify(httpx.Response(400, text="bad"))

    assert accepted is None
    assert isinstance(retry, RetryableSendError)
    assert isinstance(reject, RejectedError)
    assert "bad" == reject.body


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

    async with SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(fail)) as api:
        with pytest.raises(RetryableSendError) as raised:
            await api.send(Record())

    error = raised.value
    assert error.retryable is True
    assert reason == error.reason
    assert error.status is None
    assert failure is error.__cause__


# Lifecycle


async def test_close_is_idempotent() -> None:
    """Closing twice, or closing and then leaving ``async with``, is fine."""
    api = SpaceApi(SpaceApiConfig(URL), transport=httpx.MockTransport(FakeServer()))

    async with api:
        await api.close()
        await api.close()
