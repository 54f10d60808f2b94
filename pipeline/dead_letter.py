"""The dead-letter topic: where a rejected record goes, so its partition can move on.

The record keeps its key, value and headers, and gains headers saying where it came from and why
it was refused (``x-original-*``, ``x-error-*``). The lane moves on only once Kafka acknowledged
the dead letter (``acks=all``), so an offset is never committed past a record that is neither
delivered nor dead-lettered; a failed produce is retried, never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from pipeline.config import Settings, env_name
from pipeline.consumer import kafka_security
from pipeline.errors import ConfigError, RejectedError
from pipeline.records import KafkaRecord
from pipeline.retry import Backoff

log = structlog.get_logger("pipeline.dead_letter")

# The broker could not be reached: a fault of the moment, not of the settings.
UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)

# Kafka's default limit on a whole record is 1 MiB: a body excerpt must never get near it.
ERROR_BODY_BYTES = 1024


def dead_letter_headers(
    record: KafkaRecord, error: RejectedError, attempts: int
) -> list[tuple[str, bytes]]:
    """The record's own headers, then where it came from and why it was refused."""
    body = getattr(error, "body", "") or ""
    extra = {
        "x-original-topic": record.topic,
        "x-original-partition": str(record.partition),
        "x-original-offset": str(record.offset),
        "x-error-status": "" if error.status is None else str(error.status),
        "x-error-reason": error.reason,
        "x-error-body": body.encode("utf-8", "replace")[:ERROR_BODY_BYTES].decode(
            "utf-8", "ignore"
        ),
        "x-error-attempts": str(attempts),
    }
    own = [(name, value or b"") for name, value in record.headers]
    return own + [(name, value.encode()) for name, value in extra.items()]


class DeadLetters:
    """A producer for the dead-letter topic; an async context manager.

    Args:
        settings: Kafka connection and security, the topic, and whether to produce idempotently.
        backoff: How long to wait between attempts of a failed produce.
    """

    def __init__(self, settings: Settings, backoff: Backoff | None = None) -> None:
        assert settings.dead_letter_topic is not None  # noqa: S101 - checked by the settings
        self._topic = settings.dead_letter_topic
        self._backoff = backoff or Backoff(initial=0.2, maximum=settings.retry_max_backoff_s)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.kafka_client_id}-dead-letters",
            acks="all",
            enable_idempotence=settings.dead_letter_idempotence,
            **kafka_security(settings),
        )
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
        record then stays uncommitted, and its next owner meets it again.
        """
        headers = dead_letter_headers(record, error, attempts)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(
                    self._topic, value=record.value, key=record.key, headers=headers
                )
            except KafkaError as failure:
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
