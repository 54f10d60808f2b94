"""The dead letter itself: what it holds, how large it may grow, and when writing it is hopeless."""

from __future__ import annotations

from types import SimpleNamespace

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
from pipeline.records import Record


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
