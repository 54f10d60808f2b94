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

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    KafkaUnavailableError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from pipeline.config import env_name
from pipeline.consumer import KafkaSecurity
from pipeline.errors import ConfigError, DeadLetterError, RejectedError
from pipeline.records import KafkaRecord
from pipeline.redaction import Redactor
from pipeline.retry import Backoff

log = structlog.get_logger("pipeline.dead_letter")

# The broker could not be reached: a fault of the moment, not of the settings.
UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
# Not ``retriable`` by aiokafka's word, and yet of the moment: worth another attempt.
TRANSIENT = (KafkaTimeoutError, KafkaUnavailableError)

# Masks what looks secret in a URL, when no secrets are known.
URLS_ONLY = Redactor()
# At most this much of the API's answer goes into ``x-error-body``.
ERROR_BODY_BYTES = 1024
# Kafka's default limit on a record batch (``max.message.bytes``): what a topic holds unless
# configured otherwise, so the size a dead letter should keep within.
RECORD_LIMIT = 1_048_588
# What the producer sends at most: a record of ``RECORD_LIMIT`` plus the added headers and
# framing (its default, 1 MiB, refuses a full-size record once it has them).
MAX_REQUEST_SIZE = RECORD_LIMIT + 64 * 1024


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


def permanent(failure: KafkaError, producer: AIOKafkaProducer, topic: str) -> bool:
    """Whether no retry of a dead letter's produce can succeed.

    aiokafka's ``retriable`` says so for errors the broker or the client gave for good (too
    large, not authorized, ...), except a timeout, which is of the moment. A missing topic is
    reported only after metadata kept saying there is none (no auto-create).
    """
    if isinstance(failure, UnknownTopicOrPartitionError):
        return topic not in producer.client.cluster.topics()
    return not failure.retriable and not isinstance(failure, TRANSIENT)


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
        self._backoff = backoff or Backoff(initial=0.2, maximum=options.max_backoff_s)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=options.bootstrap_servers,
            client_id=options.client_id,
            acks="all",
            enable_idempotence=options.idempotence,
            max_request_size=MAX_REQUEST_SIZE,
            **options.security.arguments(),
        )
        self._redact = redact
        self._started = False

    async def __aenter__(self) -> DeadLetters:
        try:
            with _quiet_init_producer_id():
                await self._producer.start()
        except BaseException as error:
            await self._producer.stop()  # what start() opened, so nothing is left unclosed
            if problem := self._config_problem(error):
                raise problem from error
            raise
        self._started = True
        partitions = await self._producer.partitions_for(self._topic)
        if not partitions:
            await self.close()
            msg = f"the dead-letter topic {self._topic!r} does not exist"
            raise KafkaError(msg)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _config_problem(self, error: BaseException) -> ConfigError | None:
        """The setting to blame when an idempotent producer could not get its producer id.

        A broker without InitProducerId (the embedded tansu broker) or one that does not let
        us write idempotently refuses every dead letter: no restart cures that, the setting
        must change. A broker that is unreachable is no such problem.
        """
        pid = self._producer._txn_manager
        if pid is None or pid.has_pid() or not isinstance(error, KafkaError):
            return None
        if isinstance(error, UNREACHABLE):
            return None
        return ConfigError(
            [
                f"{env_name('dead_letter_idempotence')}: the broker refused an idempotent"
                f" producer (InitProducerId failed with {type(error).__name__}); set"
                f" {env_name('dead_letter_idempotence')}=false to dead-letter with acks=all"
                " only, or allow idempotent writes on the broker"
            ]
        )

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop the producer, giving up on the flush after ``timeout`` seconds.

        With the broker gone a flush waits for each unsent dead letter's request timeout (40 s
        by default): a shutdown cannot. What is still unsent then is dropped; its record was
        never committed, so its next owner meets it again. Later calls do nothing.
        """
        if not self._started:
            await self._producer.stop()  # built, never started: nothing to flush or wait for
            return
        self._started = False
        try:
            async with asyncio.timeout(timeout):
                await self._producer.stop()
        except TimeoutError:
            log.warning("dead_letter.close_timeout", timeout_s=round(timeout or 0, 3))
            await _force_stop(self._producer)
        except BaseException:
            await _force_stop(self._producer)
            raise

    async def write(self, record: KafkaRecord, error: RejectedError, attempts: int) -> None:
        """Produce the dead letter and wait for Kafka's acknowledgement, retrying until it comes.

        Cancelling (a rebalance's deadline, a shutdown) is the only way out without it: the
        record then stays uncommitted, and its next owner meets it again. A produce that can
        never succeed raises :class:`~pipeline.errors.DeadLetterError`, which halts the
        partition at the record.
        """
        headers = dead_letter_headers(record, error, attempts, redact=self._redact)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(
                    self._topic, value=record.value, key=record.key, headers=headers
                )
            except KafkaError as failure:
                if permanent(failure, self._producer, self._topic):
                    msg = (
                        f"rejected ({error.reason}), and its dead letter cannot be written to"
                        f" {self._topic!r}: {failure!r}"
                    )
                    raise DeadLetterError(
                        msg, cause=failure, status=error.status, body=error.body
                    ) from failure
                delay = self._backoff.delay(attempt)
                log.warning(
                    "dead_letter.produce_failed",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    attempt=attempt,
                    retry_in_s=round(delay, 3),
                    error=repr(failure),
                )
                await asyncio.sleep(delay)
            else:
                return


async def _force_stop(producer: AIOKafkaProducer) -> None:
    """Release what an interrupted ``AIOKafkaProducer.stop()`` did not reach.

    ``stop()`` marks the producer closed first, so calling it again does nothing: the unsent
    batches are failed (which ends the flush ``stop()`` started), then its sender task and
    connections are closed by hand.
    """
    producer._message_accumulator.fail_all(KafkaTimeoutError("the producer was closed unsent"))
    with contextlib.suppress(Exception):
        await producer._sender.close()
    with contextlib.suppress(Exception):
        await producer.client.close()


@contextlib.contextmanager
def _quiet_init_producer_id() -> Iterator[None]:
    """Drop aiokafka's own error line for a failed InitProducerId: ours says what to do."""
    logger = logging.getLogger("aiokafka.producer.sender")

    def keep(record: logging.LogRecord) -> bool:
        return "InitProducerIdRequest" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
