"""The long-running stage: it runs the lifecycle of the rooms a record passes through.

A record goes ``consumer`` (poll) -> ``partition`` (tracked, bounded, paused when full) ->
``sender`` (its lane, in order, retried) -> the Space API -> back to ``partition`` (watermark) ->
``commit``. :mod:`pipeline.wiring` builds those; this module runs them, after uvicorn's server
(``Config.load()`` apart from ``Server``): *startup* (API
client, sender, ops endpoints, consumer), *main loop* (poll and hand over, commit, keep gauges and
probes fresh), *shutdown* (stop polling at once, let requests on the wire finish, commit, leave
the group), all within ``PIPELINE_SHUTDOWN_TIMEOUT_S``. A rebalance runs the same drain and commit
for the revoked partitions, within its share of the rebalance timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from pipeline import metrics
from pipeline.admin import (
    GateStatus,
    GroupStatus,
    HaltStatus,
    PartitionRef,
    PartitionStatus,
    RecordRef,
    SkipDone,
    StatusReport,
)
from pipeline.config import Settings
from pipeline.consumer import Committed, ConsumerFactory, KafkaSource, build_consumer
from pipeline.errors import AdminRefusedError
from pipeline.health import Verdict
from pipeline.partition import Partition, lane_partition, names
from pipeline.policy import format_statuses
from pipeline.progress import Progress
from pipeline.records import KafkaRecord
from pipeline.redaction import mask_url
from pipeline.sender import Lane
from pipeline.summary import Repeats
from pipeline.wiring import wire

log = structlog.get_logger("pipeline.stage")

HOUSEKEEPING_INTERVAL_S = 1.0
RETRY_LOG_INTERVAL_S = 10.0
# The shutdown budget's steps, each as the point of the budget it must be done by: requests on
# the wire, the commit, the sender's blocking calls, the dead-letter producer's flush; leaving
# the group gets the rest. A step that finishes early leaves its time to the next ones.
DRAIN_UNTIL, COMMIT_UNTIL, SENDER_UNTIL, DEAD_LETTERS_UNTIL = 0.5, 0.7, 0.75, 0.85
_T = TypeVar("_T")
# How long an assignment waits for where its partitions start (for its log line only).
BOUNDS_TIMEOUT_S = 2.0


class Stage:
    """Run space-pipeline until :meth:`stop` is called or something fatal happens.

    The parts are built at once (see :func:`pipeline.wiring.wire`), so inside the running event
    loop, which the Kafka clients belong to; :meth:`run` enters them, runs them and shuts them
    down.

    Args:
        settings: The validated configuration.
        source: Builds the (unstarted) Kafka consumer; tests pass their own subclass of it.
    """

    def __init__(self, settings: Settings, *, source: ConsumerFactory = build_consumer) -> None:
        self._settings = settings
        self._stopping = asyncio.Event()
        self._joined = False
        self._joining: asyncio.Task[KafkaSource] | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._committing: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None  # while running
        self._deadline: float | None = None  # the loop's clock, set by the stop
        self._last_poll = time.monotonic()
        self._unhealthy: str | None = None
        self._retry_lines = Repeats(RETRY_LOG_INTERVAL_S)
        self._side_work: set[asyncio.Task[None]] = set()
        self._parts = wire(settings, self, source=source)

    @property
    def ops_port(self) -> int:
        """The port of ``/metrics``, ``/healthz`` and ``/readyz`` (known once running)."""
        return self._parts.ops.port

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping.is_set()

    def stop(self, *, force_hint: str | None = None) -> None:
        """Ask for a graceful stop: stop polling now, drain, commit, leave the group."""
        if self._stopping.is_set():
            return
        log.info(
            "stage.stopping",
            deadline_s=self._settings.shutdown_timeout_s,
            **({"force": force_hint} if force_hint else {}),
        )
        self._stopping.set()
        self._deadline = asyncio.get_running_loop().time() + self._settings.shutdown_timeout_s
        if self._joining is not None:
            # Waiting for Kafka or for the group may last minutes: nothing to drain yet.
            self._joining.cancel()
        if self._fetching is not None:
            # Polling may wait for a rebalance without end; a stop ends it at once. Nothing is
            # lost: records leave aiokafka's buffer only in the step that hands them over.
            self._fetching.cancel()
        if self._committing is not None:
            # A periodic commit may wait for a broker that is gone; the shutdown commits anyway.
            self._committing.cancel()
        for task in self._side_work:
            task.cancel()

    # Lifecycle

    async def run(self) -> None:
        """Start everything, run until stopped, then shut down within the deadline."""
        parts = self._parts
        async with AsyncExitStack() as stack:
            stack.push_async_exit(parts.source)  # closed even when a part before it fails
            if parts.dead_letters is not None:
                stack.push_async_exit(parts.dead_letters)  # closed even when never started
            if parts.results is not None:
                stack.push_async_exit(parts.results)
            if parts.registry is not None:
                await stack.enter_async_context(parts.registry)
            await stack.enter_async_context(parts.sink)
            await stack.enter_async_context(parts.sender)
            await stack.enter_async_context(parts.ops)
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    self._log_start(parts.ops.port)  # at once: the join may take long
                    if not await self._join(tasks, stack):
                        return
                    if parts.dead_letters is not None:
                        # It needs Kafka too: started once the consumer has waited for it.
                        await stack.enter_async_context(parts.dead_letters)
                    if parts.results is not None:
                        await stack.enter_async_context(parts.results)
                    if not self._stopping.is_set():
                        self._fetching = tasks.create_task(self._poll_and_hand_over())
                    self._committing = tasks.create_task(self._commit_periodically())
                    tasks.create_task(self._housekeep())
                    interval = self._settings.progress_interval_s
                    if interval > 0:
                        tasks.create_task(self._report_progress(interval))
            finally:
                self._tasks = None
                if parts.source.started:
                    await self._shutdown()

    async def _join(self, tasks: asyncio.TaskGroup, stack: AsyncExitStack) -> bool:
        """Wait for Kafka and join the group (rebalance callbacks come now); ``False`` if stopped.

        The wait is a task of its own so that a stop can cancel it: a SIGTERM while the brokers
        are away, or while the group rebalances, ends the stage at once.
        """
        if self._stopping.is_set():
            return False
        joining = self._joining = tasks.create_task(stack.enter_async_context(self._parts.source))
        await asyncio.wait([joining])
        self._joining = None
        if joining.cancelled():
            log.info("stage.join_abandoned", reason="stopping")
            return False
        joining.result()
        return True

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run side work (a skipped record's dead letter) in the stage's task group.

        A stop cancels what still runs; its record stays uncommitted for the next owner, as it
        does when the stage is not running (records arrive only while it is).
        """
        if self._tasks is None:
            work.close()
            return
        task = self._tasks.create_task(work)
        self._side_work.add(task)
        task.add_done_callback(self._side_work.discard)

    def _log_start(self, ops_port: int) -> None:
        s = self._settings
        log.info(
            "stage.started",
            brokers=s.kafka_bootstrap_servers,
            topics=list(s.kafka_topics),
            group=s.kafka_group_id,
            group_instance_id=s.kafka_group_instance_id,
            sink=f"function {s.sink_function}" if s.sink_function else "http",
            api_url=mask_url(s.space_api_url) if s.space_api_url else None,
            batch_max_records=s.batch_max_records,
            ordering=s.ordering,
            max_in_flight=s.max_in_flight,
            on_reject=s.on_reject,
            dead_letter_topic=s.dead_letter_topic,
            result_topic=s.result_topic,
            skip_records=len(s.skip_records),
            retry_statuses=format_statuses(s.retry_statuses),
            auth_statuses=format_statuses(s.auth_statuses),
            rate_limit_per_s=s.rate_limit_per_s or None,
            shutdown_timeout_s=s.shutdown_timeout_s,
            ops_port=ops_port,
            admin_api=s.admin_token is not None,
        )

    async def _shutdown(self) -> None:
        """Drain what is on the wire, commit, close, leave the group: all by one deadline.

        The deadline is ``PIPELINE_SHUTDOWN_TIMEOUT_S`` after the stop was asked for (or from now
        when the stage ends otherwise), and each step gets what is left of it up to its own
        point: nothing that hangs (a blocking call, a broker that is gone) holds the stage past
        it, and a step that overruns cannot take the time of those after it.
        """
        parts = self._parts
        sender, partitions = parts.sender, parts.partitions
        loop = asyncio.get_running_loop()
        budget = self._settings.shutdown_timeout_s
        deadline = self._deadline if self._deadline is not None else loop.time() + budget

        def left(until: float) -> float:
            return max(deadline - budget * (1 - until) - loop.time(), 0.0)

        started = time.monotonic()
        held = list(partitions)
        discarded = sender.discard_queued(sender.lanes())
        drained = await sender.drain(timeout=left(DRAIN_UNTIL))
        if not drained:
            self._report_abandoned(sender.lanes(), "shutdown")
        await self._parts.commits.commit(held, timeout=left(COMMIT_UNTIL))
        cancelled = sender.cancel(sender.lanes())
        partitions.forget(held)
        await sender.close(timeout=left(SENDER_UNTIL))
        if parts.dead_letters is not None:
            await parts.dead_letters.close(timeout=left(DEAD_LETTERS_UNTIL))
        if parts.results is not None:
            await parts.results.close(timeout=left(DEAD_LETTERS_UNTIL))
        await parts.source.close(timeout=left(1.0))
        metrics.flush()
        log.info(
            "stage.stopped",
            drained=drained,
            discarded_unsent=discarded,
            cancelled_in_flight=cancelled,
            abandoned_calls=sender.abandoned_calls,
            took_s=round(time.monotonic() - started, 3),
            committed={p.name: p.span.committed for p in held},
        )

    # The main loop

    async def _poll_and_hand_over(self) -> None:
        source, partitions = self._parts.source, self._parts.partitions
        max_records = self._settings.kafka_max_poll_records
        while not self._stopping.is_set():
            batch = await source.poll(max_records, partitions.ready())
            # No await from here to the next poll: what the poll took is handed over at once.
            self._last_poll = time.monotonic()
            for tp, records in batch.items():
                partitions.hand_over(tp, records)

    async def _running_after(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if a stop is requested; ``True`` while still running."""
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return True
        return False

    async def _commit_periodically(self) -> None:
        commits, partitions = self._parts.commits, self._parts.partitions
        timeout = self._settings.commit_timeout_ms / 1000
        while await self._running_after(self._settings.commit_interval_ms / 1000):
            await commits.commit(partitions, timeout=timeout)

    async def _report_progress(self, interval: float) -> None:
        """A line once the first record is done (or after ``interval``), then every interval.

        A person who just started the stage sees at once that records flow, rather than after
        the first interval (30 s by default).
        """
        partitions = self._parts.partitions
        progress = Progress()
        await self._first_done(interval)
        if self._stopping.is_set():
            return
        progress.report(partitions.done(), partitions)
        while await self._running_after(interval):
            progress.report(partitions.done(), partitions)

    async def _first_done(self, timeout: float) -> None:
        """Return once a record is done, a stop is asked for, or ``timeout`` has passed."""
        events = (self._parts.partitions.first_done, self._stopping)
        waits = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def on_retry(
        self, record: KafkaRecord, lane: Lane, error: BaseException, attempt: int, delay: float
    ) -> None:
        """Count every retry; log the first of a partition's streak, then a count every so often.

        During an outage every attempt of every partition fails: a line per attempt would bury
        the log and cost the loop time, while one line now and then still tells the story.
        """
        reason = getattr(error, "reason", type(error).__name__)
        metrics.RETRIES.labels(record.topic, str(record.partition), reason).inc()
        held_back = self._retry_lines.note((record.topic, record.partition))
        if held_back is None:
            return
        log.warning(
            "stage.retrying",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            attempt=attempt,
            delay_s=round(delay, 3),
            reason=reason,
            error=str(error),
            retries_not_logged=held_back,
        )

    # Rebalances (aiokafka awaits these while the group waits)

    async def on_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        """Track new partitions at once; then learn their committed offsets in one request.

        The line it logs says where each partition starts and how far behind that is.
        """
        partitions = self._parts.partitions
        metrics.REBALANCES.labels("assigned").inc()
        if self._stopping.is_set():
            log.info("stage.assignment_ignored", partitions=names(assigned), reason="stopping")
            return
        added = partitions.assign(assigned)
        self._joined = True
        tps = [part.tp for part in added]
        source = self._parts.source
        # Both at once, each bounded: the group waits for this callback. Where the partitions
        # start is only for the log line, so it gets a short bound of its own.
        commit_s = self._settings.commit_timeout_ms / 1000
        committed, bounds = await asyncio.gather(
            _within(commit_s, source.committed(tps)),
            _within(min(commit_s, BOUNDS_TIMEOUT_S), source.bounds(tps)),
            return_exceptions=True,
        )
        log.info(
            "stage.partitions_assigned",
            partitions=names(assigned),
            epoch=partitions.epoch,
            starting=self._starting(committed, bounds),
        )
        if isinstance(committed, BaseException):
            if not isinstance(committed, KafkaError | TimeoutError):
                raise committed
            log.warning("stage.committed_unknown", error=repr(committed))
            return
        partitions.set_committed(committed)

    def _starting(
        self,
        committed: dict[TopicPartition, Committed] | BaseException,
        bounds: dict[TopicPartition, range] | BaseException,
    ) -> dict[str, dict[str, Any]] | str:
        """Where each new partition starts, and how many records wait after that.

        A group that committed everything already delivers nothing and says ``lag: 0`` here,
        rather than leaving a person to wonder why nothing arrives.
        """
        if isinstance(committed, BaseException) or isinstance(bounds, BaseException):
            return "unknown: " + repr(committed if isinstance(committed, BaseException) else bounds)
        reset = self._settings.kafka_auto_offset_reset
        starting: dict[str, dict[str, Any]] = {}
        for tp, held in sorted(bounds.items()):
            point = committed.get(tp)
            if point is not None and point.offset is not None:
                whence, offset = "committed", point.offset
            else:
                whence, offset = reset, held.start if reset == "earliest" else held.stop
            lag = max(held.stop - offset, 0)
            starting[f"{tp.topic}/{tp.partition}"] = {"from": whence, "offset": offset, "lag": lag}
        return starting

    async def on_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        """Stop feeding, let requests on the wire finish (bounded), commit, forget the partitions.

        Whatever happens midway (a timeout, a cancelled rebalance), the partitions' state goes: a
        stale pause or a stale partition would outlive the assignment it belonged to.
        """
        metrics.REBALANCES.labels("revoked").inc()
        sender, partitions = self._parts.sender, self._parts.partitions
        parts = [part for tp in revoked if (part := partitions.get(tp)) is not None]
        lanes = partitions.lanes_of(revoked)
        drained = False
        try:
            sender.discard_queued(lanes)
            s = self._settings
            drained = await sender.drain(lanes, timeout=s.rebalance_drain_timeout_ms / 1000)
            if not drained:
                self._report_abandoned(lanes, "rebalance")
            await self._parts.commits.commit(parts, timeout=s.commit_timeout_ms / 1000)
        finally:
            sender.cancel(lanes)
            partitions.forget(parts)
            if revoked:
                log.info("stage.partitions_revoked", partitions=names(revoked), drained=drained)

    def _report_abandoned(self, lanes: Iterable[Lane], why: str) -> None:
        """Count and log requests still on the wire at a deadline.

        The API may yet process them while the next owner sends the same records again; the
        Idempotency-Key is what makes that safe.
        """
        for lane in lanes:
            for record in self._parts.sender.sending(lane):
                tp = lane_partition(lane)
                metrics.ABANDONED_REQUESTS.labels(tp.topic, str(tp.partition)).inc()
                log.warning(
                    "stage.request_abandoned",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    why=why,
                )

    # Gauges and probes

    async def _housekeep(self) -> None:
        self._refresh()
        while await self._running_after(HOUSEKEEPING_INTERVAL_S):
            self._refresh()

    def _refresh(self) -> None:
        """Update per-partition gauges and the liveness verdict, once a second."""
        source = self._parts.source
        now, wall = time.monotonic(), time.time()
        in_flight = self._in_flight()
        starved = []
        for part in self._parts.partitions:
            labels, span = part.labels, part.span
            oldest = span.oldest
            metrics.BUFFERED.labels(*labels).set(len(span))
            metrics.BUFFERED_BYTES.labels(*labels).set(span.nbytes)
            metrics.INFLIGHT.labels(*labels).set(in_flight.get(part.tp, 0))
            metrics.LAG_SECONDS.labels(*labels).set(wall - oldest.timestamp if oldest else 0)
            metrics.OLDEST_UNACCEPTED_AGE.labels(*labels).set(
                now - oldest.received if oldest else 0
            )
            if part.progressed:  # noted per record as a flag; timed here, once a second
                part.progressed, part.last_progress = False, now
            metrics.LAST_PROGRESS.labels(*labels).set(wall - (now - part.last_progress))
            end, position = source.end_offset(part.tp), source.position(part.tp)
            if end is not None and span.committed is not None:
                part.lag = max(end - span.committed, 0)
                metrics.LAG_RECORDS.labels(*labels).set(part.lag)
            waiting_in_kafka = end is not None and position is not None and end > position
            if part.halted is None and not part.paused and not span and waiting_in_kafka:
                part.starved_since = part.starved_since or now
                if now - part.starved_since > self._settings.stall_timeout_s:
                    starved.append(part.name)
            else:
                part.starved_since = None
        self._unhealthy = self._own_fault(now, starved)
        self._parts.gate.refresh_metrics()
        metrics.flush()

    def _in_flight(self) -> dict[TopicPartition, int]:
        """Records on the wire per partition."""
        sender = self._parts.sender
        in_flight: dict[TopicPartition, int] = {}
        for lane in sender.lanes():
            tp = lane_partition(lane)
            in_flight[tp] = in_flight.get(tp, 0) + sender.occupancy(lane)[1]
        return in_flight

    def _own_fault(self, now: float, starved: list[str]) -> str | None:
        """A fault of the stage itself, which a restart may cure; ``None`` when there is none.

        The Space API failing or throttling is not one: every pod would be restarted, the group
        would rebalance over and over, and nothing would get better.
        """
        if self._stopping.is_set():
            return None
        stall = self._settings.stall_timeout_s
        if self._fetching is not None and self._fetching.done():
            return "the fetch loop is not running"
        if not self._parts.source.polling and now - self._last_poll > stall:
            return f"the fetch loop has not polled for {now - self._last_poll:.0f}s"
        if starved:
            return (
                f"records wait in Kafka for {stall:g}s while nothing is held for them: "
                + ", ".join(starved)
            )
        return None

    def live(self) -> Verdict:
        """``/healthz``: the loop answers (or this is never called) and the stage itself works."""
        if self._unhealthy:
            return Verdict(ok=False, reason=self._unhealthy)
        return Verdict(ok=True)

    def ready(self) -> Verdict:
        """``/readyz``: running and a member of the group (with partitions or none), not stopping.

        A consumer serves no traffic, so Ready only tells Kubernetes that a rollout may go on and
        that this pod counts as healthy for its disruption budget. A halt follows its partition
        to the next owner and an API outage is every pod's: failing the probe for them would
        stall rollouts and block node drains while curing nothing. They are named in
        ``degraded`` (and in metrics, alerts and ``/admin/status``) instead; a refusal
        (credentials, a redirect, an untrusted certificate) in the error's own words, since
        the fix is a setting and the operator reads which one here.
        """
        if not self._joined:
            waiting = self._parts.source.waiting
            return Verdict(ok=False, reason=waiting or "not yet joined the consumer group")
        if self._stopping.is_set():
            return Verdict(ok=False, reason="stopping: draining and leaving the group")
        degraded = []
        refusal = self._parts.gate.refusal
        if refusal is not None:
            degraded.append(refusal)
        halted = [
            p.record_name(p.reported_halted)
            for p in self._parts.partitions
            if p.reported_halted is not None
        ]
        if halted:
            degraded.append("halted on a rejected record: " + ", ".join(halted))
        if degraded:
            return Verdict(ok=True, reason="; ".join(degraded), degraded=tuple(degraded))
        return Verdict(ok=True)

    # The admin API (see pipeline.admin.AdminPort)

    def status(self) -> StatusReport:
        """Each assigned partition, the API gate and the group, as of now."""
        s, parts = self._settings, self._parts
        source, gate = parts.source, parts.gate
        in_flight = self._in_flight()
        rows = tuple(
            _partition_status(part, source.position(part.tp), in_flight.get(part.tp, 0))
            for part in sorted(parts.partitions, key=lambda p: p.tp)
        )
        throttled = gate.throttled_for
        member, generation = source.membership()
        return StatusReport(
            partitions=rows,
            gate=GateStatus(
                circuit=gate.state.name.lower(),
                outage=gate.outage,
                refusal=gate.refusal,
                throttled_until=time.time() + throttled if throttled > 0 else None,
                rate_limit_per_s=s.rate_limit_per_s or None,
            ),
            group=GroupStatus(s.kafka_group_id, member, generation),
        )

    async def skip(self, record: RecordRef) -> SkipDone:
        """Let the record a partition halted at past, and let the partition go on.

        The skip is committed (in the commit's note) before the record is let past: if this
        process dies in between, whoever owns the partition next lets it past too, rather than
        halting on it again.
        """
        self._admitted()
        partitions, timeout = self._parts.partitions, self._settings.commit_timeout_ms / 1000
        part = partitions.mark_skip(TopicPartition(record.topic, record.partition), record.offset)
        await self._parts.commits.commit([part], timeout=timeout)
        dead_lettered = await partitions.let_halted_past(part)
        return SkipDone(record, dead_lettered)

    async def pause(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        """Stop fetching and sending for ``partitions``; let the wire drain; commit.

        As a revoke does: queued records are dropped, requests on the wire get
        ``PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS``, and what was not accepted is fetched and sent
        again after :meth:`resume`.
        """
        self._admitted()
        s, table, sender = self._settings, self._parts.partitions, self._parts.sender
        tps = self._chosen(partitions)
        paused = table.pause_by_operator(tps)
        lanes = table.lanes_of(tps)
        sender.discard_queued(lanes)
        if not await sender.drain(lanes, timeout=s.rebalance_drain_timeout_ms / 1000):
            self._report_abandoned(lanes, "pause")
        sender.cancel(lanes)
        table.rewind(paused)
        await self._parts.commits.commit(paused, timeout=s.commit_timeout_ms / 1000)
        return [PartitionRef(tp.topic, tp.partition) for tp in tps]

    async def resume(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        """Fetch and send again for ``partitions`` (every paused one when ``None``)."""
        self._admitted()
        table = self._parts.partitions
        tps = (
            [p.tp for p in table if p.operator_paused]
            if partitions is None
            else self._chosen(partitions)
        )
        table.resume_by_operator(tps)
        return [PartitionRef(tp.topic, tp.partition) for tp in sorted(tps)]

    def _admitted(self) -> None:
        if self._stopping.is_set():
            msg = "the stage is stopping"
            raise AdminRefusedError(msg, status=503)

    def _chosen(self, partitions: Sequence[PartitionRef] | None) -> list[TopicPartition]:
        if partitions is None:
            return sorted(part.tp for part in self._parts.partitions)
        return sorted(TopicPartition(p.topic, p.partition) for p in partitions)


async def _within(seconds: float, work: Coroutine[Any, Any, _T]) -> _T:
    """``await work``, or ``TimeoutError`` after ``seconds``."""
    async with asyncio.timeout(seconds):
        return await work


def _partition_status(part: Partition, position: int | None, in_flight: int) -> PartitionStatus:
    halted = None
    if part.halted is not None:
        error = part.halted.error
        halted = HaltStatus(
            offset=part.halted.offset,
            status=getattr(error, "status", None),
            reason=str(error),
            since=part.halted.since,
        )
    elif part.carried_halt is not None:
        reason = "a previous owner halted here; the record is being tried again"
        halted = HaltStatus(part.carried_halt, None, reason, None)
    return PartitionStatus(
        topic=part.tp.topic,
        partition=part.tp.partition,
        position=position,
        committed=part.span.committed,
        in_flight=in_flight,
        buffered=len(part.span),
        paused=part.operator_paused,
        lag=part.lag,
        halted=halted,
        held_back=part.paused,
    )
