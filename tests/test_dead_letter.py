"""The dead letter itself: what it holds (never a secret), how large it may grow, and when
writing it is hopeless."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.dead_letter import RECORD_LIMIT, dead_letter_headers, permanent
from pipeline.errors import RejectedError
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.records import Record
from pipeline.redaction import Redactor
from tests.fakes import Record as FakeRecord


@pytest.mark.parametrize(
    ("failure", "never"),
    [
        (MessageSizeTooLargeError(), True),
        (RecordTooLargeError(), True),
        (TopicAuthorizationFailedError(), True),
        (UnknownTopicOrPartitionError(), True),  # and metadata knows no such topic
        (KafkaTimeoutError(), False),
        (KafkaConnectionError(), False),
        (NotEnoughReplicasError(), False),
        (RequestTimedOutError(), False),
    ],
)
def test_a_dead_letter_produce_is_given_up_only_when_no_retry_can_succeed(failure, never):
    """aiokafka's ``retriable`` decides, except that a timeout is of the moment and a missing
    topic counts only when the metadata has no such topic."""
    producer = SimpleNamespace(client=SimpleNamespace(cluster=SimpleNamespace(topics=set)))
    assert never is permanent(failure, producer, "dlq")


def test_an_unknown_topic_that_metadata_still_lists_is_retried():
    """Kafka's "unknown topic" for a topic the metadata lists is a passing state (a leader
    moving), not a missing topic."""
    producer = SimpleNamespace(
        client=SimpleNamespace(cluster=SimpleNamespace(topics=lambda: {"dlq"}))
    )
    assert not permanent(UnknownTopicOrPartitionError(), producer, "dlq")


def test_the_error_body_is_cut_to_keep_a_full_size_record_within_the_limit_never_the_record():
    """The dead letter of a record near the limit keeps every byte of the record; the error
    body gives way, to nothing if need be."""
    error = RejectedError("no", reason="422", status=422, body="x" * 5000)
    small = Record("t", 0, 1, 0, b"k", b"v" * 100)
    near = Record("t", 0, 1, 0, b"k", b"v" * (RECORD_LIMIT - 600))
    full = Record("t", 0, 1, 0, b"k", b"v" * RECORD_LIMIT)

    def body(record: Record) -> bytes:
        return dict(dead_letter_headers(record, error, 1))["x-error-body"]

    assert 1024 == len(body(small))
    assert 0 < len(body(near)) < 1024
    assert b"" == body(full)
    headers = dead_letter_headers(near, error, 1)
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(near.key, near.value, headers)
    assert size <= RECORD_LIMIT


def x_error_body(headers: list[tuple[str, bytes]]) -> str:
    return dict(headers)["x-error-body"].decode()


def test_the_headers_say_where_the_record_came_from_and_why_it_was_refused() -> None:
    """The record's own headers come first, then ``x-original-*`` and ``x-error-*``."""
    record = FakeRecord(topic="orders", partition=3, offset=42, headers=[("trace", b"t1")])
    error = RejectedError("no", reason="4xx", status=422, body='{"error": "id missing"}')

    headers = dead_letter_headers(record, error, 2)

    assert ("trace", b"t1") == headers[0]
    named = dict(headers)
    assert b"orders" == named["x-original-topic"]
    assert b"3" == named["x-original-partition"]
    assert b"42" == named["x-original-offset"]
    assert b"422" == named["x-error-status"]
    assert b"4xx" == named["x-error-reason"]
    assert b"2" == named["x-error-attempts"]
    assert '{"error": "id missing"}' == x_error_body(headers)


async def test_a_token_the_api_echoes_never_reaches_the_dead_letter_topic() -> None:
    """An API that echoes our ``Authorization`` in its 422: the dead letter's x-error-body has
    the body with the token masked."""

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text=f"bad record, sent with {request.headers['authorization']}")

    client = HttpxClient(httpx.MockTransport(echo), Timeouts())
    async with HttpSink(HttpSinkConfig("https://space.example/v1", token="t0k3n"), client) as api:
        with pytest.raises(RejectedError) as raised:
            await api.send(FakeRecord())

    body = x_error_body(dead_letter_headers(FakeRecord(), raised.value, 1))
    assert "t0k3n" not in body
    assert "bad record, sent with ********" == body


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        ("retry at https://user:pa55@space.example/v1", "pa55"),
        ("see /v1/records?access_token=at1&page=2", "at1"),
        ("the key is s3cret-key", "s3cret-key"),
    ],
)
def test_any_error_body_is_scrubbed_of_urls_and_known_secrets(body: str, secret: str) -> None:
    """Whatever sink refused the record (a user's function too), URL passwords, secret query
    values and the secrets the settings hold are masked before the body goes to Kafka."""
    error = RejectedError("no", reason="4xx", status=400, body=body)

    headers = dead_letter_headers(FakeRecord(), error, 1, redact=Redactor.of(["s3cret-key"]))

    assert secret not in x_error_body(headers)
    assert "********" in x_error_body(headers)
