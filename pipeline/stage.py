"""The long-running stage: Kafka partitions in, the ordered sender out, offsets committed behind.

Lifecycle, after uvicorn's server: *startup* (API client, sender, ops endpoints, consumer),
*main loop* (fetch, hand over, commit, keep gauges fresh), *shutdown* (stop fetching, let in-flight
sends finish within the deadline, commit, leave the group). A rebalance runs the same drain and
commit for the revoked partitions before the group moves them.

The consumer never waits on the network: records go to the sender with ``try_submit``. A partition
whose buffer is full is sought back to the first record that did not fit and paused, so nothing
fetched is ever dropped; it resumes once half its buffer has drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline import metrics
from pipeline.config import Settings
from pipeline.consumer import RebalanceBridge, build_consumer
from pipeline.errors import LaneFullError, LaneHaltedError
from pipeline.health import OpsServer, Verdict
from pipeline.offsets import PartitionOffsets
from pipeline.retry import Backoff
from pipeline.sender import Lane, OrderedSender, Receipt
from pipeline.space_api import KafkaRecord, SpaceApi, SpaceApiConfig

log = structlog.get_logger("pipeline.stage")

HOUSEKEEPING_INTERVAL_S = 1.0
POLL_TIMEOUT_MS = 100


@dataclass(eq=False)
class _Partition:
    """What the stage knows of one assigned partition, for as long as it stays assigned."""

    tp: TopicPartition
    epoch: int
    offsets: PartitionOffsets
    last_progress: float
    buffered: int = 0
    buffered_bytes: int = 0
    paused: bool = False
    halted: BaseException | None = None
    revoked: bool = False
    labels: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = (self.tp.topic, str(self.tp.partition))
        self.consumed = metrics.RECORDS_CONSUMED.labels(*self.labels)
        self.delivered = metrics.RECORDS_DELIVERED.labels(*self.labels)


def lane_partition(lane: Lane) -> TopicPartition:
    """The partition a lane belongs to: the lane itself, or the first half of ``(tp, key)``."""
    if isinstance(lane, TopicPartition):
        return lane
    tp: TopicPartition = lane[0]  # type: ignore[index]
    return tp


class Stage:
    """Run space-pipeline until :meth:`stop` is called or something fatal happens.

    Args:
        settings: The validated configuration.
        consumer_factory: Builds the (unstarted) Kafka consumer; tests may wrap it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer_factory: Callable[[Settings], AIOKafkaConsumer] = build_consumer,
    ) -> None:
        self._settings = settings
        self._consumer_factory = consumer_factory
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._stopping = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._joined = False
        self._epoch = 0
        self._stalled: list[str] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._sender: OrderedSender[KafkaRecord] | None = None
        self.ops_port: int | None = None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask for a graceful stop: no more fetching, drain, commit, leave the group."""
        if not self._stopping.is_set():
            log.info("stage.stopping")
            self._stopping.set()

    # Lifecycle

    async def run(self) -> None:
        """Start everything, run until stopped, then shut down within the deadline."""
        s = self._settings
        async with AsyncExitStack() as stack:
            api = await stack.enter_async_context(SpaceApi(self._api_config()))
            self._sender = await stack.enter_async_context(
                OrderedSender(
                    api.send,
                    max_in_flight=s.max_in_flight,
                    lane_capacity=s.partition_buffer_records,
                    lane_bytes=s.partition_buffer_bytes,
                    backoff=Backoff(
                        initial=s.retry_initial_backoff_s,
                        maximum=s.retry_max_backoff_s,
                        retry_after_max=s.retry_after_max_s,
                    ),
                    halt_on_rejection=True,
                    on_retry=self._on_retry,
                )
            )
            ops = await stack.enter_async_context(
                OpsServer(s.metrics_host, s.metrics_port, live=self.live, ready=self.ready)
            )
            self.ops_port = ops.port
            self._consumer = self._consumer_factory(s)
            stack.push_async_callback(self._consumer.stop)  # idempotent: a no-op after shutdown
            self._consumer.subscribe(
                list(s.kafka_topics),
                listener=RebalanceBridge(revoked=self._on_revoked, assigned=self._on_assigned),
            )
            await self._consumer.start()
            log.info("stage.started", topics=list(s.kafka_topics), group=s.kafka_group_id)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._consume())
                    tasks.create_task(self._commit_periodically())
                    tasks.create_task(self._housekeep())
            finally:
                await self._shutdown()

    async def _shutdown(self) -> None:
        """Drain in-flight sends, commit, leave the group: all within the shutdown timeout."""
        assert self._consumer is not None  # noqa: S101 - set before the main loop
        assert self._sender is not None  # noqa: S101
        deadline = time.monotonic() + self._settings.shutdown_timeout_s
        parts = list(self._partitions.values())
        lanes = self._sender.lanes()
        discarded = self._sender.discard_queued(lanes)
        # Keep a quarter of the budget for the final commit and for leaving the group.
        drained = await self._sender.drain(timeout=self._settings.shutdown_timeout_s * 0.75)
        await self._commit(parts, timeout=max(deadline - time.monotonic(), 0.1))
        cancelled = self._sender.cancel(self._sender.lanes())
        for part in parts:
            part.revoked = True
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self._consumer.stop()
        except TimeoutError:
            log.warning("stage.leave_group_timeout")
        log.info(
            "stage.stopped",
            drained=drained,
            discarded_unsent=discarded,
            cancelled_in_flight=cancelled,
            committed={f"{p.tp.topic}/{p.tp.partition}": p.offsets.committed for p in parts},
        )

    # Fetching and handing over

    async def _consume(self) -> None:
        assert self._consumer is not None  # noqa: S101
        consumer, max_records = self._consumer, self._settings.kafka_max_poll_records
        while not self._stopping.is_set():
            batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=max_records)
            for tp, records in batch.items():
                part = self._partitions.get(tp)
                if part is not None:
                    self._hand_over(part, records)

    def _hand_over(self, part: _Partition, records: Iterable[KafkaRecord]) -> None:
        assert self._consumer is not None  # noqa: S101
        assert self._sender is not None  # noqa: S101
        s = self._settings
        by_key = s.ordering == "key"
        now = time.monotonic()
        for record in records:
            nbytes = len(record.value or b"")
            full = part.buffered and (
                part.buffered >= s.partition_buffer_records
                or part.buffered_bytes + nbytes > s.partition_buffer_bytes
            )
            lane = (part.tp, record.key) if by_key else part.tp
            receipt = None
            if not (part.halted or part.paused or full):
                try:
                    receipt = self._sender.try_submit(record, lane, nbytes=nbytes)
                except (LaneFullError, LaneHaltedError):
                    receipt = None
            if receipt is None:
                # Fetch it again later: nothing fetched is ever dropped.
                self._consumer.seek(part.tp, record.offset)
                self._pause(part)
                return
            part.offsets.track(record.offset, timestamp=record.timestamp / 1000, received=now)
            part.buffered += 1
            part.buffered_bytes += nbytes
            part.consumed.inc()
            receipt.add_done_callback(partial(self._on_done, part, record.timestamp, nbytes))

    def _on_done(
        self, part: _Partition, timestamp_ms: int, nbytes: int, receipt: Receipt[KafkaRecord]
    ) -> None:
        part.buffered -= 1
        part.buffered_bytes -= nbytes
        if part.revoked or receipt.cancelled():
            # Fenced: an answer for an assignment epoch that has ended. A re-assigned partition
            # is a new _Partition, so a late acceptance can never move its watermark.
            return
        error = receipt.exception()
        if error is None:
            part.offsets.accept(receipt.item.offset)
            part.delivered.inc()
            part.last_progress = time.monotonic()
            metrics.END_TO_END_LATENCY.observe(max(time.time() - timestamp_ms / 1000, 0.0))
        elif not isinstance(error, LaneHaltedError):
            self._halt(part, receipt.item, error)
            return
        s = self._settings
        if (
            part.paused
            and part.halted is None
            and part.buffered <= s.partition_buffer_records // 2
            and part.buffered_bytes <= s.partition_buffer_bytes // 2
        ):
            self._resume(part)

    def _pause(self, part: _Partition) -> None:
        if not part.paused:
            assert self._consumer is not None  # noqa: S101
            self._consumer.pause(part.tp)
            part.paused = True
            metrics.PAUSED.labels(*part.labels).set(1)

    def _resume(self, part: _Partition) -> None:
        assert self._consumer is not None  # noqa: S101
        self._consumer.resume(part.tp)
        part.paused = False
        metrics.PAUSED.labels(*part.labels).set(0)

    def _halt(self, part: _Partition, record: KafkaRecord, error: BaseException) -> None:
        """Stop a partition at a rejected record: nothing after it is sent or committed."""
        assert self._sender is not None  # noqa: S101
        part.halted = error
        self._pause(part)
        metrics.REJECTIONS.labels(*part.labels).inc()
        metrics.HALTED.labels(*part.labels).set(1)
        # With key lanes the other keys of the partition must stop too.
        self._sender.cancel(
            [lane for lane in self._sender.lanes() if lane_partition(lane) == part.tp]
        )
        log.error(
            "stage.partition_halted",
            topic=part.tp.topic,
            partition=part.tp.partition,
            epoch=part.epoch,
            offset=record.offset,
            status=getattr(error, "status", None),
            error=str(error),
            body=getattr(error, "body", None),
        )

    def _on_retry(
        self, record: KafkaRecord, lane: Lane, error: BaseException, attempt: int, delay: float
    ) -> None:
        reason = getattr(error, "reason", type(error).__name__)
        metrics.RETRIES.labels(record.topic, str(record.partition), reason).inc()
        log.warning(
            "stage.retry_scheduled",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempt=attempt,
            delay_s=round(delay, 3),
            reason=reason,
            error=str(error),
        )

    # Rebalances

    async def _on_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        assert self._consumer is not None  # noqa: S101
        metrics.REBALANCES.labels("assigned").inc()
        now = time.monotonic()
        for tp in sorted(assigned):
            if tp in self._partitions:
                continue
            self._epoch += 1
            committed = await self._committed(tp)
            self._partitions[tp] = part = _Partition(
                tp, self._epoch, PartitionOffsets(committed), last_progress=now
            )
            if committed is not None:
                metrics.COMMITTED_OFFSET.labels(*part.labels).set(committed)
            metrics.HALTED.labels(*part.labels).set(0)
            metrics.PAUSED.labels(*part.labels).set(0)
        self._joined = True
        metrics.ASSIGNED_PARTITIONS.set(len(self._partitions))
        log.info("stage.partitions_assigned", partitions=_names(assigned), epoch=self._epoch)

    async def _committed(self, tp: TopicPartition) -> int | None:
        assert self._consumer is not None  # noqa: S101
        try:
            async with asyncio.timeout(self._settings.commit_timeout_ms / 1000):
                committed: int | None = await self._consumer.committed(tp)
        except (KafkaError, TimeoutError) as error:
            log.warning("stage.committed_unknown", partition=str(tp), error=repr(error))
            return None
        return committed

    async def _on_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        """Stop feeding, let in-flight sends finish (bounded), commit, forget the partitions."""
        assert self._sender is not None  # noqa: S101
        metrics.REBALANCES.labels("revoked").inc()
        parts = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        lanes = [lane for lane in self._sender.lanes() if lane_partition(lane) in revoked]
        self._sender.discard_queued(lanes)
        drain_timeout = self._settings.rebalance_drain_timeout_ms / 1000
        drained = await self._sender.drain(lanes, timeout=drain_timeout)
        await self._commit(parts, timeout=self._settings.commit_timeout_ms / 1000)
        self._sender.cancel(lanes)
        for part in parts:
            part.revoked = True
            del self._partitions[part.tp]
            metrics.forget_partition(*part.labels)
        metrics.ASSIGNED_PARTITIONS.set(len(self._partitions))
        log.info("stage.partitions_revoked", partitions=_names(revoked), drained=drained)

    # Commits

    async def _running_after(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop is requested; ``True`` while still running."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def _commit_periodically(self) -> None:
        while await self._running_after(self._settings.commit_interval_ms / 1000):
            await self._commit(
                list(self._partitions.values()), timeout=self._settings.commit_timeout_ms / 1000
            )

    async def _commit(self, parts: Iterable[_Partition], *, timeout: float) -> None:
        """Commit each partition's watermark; failures are counted and left to the next round."""
        assert self._consumer is not None  # noqa: S101
        async with self._commit_lock:
            ready = {p: mark for p in parts if not p.revoked and (mark := p.offsets.ready())}
            if not ready:
                return
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await self._consumer.commit({p.tp: mark for p, mark in ready.items()})
            except (KafkaError, TimeoutError) as error:
                metrics.COMMITS.labels("failed").inc()
                log.warning("stage.commit_failed", error=repr(error), partitions=len(ready))
                return
            finally:
                metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
            metrics.COMMITS.labels("ok").inc()
            for part, mark in ready.items():
                part.offsets.committed = mark
                metrics.COMMITTED_OFFSET.labels(*part.labels).set(mark)

    # Gauges and probes

    async def _housekeep(self) -> None:
        self._refresh()
        while await self._running_after(HOUSEKEEPING_INTERVAL_S):
            self._refresh()

    def _refresh(self) -> None:
        """Update per-partition gauges and find stalled partitions, once a second."""
        assert self._consumer is not None  # noqa: S101
        assert self._sender is not None  # noqa: S101
        now, wall = time.monotonic(), time.time()
        in_flight: dict[TopicPartition, int] = {}
        for lane in self._sender.lanes():
            tp = lane_partition(lane)
            in_flight[tp] = in_flight.get(tp, 0) + self._sender.occupancy(lane)[1]
        stalled = []
        for part in self._partitions.values():
            labels = part.labels
            oldest = part.offsets.oldest
            metrics.BUFFERED.labels(*labels).set(part.buffered)
            metrics.BUFFERED_BYTES.labels(*labels).set(part.buffered_bytes)
            metrics.INFLIGHT.labels(*labels).set(in_flight.get(part.tp, 0))
            metrics.LAG_SECONDS.labels(*labels).set(wall - oldest.timestamp if oldest else 0)
            metrics.OLDEST_UNACCEPTED_AGE.labels(*labels).set(
                now - oldest.received if oldest else 0
            )
            metrics.LAST_PROGRESS.labels(*labels).set(wall - (now - part.last_progress))
            highwater = self._consumer.highwater(part.tp)
            base = part.offsets.committed
            lag = 0
            if highwater is not None and base is not None:
                lag = max(highwater - base, 0)
                metrics.LAG_RECORDS.labels(*labels).set(lag)
            if (
                part.halted is None
                and (lag or oldest)
                and now - part.last_progress > self._settings.stall_timeout_s
            ):
                stalled.append(f"{part.tp.topic}/{part.tp.partition}")
        self._stalled = stalled

    def live(self) -> Verdict:
        """``/healthz``: the loop answers (or this is never called) and no partition is stalled."""
        if self._stalled:
            return Verdict(
                ok=False,
                reason=f"no progress for {self._settings.stall_timeout_s:g}s with lag: "
                + ", ".join(self._stalled),
            )
        return Verdict(ok=True)

    def ready(self) -> Verdict:
        """``/readyz``: joined the group, and no partition halted on a rejected record."""
        if not self._joined:
            return Verdict(ok=False, reason="not yet joined the consumer group")
        halted = [
            f"{p.tp.topic}/{p.tp.partition}@{p.offsets.watermark}"
            for p in self._partitions.values()
            if p.halted is not None
        ]
        if halted:
            return Verdict(ok=False, reason="halted on a rejected record: " + ", ".join(halted))
        return Verdict(ok=True)

    def _api_config(self) -> SpaceApiConfig:
        s = self._settings
        return SpaceApiConfig(
            url=str(s.space_api_url),
            content_type=s.space_api_content_type,
            token=s.space_api_token.get_secret_value() if s.space_api_token else None,
            headers=s.space_api_headers,
            timeout=s.space_api_timeout_s,
            connect_timeout=s.space_api_connect_timeout_s,
            max_connections=s.max_in_flight,
        )


def _names(tps: Iterable[Any]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
