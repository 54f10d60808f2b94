"""The result topic: the API's answer to every accepted request, as a Kafka record.

Many APIs answer something the next stage needs (an id, a receipt, a price). With
``PIPELINE_RESULT_TOPIC`` each accepted request's answer is produced there: the body as received,
cut at ``PIPELINE_RESULT_MAX_BYTES`` (``x-truncated: true`` then), keyed by the source record's
key (a batch's: its first record's), with headers naming where it came from (``x-original-*``),
the status, the request's ``idempotency-key`` and the answer's ``content-type``.

The write happens inside the lane's send, after the API accepted and before the send returns, so
the lane holds: the source offset cannot commit before Kafka acknowledged the result
(``acks=all``), and the results of one source partition are written one at a time, in source
order. A failing write is retried with backoff without calling the API again; one that can never
succeed halts the partition visibly (:class:`~pipeline.errors.ResultError`), as a dead letter
that cannot be written does. A crash between the answer and the acknowledgement redelivers the
record: the API is asked again with the same ``Idempotency-Key``, and a second result carrying
that key may follow the first.

Results are partitioned by key with the default partitioner (murmur2, as Java's): the results of
one key land in one partition of the result topic, in source order. Without a key, a result
goes to any partition, so order is kept only among keyed results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline import metrics
from pipeline.consumer import KafkaSecurity
from pipeline.errors import ResultError
from pipeline.producer import MAX_REQUEST_SIZE, RECORD_LIMIT, AckedTopic
from pipeline.records import KafkaRecord
from pipeline.retry import Backoff
from pipeline.sink import Result, Sink

DEFAULT_MAX_BYTES = 1024 * 1024
# Room left for the key, the headers and the batch's framing when a result may be larger than
# a topic holds by default (the operator raised the topic's ``max.message.bytes``).
HEADROOM = 64 * 1024


@dataclass(frozen=True, slots=True)
class ResultOptions:
    """Where results go and how they are produced.

    Args:
        topic: The result topic.
        bootstrap_servers: The brokers, as for the consumer.
        client_id: The producer's client id.
        idempotence: Produce idempotently (needs InitProducerId on the broker).
        security: How to authenticate, as for the consumer.
        max_backoff_s: The longest wait between attempts of a failed produce.
        max_bytes: The most of an answer's body a result holds.
    """

    topic: str
    bootstrap_servers: str
    client_id: str = "space-pipeline-results"
    idempotence: bool = True
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    max_backoff_s: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES


def record_limit(max_bytes: int) -> int:
    """The size a result record keeps within: Kafka's default, unless ``max_bytes`` is larger.

    A body of up to the default limit fits a topic as Kafka makes it, headers and all, by being
    cut a little more. A larger ``max_bytes`` says the topic was made to hold it.
    """
    return RECORD_LIMIT if max_bytes <= RECORD_LIMIT else max_bytes + HEADROOM


def result_record(
    result: Result, limit: int = RECORD_LIMIT
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The key, value and headers of ``result``'s record, kept within ``limit`` bytes."""
    first = result.first
    headers = [
        ("x-original-topic", first.topic.encode()),
        ("x-original-partition", str(first.partition).encode()),
        ("x-original-offset", str(first.offset).encode()),
    ]
    if result.last is not None:
        headers.append(("x-original-last-offset", str(result.last.offset).encode()))
    if result.status is not None:
        headers.append(("x-http-status", str(result.status).encode()))
    headers.append(("idempotency-key", result.idempotency_key.encode()))
    if result.content_type is not None:
        headers.append(("content-type", result.content_type.encode("latin-1", "replace")))
    body, truncated = result.body, result.truncated
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        first.key, body, [*headers, ("x-truncated", b"true")]
    )
    if size > limit:
        body, truncated = body[: max(len(body) - (size - limit), 0)], True
    if truncated:
        headers.append(("x-truncated", b"true"))
    return first.key, body, headers


class Results:
    """A producer for the result topic; an async context manager.

    Args:
        options: The topic, the connection, whether to produce idempotently.
        backoff: How long to wait between attempts of a failed produce.
        producer: The producer to write with (tests pass a fake); built from ``options``
            otherwise.
    """

    def __init__(
        self,
        options: ResultOptions,
        *,
        backoff: Backoff | None = None,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self._limit = record_limit(options.max_bytes)
        self._producer = AckedTopic(
            options.topic,
            options.bootstrap_servers,
            client_id=options.client_id,
            idempotence=options.idempotence,
            security=options.security,
            backoff=backoff or Backoff(initial=0.2, maximum=options.max_backoff_s),
            what="result",
            idempotence_setting="result_idempotence",
            topic_setting="result_topic",
            max_request_size=max(MAX_REQUEST_SIZE, self._limit + HEADROOM),
            producer=producer,
        )

    async def __aenter__(self) -> Results:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop the producer within ``timeout`` (see :meth:`AckedTopic.close`)."""
        await self._producer.close(timeout)

    async def write(self, result: Result) -> None:
        """Produce ``result`` and return once Kafka acknowledged it, retrying until it does.

        Raises :class:`~pipeline.errors.ResultError` when it can never be written: the lane
        halts at the request's first record.
        """
        first = result.first
        labels = (first.topic, str(first.partition))
        key, value, headers = result_record(result, self._limit)

        def failed(final: bool) -> None:
            metrics.RESULTS_FAILED.labels(*labels, "true" if final else "false").inc()

        try:
            await self._producer.write(
                key,
                value,
                headers,
                failed=failed,
                topic=first.topic,
                partition=first.partition,
                offset=first.offset,
            )
        except KafkaError as failure:
            msg = (
                f"accepted by the API, but its result cannot be written to"
                f" {self._producer.topic!r}: {failure!r}"
            )
            raise ResultError(msg, reason="result_failed") from failure
        metrics.RESULTS_PRODUCED.labels(*labels).inc()


class ResultWriter(Protocol):
    """Where answers go: the result topic, or a fake in tests."""

    async def write(self, result: Result) -> None:
        """Store ``result``; return only once it is stored for good."""
        ...


class ResultingSink:
    """A sink whose answers are written to the result topic before its send returns.

    The lane's send is this one: the API is called once, then the write is retried on its own
    until Kafka has it, so a record is never sent again for its result's sake.

    Args:
        sink: The sink that calls the API (or the function).
        results: Where its answers go.
    """

    def __init__(self, sink: Sink, results: ResultWriter) -> None:
        self._sink = sink
        self._results = results

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> Result | None:
        """Deliver through the sink, then write its answer (if any) to the result topic."""
        result = await self._sink.send(payload)
        if result is not None:
            await self._results.write(result)
        return result
