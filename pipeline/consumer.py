"""The Kafka side: where records come from, where offsets go, and how the group moves partitions.

:class:`KafkaSource` wraps an aiokafka consumer configured for commit-after-delivery: auto-commit
off (aiokafka would commit the fetch position, i.e. records not yet delivered), new groups start
from the earliest record unless told otherwise, ``read_committed`` by default so records of
aborted transactions are never forwarded. Rebalance callbacks go to a :class:`RebalanceListener`
(the stage), which drains and commits before partitions move.

A few things aiokafka offers only privately are reached here, each with its reason, so no other
module touches aiokafka's internals: the committed offsets of many partitions in one request, the
fetch position without waiting, and closing what a ``stop()`` cut short by a deadline left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    OffsetAndMetadata,
    TopicPartition,
)
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from pipeline.errors import KafkaStartupError
from pipeline.retry import Backoff
from pipeline.summary import Repeats

log = structlog.get_logger("pipeline.consumer")

# How long one poll waits for records; the fetch loop checks nothing else between polls, so this
# only bounds how soon an idle loop notices nothing.
POLL_TIMEOUT_MS = 100
# A partition no topic has: polling for it alone keeps the consumer alive and takes nothing.
_NOTHING = TopicPartition("", -1)
# Waiting for Kafka at start: the delay between attempts to reach the brokers, a line for each of
# the first few attempts and then one now and then, and a line now and then while a join waits.
STARTUP_BACKOFF = Backoff(initial=0.5, maximum=5.0)
STARTUP_LINES_IN_FULL = 3
STARTUP_LOG_INTERVAL_S = 30.0
JOIN_LOG_INTERVAL_S = 5.0


class Committed(NamedTuple):
    """A committed offset (the next record to read) and the note kept with it."""

    offset: int | None
    metadata: str = ""


class RebalanceListener(Protocol):
    """Told by the group when partitions move; aiokafka awaits both while the group waits."""

    async def on_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        """Partitions are about to move away: drain and commit them."""
        ...

    async def on_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        """Partitions arrived: start tracking them."""
        ...


class _Bridge(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:  # noqa: ANN401 - aiokafka's type
        await self._listener.on_revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:  # noqa: ANN401
        await self._listener.on_assigned(frozenset(assigned))


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every Kafka client of the stage (the consumer, the dead letters) authenticates."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL, from the CA and optional client certificate."""
        if not self.protocol.endswith("SSL"):
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            password=self.ssl_keyfile_password,
        )
        return context

    def arguments(self) -> dict[str, Any]:
        """The security arguments of an aiokafka client."""
        return {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.sasl_mechanism or "PLAIN",
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_context": self.ssl_context(),
        }


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The consumer's configuration: the group, the topics, the limits of a fetch.

    Args:
        group_instance_id: KIP-345 static membership: a member that names itself is not
            replaced by a rebalance when it restarts within the session timeout, and leaves no
            group on a stop (aiokafka sends no LeaveGroup for it).
        startup_timeout_s: How long entering the source may wait for the brokers and the join.
        leave_timeout_s: How long leaving the group may take when the source is left without
            an explicit :meth:`KafkaSource.close`.
    """

    bootstrap_servers: str
    topics: tuple[str, ...]
    group_id: str = "space-pipeline"
    client_id: str = "space-pipeline"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int = 30_000
    max_poll_records: int = 500
    fetch_max_bytes: int = 1024 * 1024
    max_partition_fetch_bytes: int = 1024 * 1024
    fetch_max_wait_ms: int = 500
    fetch_min_bytes: int = 1
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    group_instance_id: str | None = None
    startup_timeout_s: float = 300.0
    leave_timeout_s: float = 5.0

    def consumer_arguments(self) -> dict[str, Any]:
        """What an ``AIOKafkaConsumer`` is built with: auto-commit off, security passed through."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "isolation_level": self.isolation_level,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "max_poll_records": self.max_poll_records,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "fetch_min_bytes": self.fetch_min_bytes,
            "group_instance_id": self.group_instance_id,
            **self.security.arguments(),
        }


# Builds the unstarted consumer from the options: the stage's ``source=`` seam.
ConsumerFactory = Callable[[KafkaOptions], AIOKafkaConsumer]


def build_consumer(options: KafkaOptions) -> AIOKafkaConsumer:
    """An unstarted consumer for the configured topics."""
    return AIOKafkaConsumer(**options.consumer_arguments())


class KafkaSource:
    """A started consumer subscribed to the configured topics, as an async context manager.

    Entering waits for Kafka: while the brokers cannot be reached it tries again with backoff,
    for up to ``PIPELINE_KAFKA_STARTUP_TIMEOUT_S`` (bootstrap and group join together), so a pod
    that starts before its brokers waits for them instead of crash-looping. :attr:`waiting` says
    what it waits for meanwhile, for ``/readyz``. Cancelling the entry (a stop) ends the wait at
    once and closes what was opened.

    Args:
        options: The consumer's configuration.
        listener: Told of every rebalance.
        consumer: Builds the unstarted aiokafka consumer, once per attempt (tests pass their
            own subclass).
    """

    def __init__(
        self,
        options: KafkaOptions,
        listener: RebalanceListener,
        *,
        consumer: ConsumerFactory = build_consumer,
    ) -> None:
        self._options = options
        self._listener = listener
        self._factory = consumer
        self._consumer = consumer(options)
        self._read_committed = options.isolation_level == "read_committed"
        self._closed = False
        self.started = False
        self.polling = False  # inside a poll, e.g. waiting out a rebalance
        self.waiting: str | None = None  # what the start waits for, until started

    async def __aenter__(self) -> KafkaSource:
        o = self._options
        began = time.monotonic()
        lines = Repeats(STARTUP_LOG_INTERVAL_S)
        attempt = 0
        try:
            with _BootstrapErrors() as bootstrap_errors:
                async with asyncio.timeout(o.startup_timeout_s) as deadline:
                    while not await self._start(began):
                        attempt += 1
                        delay = STARTUP_BACKOFF.delay(attempt)
                        error = bootstrap_errors.last or "no broker answered"
                        bootstrap_errors.last = None  # the next attempt's own reason, if any
                        self.waiting = (
                            f"waiting for Kafka at {o.bootstrap_servers}"
                            f" (attempt {attempt}): {error}"
                        )
                        held_back = 0 if attempt <= STARTUP_LINES_IN_FULL else lines.note(())
                        if held_back is not None:
                            log.warning(
                                "consumer.kafka_unreachable",
                                brokers=o.bootstrap_servers,
                                attempt=attempt,
                                waited_s=round(time.monotonic() - began, 1),
                                retry_in_s=round(delay, 2),
                                error=error,
                                attempts_not_logged=held_back,
                            )
                        await asyncio.sleep(delay)
                        self._consumer = self._factory(o)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise KafkaStartupError(
                f"not started within PIPELINE_KAFKA_STARTUP_TIMEOUT_S={o.startup_timeout_s:g}"
                f"s, still {self.waiting}"
            ) from None
        self.waiting = None
        self.started = True
        if attempt:
            log.info(
                "consumer.kafka_reached",
                brokers=o.bootstrap_servers,
                attempts=attempt + 1,
                waited_s=round(time.monotonic() - began, 1),
            )
        return self

    async def _start(self, began: float) -> bool:
        """One attempt: bootstrap, then join; ``False`` when no broker could be reached.

        aiokafka itself waits out everything after the bootstrap (finding the coordinator, a
        rebalance); only a failed bootstrap ends its ``start()``, and leaves a consumer that
        cannot be started again.
        """
        o = self._options
        consumer = self._consumer
        self.waiting = f"connecting to Kafka at {o.bootstrap_servers}"
        consumer.subscribe(list(o.topics), listener=_Bridge(self._listener))
        reached = True
        async with asyncio.TaskGroup() as tasks:
            report = tasks.create_task(self._report_waiting(consumer, began))
            try:
                await consumer.start()
            except KafkaConnectionError:
                reached = False
            except BaseException:
                await _stop(consumer, timeout=1.0)
                raise
            finally:
                report.cancel()
        if not reached:
            await _stop(consumer, timeout=1.0)
        return reached

    async def _report_waiting(self, consumer: AIOKafkaConsumer, began: float) -> None:
        """Say now and then that the start still waits, and for what (readiness says it too)."""
        o = self._options
        while True:
            await asyncio.sleep(JOIN_LOG_INTERVAL_S)
            joining = consumer._coordinator is not None  # past the bootstrap
            if joining:
                self.waiting = f"joining consumer group {o.group_id} at {o.bootstrap_servers}"
            log.info(
                "consumer.waiting",
                on="group join" if joining else "brokers",
                brokers=o.bootstrap_servers,
                group=o.group_id,
                waited_s=round(time.monotonic() - began, 1),
            )

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(timeout=self._options.leave_timeout_s)

    # Records

    async def poll(
        self, max_records: int, partitions: Collection[TopicPartition]
    ) -> Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Records of ``partitions`` fetched since the last poll, waiting a moment for some.

        Only the partitions named are taken from: the others' fetched records stay in aiokafka's
        buffer (one fetch each at most, and aiokafka fetches no more for a partition until its
        records are taken), which is how a full partition is held back without fetching the
        same records twice. With no partition named this still polls (the group needs it) but
        takes nothing.

        While the group rebalances this waits for the new assignment, for as long as that takes:
        whoever needs to stop meanwhile cancels the poll, which loses nothing (records are only
        taken from aiokafka's buffer once the wait is over, and handed over in the same step).
        """
        self.polling = True
        try:
            batch: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
            batch = await self._consumer.getmany(
                *(partitions or (_NOTHING,)), timeout_ms=POLL_TIMEOUT_MS, max_records=max_records
            )
        finally:
            self.polling = False
        return batch

    def assigned(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` belongs to the current assignment."""
        return tp in self._consumer.assignment()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` again from ``offset`` (ignored once the partition has moved away)."""
        with contextlib.suppress(IllegalStateError, AssertionError):
            self._consumer.seek(tp, offset)

    def pause(self, tp: TopicPartition) -> None:
        """Stop fetching ``tp``; fetched records of it are dropped by aiokafka and fetched again."""
        with contextlib.suppress(IllegalStateError, AssertionError):
            self._consumer.pause(tp)

    def resume(self, tp: TopicPartition) -> None:
        """Fetch ``tp`` again after :meth:`pause` (an operator's pause, or a halt skipped)."""
        with contextlib.suppress(IllegalStateError, AssertionError):
            self._consumer.resume(tp)

    def membership(self) -> tuple[str | None, int | None]:
        """The member id the group gave us, and its generation, while we are a member."""
        coordinator = self._consumer._coordinator
        if coordinator is None:
            return None, None
        member: str | None = coordinator.member_id or None
        generation: int | None = coordinator.generation
        return member, generation if generation is not None and generation >= 0 else None

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset the consumer hands out for ``tp``, without waiting; ``None`` if unknown.

        aiokafka's ``position()`` waits for a position to be known; the commit path needs the
        current value, read here from the partition's state.
        """
        state = self._state(tp)
        if state is None or not state.has_valid_position:
            return None
        position: int = state.position
        return position

    def end_offset(self, tp: TopicPartition) -> int | None:
        """The offset after the last record the consumer may read; ``None`` before a fetch.

        That is the last stable offset under ``read_committed`` (records of open transactions
        are not readable yet), the high watermark otherwise.
        """
        state = self._state(tp)
        if state is None:
            return None
        lso = state.lso if self._read_committed else None
        end: int | None = lso if lso is not None and lso >= 0 else state.highwater
        return end

    def _state(self, tp: TopicPartition) -> Any:  # noqa: ANN401 - aiokafka's private type
        assignment = self._consumer._subscription.subscription
        if assignment is None or assignment.assignment is None or not self.assigned(tp):
            return None
        return assignment.assignment.state_value(tp)

    # Offsets

    async def committed(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, Committed]:
        """The group's committed offsets of ``tps``, with their notes, in one request.

        ``AIOKafkaConsumer.committed`` asks for one partition per request; a new assignment of many
        partitions would then wait one round trip per partition.
        """
        if not tps:
            return {}
        coordinator = self._consumer._coordinator  # one request for all
        found = await coordinator.fetch_committed_offsets(list(tps))
        result: dict[TopicPartition, Committed] = {}
        for tp in tps:
            meta = found.get(tp)
            if meta is None or meta.offset < 0:
                result[tp] = Committed(None)
            else:
                result[tp] = Committed(meta.offset, meta.metadata or "")
        return result

    async def bounds(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, range]:
        """The offsets each partition holds now, first to end (one request each way).

        Under ``read_committed`` the end is the last stable offset, as for :meth:`end_offset`.
        """
        if not tps:
            return {}
        consumer = self._consumer
        firsts, ends = await asyncio.gather(
            consumer.beginning_offsets(list(tps)), consumer.end_offsets(list(tps))
        )
        return {tp: range(firsts[tp], ends[tp]) for tp in tps}

    async def commit(self, offsets: Mapping[TopicPartition, Committed]) -> None:
        """Commit explicit offsets (never the fetch position: that may be ahead of delivery)."""
        await self._consumer.commit(
            {tp: OffsetAndMetadata(c.offset, c.metadata) for tp, c in offsets.items()}
        )

    # Leaving

    async def close(self, timeout: float) -> None:
        """Leave the group and close, within ``timeout`` seconds; idempotent.

        Leaving waits for any rebalance in progress and for the coordinator to answer. When that
        takes too long the consumer is closed anyway, so no task or connection outlives it; the
        group then notices the member is gone after its session timeout.
        """
        if self._closed:
            return
        self._closed = True
        await _stop(self._consumer, timeout)


async def _stop(consumer: AIOKafkaConsumer, timeout: float) -> None:
    """``consumer.stop()`` within ``timeout`` seconds, or closed by hand."""
    try:
        async with asyncio.timeout(timeout):
            await consumer.stop()
    except TimeoutError:
        log.warning("consumer.leave_timeout", timeout_s=timeout)
        await _force_close(consumer)
    except asyncio.CancelledError:
        if _being_cancelled():
            raise
        # aiokafka's fetcher re-raises the cancellation of a fetch it stops while that
        # waits to retry (a broker that is gone): a failed leave, not ours to propagate.
        log.warning("consumer.leave_failed", error="a fetch was cancelled")
        await _force_close(consumer)
    except KafkaError as error:
        log.warning("consumer.leave_failed", error=repr(error))
        await _force_close(consumer)


class _BootstrapErrors(logging.Filter):
    """Hold back aiokafka's line per broker per failed bootstrap; keep the last for ours.

    While the start waits for Kafka those lines would come at every attempt, past the summary
    the stage's own line keeps to; the reason they give (refused, a TLS or SASL failure) is
    then in the stage's line instead.
    """

    _LOGGER = "aiokafka"  # aiokafka.client's logger has the package's name
    _PREFIXES = ("Unable connect to", "Unable to request metadata from")

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop (and remember) a failed bootstrap connection's line; pass any other."""
        if isinstance(record.msg, str) and record.msg.startswith(self._PREFIXES):
            self.last = record.getMessage()
            return False
        return True

    def __enter__(self) -> _BootstrapErrors:
        logging.getLogger(self._LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger(self._LOGGER).removeFilter(self)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _force_close(consumer: AIOKafkaConsumer) -> None:
    """Close what an interrupted ``AIOKafkaConsumer.stop()`` did not reach.

    ``stop()`` marks the consumer closed first, so calling it again does nothing; its coordinator
    tasks, fetcher and connections must be stopped by hand.
    """
    coordinator, fetcher = consumer._coordinator, consumer._fetcher
    tasks = [
        getattr(coordinator, name, None)
        for name in ("_coordination_task", "_heartbeat_task", "_commit_refresh_task")
    ]
    # The fetcher's own tasks too, rather than its `close()`, which stops at the first
    # cancelled fetch (see `close`).
    tasks += [getattr(fetcher, "_fetch_task", None), *getattr(fetcher, "_pending_tasks", ())]
    running: list[asyncio.Task[Any]] = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    waits: list[Awaitable[Any]] = [*running]
    await asyncio.gather(*waits, return_exceptions=True)
    with contextlib.suppress(Exception):
        await consumer._client.close()
