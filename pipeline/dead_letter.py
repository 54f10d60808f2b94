"""The dead-letter topic: where a rejected record goes, so its partition can move on.

The record keeps its key, value and headers, and gains headers saying where it came from and why
it was refused (``x-original-*``, ``x-error-*``). The lane moves on only once Kafka acknowledged
the dead letter (``acks=all``), so an offset is never committed past a record that is neither
delivered nor dead-lettered; a failed produce is retried, never skipped. A produce that can never
succeed (the dead letter is too large, the topic is gone, writing is not allowed) halts the
partition at its record instead of retrying for ever unseen (a halt is named in ``/readyz``'s
``degraded``, counted and alerted on).

A record as large as its topic holds by default still fits: the producer takes a full-size
record plus the added headers, and the error body is cut first to keep the dead letter within
that default, never the record's own bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.consumer import KafkaSecurity
from pipeline.errors import DeadLetterError, RejectedError
from pipeline.producer import RECORD_LIMIT, AckedTopic, permanent
from pipeline.records import KafkaRecord
from pipeline.redaction import Redactor
from pipeline.retry import Backoff

__all__ = [
    "RECORD_LIMIT",
    "DeadLetterOptions",
    "DeadLetters",
    "dead_letter_headers",
    "permanent",
]

# Masks what looks secret in a URL, when no secrets are known.
URLS_ONLY = Redactor()
# At most this much of the API's answer goes into ``x-error-body``.
ERROR_BODY_BYTES = 1024


def dead_letter_headers(
    record: KafkaRecord,
    error: RejectedError,
    attempts: int,
    *,
    limit: int = RECORD_LIMIT,
    redact: Redactor = URLS_ONLY,
) -> list[tuple[str, bytes]]:
    """The record's own headers, then where it came from and why it was refused.

    The refusal's body is scrubbed once more (``redact``: the secrets the settings hold, URL
    passwords and secret query values): whatever sink refused the record, a topic many can
    read must not hold a credential the API echoed. It is cut short (to nothing if need be)
    when the dead letter would otherwise grow past ``limit``: the record's own bytes are what
    the dead letter is for.
    """
    text = redact(getattr(error, "body", "") or "")
    body = text.encode("utf-8", "replace")[:ERROR_BODY_BYTES]
    extra = {
        "x-original-topic": record.topic.encode(),
        "x-original-partition": str(record.partition).encode(),
        "x-original-offset": str(record.offset).encode(),
        "x-error-status": b"" if error.status is None else str(error.status).encode(),
        "x-error-reason": error.reason.encode(),
        "x-error-body": body,
        "x-error-attempts": str(attempts).encode(),
    }
    headers = [(name, value or b"") for name, value in record.headers] + list(extra.items())
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, headers)
    if size > limit and body:
        body = body[: max(len(body) - (size - limit), 0)].decode("utf-8", "ignore").encode()
        headers[-2] = ("x-error-body", body)
    return headers


@dataclass(frozen=True, slots=True)
class DeadLetterOptions:
    """Where dead letters go and how they are produced.

    Args:
        topic: The dead-letter topic.
        bootstrap_servers: The brokers, as for the consumer.
        client_id: The producer's client id.
        idempotence: Produce idempotently (needs InitProducerId on the broker).
        security: How to authenticate, as for the consumer.
        max_backoff_s: The longest wait between attempts of a failed produce.
    """

    topic: str
    bootstrap_servers: str
    client_id: str = "space-pipeline-dead-letters"
    idempotence: bool = True
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    max_backoff_s: float = 30.0


class DeadLetters:
    """A producer for the dead-letter topic; an async context manager.

    Args:
        options: The topic, the connection, whether to produce idempotently.
        redact: Scrubs the error body (the secrets the settings hold).
        backoff: How long to wait between attempts of a failed produce.
    """

    def __init__(
        self,
        options: DeadLetterOptions,
        *,
        redact: Redactor = URLS_ONLY,
        backoff: Backoff | None = None,
    ) -> None:
        self._topic = options.topic
        self._producer = AckedTopic(
            options.topic,
            options.bootstrap_servers,
            client_id=options.client_id,
            idempotence=options.idempotence,
            security=options.security,
            backoff=backoff or Backoff(initial=0.2, maximum=options.max_backoff_s),
            what="dead-letter",
            idempotence_setting="dead_letter_idempotence",
            topic_setting="dead_letter_topic",
        )
        self._redact = redact

    async def __aenter__(self) -> DeadLetters:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop the producer within ``timeout`` (see :meth:`AckedTopic.close`)."""
        await self._producer.close(timeout)

    async def write(self, record: KafkaRecord, error: RejectedError, attempts: int) -> None:
        """Produce the dead letter and wait for Kafka's acknowledgement, retrying until it comes.

        Cancelling (a rebalance's deadline, a shutdown) is the only way out without it: the
        record then stays uncommitted, and its next owner meets it again. A produce that can
        never succeed raises :class:`~pipeline.errors.DeadLetterError`, which halts the
        partition at the record.
        """
        headers = dead_letter_headers(record, error, attempts, redact=self._redact)
        try:
            await self._producer.write(
                record.key,
                record.value,
                headers,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except KafkaError as failure:
            msg = (
                f"rejected ({error.reason}), and its dead letter cannot be written to"
                f" {self._topic!r}: {failure!r}"
            )
            raise DeadLetterError(
                msg, cause=failure, status=error.status, body=error.body
            ) from failure
