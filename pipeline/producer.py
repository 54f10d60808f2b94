"""A producer for one topic whose every write waits for Kafka: dead letters and results use it.

Both are writes a lane waits for before its offset may commit: the write is acknowledged by all
in-sync replicas (``acks=all``) or retried with backoff, never skipped. A write that can never
succeed (too large, the topic gone, writing not allowed) is raised to the caller, whose lane then
halts visibly instead of retrying for ever behind a green ``/readyz``. The topic must exist at
start; an idempotent producer the broker refuses is a setting to change, named as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

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

from pipeline.config import env_name
from pipeline.consumer import KafkaSecurity
from pipeline.errors import ConfigError
from pipeline.retry import Backoff

log = structlog.get_logger("pipeline.producer")

# The broker could not be reached: a fault of the moment, not of the settings.
UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
# Not ``retriable`` by aiokafka's word, and yet of the moment: worth another attempt.
TRANSIENT = (KafkaTimeoutError, KafkaUnavailableError)
# Kafka's default limit on a record batch (``max.message.bytes``): what a topic holds unless
# configured otherwise, so the size a written record should keep within.
RECORD_LIMIT = 1_048_588
# What the producer sends at most: a record of ``RECORD_LIMIT`` plus the added headers and
# framing (its default, 1 MiB, refuses a full-size record once it has them).
MAX_REQUEST_SIZE = RECORD_LIMIT + 64 * 1024

Headers = Sequence[tuple[str, bytes]]


def permanent(failure: KafkaError, producer: AIOKafkaProducer, topic: str) -> bool:
    """Whether no retry of a produce can succeed.

    aiokafka's ``retriable`` says so for errors the broker or the client gave for good (too
    large, not authorized, ...), except a timeout, which is of the moment. A missing topic is
    reported only after metadata kept saying there is none (no auto-create).
    """
    if isinstance(failure, UnknownTopicOrPartitionError):
        return topic not in producer.client.cluster.topics()
    return not failure.retriable and not isinstance(failure, TRANSIENT)


class AckedTopic:
    """One topic's producer (``acks=all``); start it with :meth:`start`, ``close`` idempotent.

    Args:
        topic: Where every write goes.
        bootstrap_servers: The brokers, as for the consumer.
        client_id: The producer's client id.
        idempotence: Produce idempotently (needs InitProducerId on the broker).
        security: How to authenticate, as for the consumer.
        backoff: How long to wait between attempts of a failed write.
        what: What the topic holds, for messages (``dead-letter``, ``result``).
        idempotence_setting: The setting that turns idempotence off, named when it must be.
        topic_setting: The setting that names the topic, named when Kafka does not have it.
        max_request_size: The largest request the producer sends.
        producer: The producer to write with (tests pass a fake); built from the above otherwise.
    """

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        *,
        client_id: str,
        idempotence: bool,
        security: KafkaSecurity,
        backoff: Backoff,
        what: str,
        idempotence_setting: str,
        topic_setting: str,
        max_request_size: int = MAX_REQUEST_SIZE,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.topic = topic
        self._backoff = backoff
        self._what = what
        self._events = what.replace("-", "_")  # dead_letter.produce_failed, result.close_timeout
        self._idempotence_setting = idempotence_setting
        self._topic_setting = topic_setting
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=idempotence,
            max_request_size=max_request_size,
            **security.arguments(),
        )
        self._started = False

    async def start(self) -> None:
        """Connect, and make sure the topic exists: a missing one is an error at start."""
        try:
            with _quiet_init_producer_id():
                await self._producer.start()
        except BaseException as error:
            await self._producer.stop()  # what start() opened, so nothing is left unclosed
            if problem := self._config_problem(error):
                raise problem from error
            raise
        self._started = True
        partitions = await self._producer.partitions_for(self.topic)
        if not partitions:  # the setting names a topic this Kafka does not have
            await self.close()
            setting = env_name(self._topic_setting)
            raise ConfigError(
                [
                    f"{setting}: the topic {self.topic!r} does not exist: create it, or name one"
                    " that does"
                ]
            )

    def _config_problem(self, error: BaseException) -> ConfigError | None:
        """The setting to blame when an idempotent producer could not get its producer id.

        A broker without InitProducerId (the embedded tansu broker) or one that does not let
        us write idempotently refuses every write: no restart cures that, the setting must
        change. A broker that is unreachable is no such problem.
        """
        pid = self._producer._txn_manager
        if pid is None or pid.has_pid() or not isinstance(error, KafkaError):
            return None
        if isinstance(error, UNREACHABLE):
            return None
        setting = env_name(self._idempotence_setting)
        return ConfigError(
            [
                f"{setting}: the broker refused an idempotent producer (InitProducerId failed"
                f" with {type(error).__name__}); set {setting}=false to write the {self._what}"
                " topic with acks=all only, or allow idempotent writes on the broker"
            ]
        )

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop the producer, giving up on the flush after ``timeout`` seconds.

        With the broker gone a flush waits for each unsent record's request timeout (40 s by
        default): a shutdown cannot. What is still unsent then is dropped; its source record
        was never committed, so its next owner meets it again. Later calls do nothing.
        """
        if not self._started:
            await self._producer.stop()  # built, never started: nothing to flush or wait for
            return
        self._started = False
        try:
            async with asyncio.timeout(timeout):
                await self._producer.stop()
        except TimeoutError:
            log.warning(f"{self._events}.close_timeout", timeout_s=round(timeout or 0, 3))
            await _force_stop(self._producer)
        except BaseException:
            await _force_stop(self._producer)
            raise

    async def write(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        failed: Callable[[bool], None] | None = None,
        **where: object,
    ) -> None:
        """Produce one record and wait for Kafka's acknowledgement, retrying until it comes.

        Cancelling (a rebalance's deadline, a shutdown) is the only way out without it. A
        produce that can never succeed raises its :class:`~aiokafka.errors.KafkaError`; every
        other failure is logged (with ``where``: the source record) and retried. ``failed`` is
        told of each failed attempt, and whether it was final.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(
                    self.topic, value=value, key=key, headers=list(headers)
                )
            except KafkaError as failure:
                final = permanent(failure, self._producer, self.topic)
                if failed is not None:
                    failed(final)
                if final:
                    raise
                delay = self._backoff.delay(attempt)
                log.warning(
                    f"{self._events}.produce_failed",
                    **where,
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
