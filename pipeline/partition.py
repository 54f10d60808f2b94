"""Per-partition state, and the hand-over of fetched records to the sender.

Each assigned partition gets a :class:`Partition`: its tracked span (what the stage holds for it,
see :mod:`pipeline.offsets`), whether it is paused (full, or by an operator) or halted, a record
an operator let past, and its assignment *epoch*. An answer for a partition that was revoked
meanwhile finds ``revoked`` set and changes nothing: a re-assigned partition is a new object, so
a late acceptance can never move its watermark.

:class:`Partitions` is the table of them. It registers partitions synchronously when they are
assigned, hands records over without ever waiting (a partition whose span is full is sought back
to the first record that did not fit and paused, so nothing fetched is dropped), and learns each
record's outcome from the sender.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from aiokafka import TopicPartition

from pipeline import metrics
from pipeline.consumer import Committed
from pipeline.errors import AdminRefusedError, DeadLetterError, LaneFullError, LaneHaltedError
from pipeline.offsets import PartitionOffsets
from pipeline.policy import DEAD_LETTERED, Skips, reached_api
from pipeline.records import KafkaRecord
from pipeline.sender import Lane, OrderedSender, Receipt

log = structlog.get_logger("pipeline.partition")


class FlowControl(Protocol):
    """What the table needs from the consumer to hold a partition back."""

    def assigned(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is in the current assignment."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` again from ``offset``."""
        ...

    def pause(self, tp: TopicPartition) -> None:
        """Stop fetching ``tp`` (a halted partition, or one an operator paused)."""
        ...

    def resume(self, tp: TopicPartition) -> None:
        """Fetch ``tp`` again after :meth:`pause`."""
        ...


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """How much a partition's tracked span may hold before the partition is paused.

    It resumes once the span is back to half of both.
    """

    records: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Done:
    """Records done, by how: a record consumed is one of these once it is no longer pending.

    What a progress line counts, so that what was consumed adds up: a dead-lettered or skipped
    record is done too, though it never reached the API.
    """

    delivered: int = 0
    dead_lettered: int = 0  # rejected by the API, then written to the dead-letter topic
    skipped: int = 0  # let past unsent: the skip list, or an operator's skip
    expired: int = 0  # older than PIPELINE_MAX_RECORD_AGE_S: never sent

    @property
    def total(self) -> int:
        """Every record done, however."""
        return self.delivered + self.dead_lettered + self.skipped + self.expired

    def __add__(self, other: Done) -> Done:
        return Done(
            self.delivered + other.delivered,
            self.dead_lettered + other.dead_lettered,
            self.skipped + other.skipped,
            self.expired + other.expired,
        )

    def __sub__(self, other: Done) -> Done:
        return Done(
            self.delivered - other.delivered,
            self.dead_lettered - other.dead_lettered,
            self.skipped - other.skipped,
            self.expired - other.expired,
        )


@dataclass(frozen=True, slots=True)
class Halt:
    """Why a partition stopped: the record it stopped at, the final error, and since when."""

    offset: int
    error: BaseException
    record: KafkaRecord | None = None  # what an operator's skip lets past
    since: float = 0.0  # Unix time


# Kept with the committed offset of a halted partition, so whoever owns it next (after a
# rebalance or a restart) reports it halted from the start: the alert must not reset.
HALT_NOTE = "space-pipeline: halted at "
# Kept the same way once an operator skipped the record a partition halted at, before the record
# is let past: a restart or a new owner in between lets it past unsent rather than halt again.
SKIP_NOTE = "space-pipeline: skipped "


def _noted(note: str, prefix: str) -> int | None:
    if note.startswith(prefix) and note[len(prefix) :].isdecimal():
        return int(note[len(prefix) :])
    return None


def halted_at(note: str) -> int | None:
    """The offset a commit note says its partition halted at, if it says so."""
    return _noted(note, HALT_NOTE)


def skipped_at(note: str) -> int | None:
    """The offset a commit note says an operator skipped, if it says so."""
    return _noted(note, SKIP_NOTE)


class Partition:
    """What the stage knows of one assigned partition, for as long as it stays assigned."""

    __slots__ = (
        "accepted",
        "carried_halt",
        "committed_note",
        "dead_lettered",
        "delivered",
        "epoch",
        "expired",
        "first_done_at",
        "halted",
        "labels",
        "lag",
        "last_done_at",
        "last_progress",
        "operator_paused",
        "paused",
        "progressed",
        "revoked",
        "skip_at",
        "skipped",
        "span",
        "starved_since",
        "tp",
    )

    def __init__(self, tp: TopicPartition, epoch: int, now: float) -> None:
        self.tp = tp
        self.epoch = epoch
        self.span = PartitionOffsets()
        self.paused = False  # held back: its span is full, or it halted
        self.operator_paused = False  # until resumed, or until it moves away
        self.skip_at: int | None = None  # an operator let this record past (here or before)
        self.halted: Halt | None = None
        self.carried_halt: int | None = None  # a previous owner halted here
        self.committed_note = ""
        self.revoked = False
        self.last_progress = now
        self.progressed = False  # accepted something since housekeeping last looked
        self.starved_since: float | None = None
        self.lag = 0  # records after the committed offset, as of the last housekeeping
        self.accepted = 0  # records delivered while this process had the partition
        self.dead_lettered = 0  # and the other ways a record is done (see Done)
        self.skipped = 0
        self.expired = 0
        # When the first and the last record were done since the progress line last looked:
        # its rate is over the time records flowed, not over the whole interval.
        self.first_done_at: float | None = None
        self.last_done_at: float | None = None
        self.labels = (tp.topic, str(tp.partition))
        self.delivered = metrics.DELIVERED.labels(*self.labels)

    def __repr__(self) -> str:
        state = "revoked" if self.revoked else "halted" if self.halted else "paused" * self.paused
        state += " operator-paused" * self.operator_paused
        return f"<Partition {self.name} epoch={self.epoch} span={len(self.span)} {state}>"

    @property
    def done(self) -> Done:
        """Records done while this process had the partition, by how."""
        return Done(self.accepted, self.dead_lettered, self.skipped, self.expired)

    @property
    def name(self) -> str:
        """``topic/partition``, as logs and probes name it."""
        return f"{self.tp.topic}/{self.tp.partition}"

    def record_name(self, offset: int) -> str:
        """``topic/partition/offset``: how logs, probes, status and the skip list name a record."""
        return f"{self.name}/{offset}"

    @property
    def reported_halted(self) -> int | None:
        """The offset this partition is reported halted at: its own halt, or one carried over."""
        return self.halted.offset if self.halted is not None else self.carried_halt

    def commit_point(self, position: int | None) -> Committed | None:
        """What to commit now, if anything.

        The watermark (see :meth:`PartitionOffsets.ready`), with a note saying whether the
        partition is halted, or an operator skipped the record it halted at: a new note is
        committed even when the offset has not moved.
        """
        halt = self.reported_halted
        note = "" if halt is None else f"{HALT_NOTE}{halt}"
        if self.skip_at is not None:
            note = f"{SKIP_NOTE}{self.skip_at}"
        mark = self.span.ready(position)
        if mark is None:
            if note == self.committed_note:
                return None
            mark = self.span.committed if self.span.committed is not None else self.span.watermark
            if mark is None:
                return None
        return Committed(mark, note)

    def note_committed(self, point: Committed) -> None:
        """Remember what the group now holds for this partition."""
        self.span.committed = point.offset
        self.committed_note = point.metadata

    def may_resume(self, limits: FlowLimits) -> bool:
        """Whether a paused partition has drained to half its limits."""
        span = self.span
        return (
            self.paused
            and self.halted is None
            and not self.operator_paused
            and len(span) <= limits.records // 2
            and span.nbytes <= limits.nbytes // 2
        )


# Builds the sender the table hands records to, given what it calls with each outcome.
SenderFactory = Callable[[Callable[[Receipt[KafkaRecord]], None]], OrderedSender[KafkaRecord]]
# Runs a coroutine as side work, in the stage's task group.
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Partitions:
    """The assigned partitions, and the path of a record from a poll to the sender.

    The table builds its own sender, passing :meth:`settled` as the sender's ``on_done``: records
    go to the sender and outcomes come back, so whichever of the two were built first would
    otherwise exist half-connected until the other was bound to it.

    Args:
        limits: The tracked-span bound of each partition.
        ordering: ``"partition"`` (one lane per partition) or ``"key"`` (one per partition and key).
        flow: Seek, pause and resume on the consumer.
        sender: Builds the sender records are handed to, given its ``on_done``.
        spawn: Runs side work (letting a skipped record past) in the stage's task group.
        skips: Records to let past unsent (see :class:`~pipeline.policy.Skips`).
    """

    def __init__(
        self,
        limits: FlowLimits,
        ordering: Literal["partition", "key"],
        flow: FlowControl,
        *,
        sender: SenderFactory,
        spawn: Spawn,
        skips: Skips | None = None,
    ) -> None:
        self._limits = limits
        self._by_key = ordering == "key"
        self._flow = flow
        self._skips = skips if skips is not None else Skips(frozenset(), None)
        self._spawn = spawn
        self._parts: dict[TopicPartition, Partition] = {}
        self._epoch = 0
        self._done_before: dict[str, Done] = {}  # by partitions no longer here
        # Set when the first record is done: the first progress line comes then.
        self.first_done = asyncio.Event()
        self.sender = sender(self.settled)

    def __iter__(self) -> Iterator[Partition]:
        return iter(list(self._parts.values()))

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, tp: TopicPartition) -> Partition | None:
        """The state of ``tp`` if it is assigned and tracked."""
        return self._parts.get(tp)

    @property
    def epoch(self) -> int:
        """The latest assignment epoch."""
        return self._epoch

    # Assignment

    def assign(self, tps: Iterable[TopicPartition]) -> list[Partition]:
        """Start tracking newly assigned partitions.

        Synchronously, before anything is awaited, so no record of theirs can arrive while they
        are unknown.
        """
        now = time.monotonic()
        added = []
        for tp in sorted(tps):
            if tp in self._parts:
                continue
            self._epoch += 1
            part = self._parts[tp] = Partition(tp, self._epoch, now)
            metrics.HALTED.labels(*part.labels).set(0)
            metrics.PAUSED.labels(*part.labels).set(0)
            metrics.OPERATOR_PAUSED.labels(*part.labels).set(0)
            added.append(part)
        metrics.ASSIGNED_PARTITIONS.set(len(self._parts))
        return added

    def set_committed(self, committed: Mapping[TopicPartition, Committed]) -> None:
        """Learn the group's committed offsets of new partitions (lag, commits, carried halts)."""
        for tp, point in committed.items():
            part = self._parts.get(tp)
            if part is None or point.offset is None or part.span.committed is not None:
                continue
            part.note_committed(point)
            metrics.COMMITTED_OFFSET.labels(*part.labels).set(point.offset)
            if skipped_at(point.metadata) == point.offset:
                part.skip_at = point.offset
                log.warning(
                    "partition.skip_carried_over",
                    record=part.record_name(point.offset),
                    note="an operator skipped this record; it is let past unsent",
                )
            elif halted_at(point.metadata) == point.offset:
                part.carried_halt = point.offset
                metrics.HALTED.labels(*part.labels).set(1)
                log.warning(
                    "partition.halt_carried_over",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=point.offset,
                    note="a previous owner halted here; the record is tried again",
                )

    def lanes_of(self, tps: Iterable[TopicPartition]) -> list[Lane]:
        """The sender lanes that belong to ``tps``."""
        wanted = set(tps)
        return [lane for lane in self.sender.lanes() if lane_partition(lane) in wanted]

    def done(self) -> dict[str, Done]:
        """Records done per topic since the start, by every partition this process had."""
        totals = dict(self._done_before)
        for part in self._parts.values():
            topic = part.tp.topic
            totals[topic] = totals.get(topic, Done()) + part.done
        return totals

    def forget(self, parts: Iterable[Partition]) -> None:
        """Stop tracking partitions that moved away; answers still in flight are fenced off."""
        for part in parts:
            if not part.revoked:
                topic = part.tp.topic
                self._done_before[topic] = self._done_before.get(topic, Done()) + part.done
            part.revoked = True
            if self._parts.get(part.tp) is part:
                del self._parts[part.tp]
            metrics.forget_partition(*part.labels)
        metrics.ASSIGNED_PARTITIONS.set(len(self._parts))

    # Records in

    def hand_over(self, tp: TopicPartition, records: Sequence[KafkaRecord]) -> None:
        """Give a poll's records of ``tp`` to the sender, without waiting; never drop one."""
        part = self._parts.get(tp)
        if part is None:
            # aiokafka hands out a new assignment's records before its assignment callback has
            # run: fetch them again once the partition is tracked, rather than skip them.
            if records and self._flow.assigned(tp):
                self._flow.seek(tp, records[0].offset)
                log.debug(
                    "partition.refetch_untracked", partition=str(tp), offset=records[0].offset
                )
            return
        sender, limits, by_key, span = self.sender, self._limits, self._by_key, part.span
        now = time.monotonic()
        handed = 0
        skips = self._skips
        for record in records:
            nbytes = len(record.value or b"")  # its weight: the value (keys, headers are small)
            receipt = None
            if (
                (record.offset == part.skip_at or (skips and record in skips))
                and part.halted is None
                and not part.operator_paused
            ):
                span.track(record.offset, timestamp=record.timestamp / 1000, received=now)
                self._spawn(self._let_past(part, record))
                handed += 1
                continue
            if (
                part.halted is None
                and not part.paused
                and not part.operator_paused
                and (
                    not span
                    or (len(span) < limits.records and span.nbytes + nbytes <= limits.nbytes)
                )
            ):  # room in the span (an empty one always takes one); inline: runs for every record
                lane = (tp, record.key) if by_key else tp
                try:
                    receipt = sender.try_submit(record, lane, nbytes=nbytes, tag=part)
                except (LaneFullError, LaneHaltedError):
                    receipt = None
            if receipt is None:
                self._flow.seek(tp, record.offset)  # fetched again once there is room
                if part.halted is not None or part.operator_paused:
                    self._flow.pause(part.tp)  # nothing more is fetched for it at all
                if not part.operator_paused:  # resuming undoes that pause; this one waits for room
                    self._hold(part)
                break
            span.track(
                record.offset, timestamp=record.timestamp / 1000, received=now, nbytes=nbytes
            )
            handed += 1
        if handed:
            part.starved_since = None
            metrics.RECORDS_CONSUMED.labels(*part.labels).inc(handed)

    # Outcomes back

    def settled(self, receipt: Receipt[KafkaRecord]) -> None:
        """The sender finished a record: move the watermark, or halt the partition."""
        part: Partition = receipt.tag  # type: ignore[assignment]
        if part.revoked or receipt.cancelled():
            return  # fenced: an answer for an assignment that has ended, or nothing to learn
        record = receipt.item
        error = receipt.error
        if error is None:
            self._accepted(part, record)
            returned = receipt.returned
            if not reached_api(returned, record):  # done all the same
                if returned is DEAD_LETTERED:
                    part.dead_lettered += 1
                else:
                    part.expired += 1
                return
            part.accepted += 1
            part.delivered.count += 1
            metrics.END_TO_END.observe(max(time.time() - record.timestamp / 1000, 0.0))
        elif not isinstance(error, LaneHaltedError):
            self.halt(part, record, error)

    def _accepted(self, part: Partition, record: KafkaRecord) -> None:
        part.span.accept(record.offset)
        part.progressed = True
        now = time.monotonic()
        if part.first_done_at is None:
            part.first_done_at = now
            if not self.first_done.is_set():
                self.first_done.set()
        part.last_done_at = now
        if part.carried_halt is not None and record.offset >= part.carried_halt:
            part.carried_halt = None
            metrics.HALTED.labels(*part.labels).set(0)
        if part.skip_at is not None and record.offset >= part.skip_at:
            part.skip_at = None  # past it: the next commit moves beyond it
        if part.paused and part.may_resume(self._limits):
            self._release(part)

    async def _let_past(self, part: Partition, record: KafkaRecord) -> None:
        """Let a record past unsent: dead-letter it (or not), then count it as done.

        It is named in the skip list, or an operator skipped it (here or under a previous owner).
        """
        why = (
            "skipped by an operator (space-pipeline skip)"
            if record.offset == part.skip_at
            else "named in PIPELINE_SKIP_RECORDS"
        )
        try:
            await self._skips.let_past(record, why)
        except DeadLetterError as error:  # it cannot be let past: it must not be lost either
            if not part.revoked:
                self.halt(part, record, error)
            return
        if not part.revoked:
            self._accepted(part, record)
            part.skipped += 1

    def halt(self, part: Partition, record: KafkaRecord, error: BaseException) -> None:
        """Stop a partition at a rejected record: nothing after it is sent or committed."""
        part.halted = Halt(record.offset, error, record, time.time())
        self._hold(part)
        self._flow.pause(part.tp)
        metrics.REJECTIONS.labels(*part.labels).inc()
        metrics.HALTED.labels(*part.labels).set(1)
        # With key lanes the other keys of the partition must stop too.
        self.sender.cancel(self.lanes_of([part.tp]))
        name = part.record_name(record.offset)
        log.error(
            "partition.halted",
            record=name,
            topic=part.tp.topic,
            partition=part.tp.partition,
            epoch=part.epoch,
            offset=record.offset,
            status=getattr(error, "status", None),
            error=str(error),
            body=getattr(error, "body", None),
            get_past=f"space-pipeline skip {name}, or PIPELINE_SKIP_RECORDS={name} and a restart",
        )

    def ready(self) -> list[TopicPartition]:
        """The partitions to poll: tracked, with room, not halted, not paused by an operator."""
        return [
            tp for tp, part in self._parts.items() if not part.paused and not part.operator_paused
        ]

    # An operator's hand (the admin API)

    def _operated(self, tp: TopicPartition) -> Partition:
        part = self._parts.get(tp)
        if part is None:
            msg = f"{tp.topic}/{tp.partition} is not assigned to this stage"
            raise AdminRefusedError(msg, status=404)
        return part

    def mark_skip(self, tp: TopicPartition, offset: int) -> Partition:
        """Take an operator's skip of ``tp``'s record at ``offset``: only the one it halted at.

        From now on the partition's commits carry the skip (see :data:`SKIP_NOTE`), so it is
        honoured by whoever owns the partition next; :meth:`let_halted_past` then lets it past.
        Raises :class:`~pipeline.errors.AdminRefusedError` saying why, for any other record.
        """
        part = self._operated(tp)
        name = part.record_name(offset)
        halt = part.halted
        if halt is None or halt.record is None:
            if part.carried_halt is not None:
                why = (
                    f"{part.name} is not halted here: a previous owner halted at"
                    f" {part.record_name(part.carried_halt)} and it is being tried again;"
                    " skip it once it halts here"
                )
            else:
                why = (
                    f"{part.name} is not halted; only the record a partition halted at"
                    " may be skipped"
                )
            raise AdminRefusedError(why)
        if halt.offset != offset:
            why = (
                f"{part.name} is halted at {part.record_name(halt.offset)}, not {name}:"
                " only that record may be skipped"
            )
            raise AdminRefusedError(why)
        if part.skip_at == offset:
            raise AdminRefusedError(f"{name} is being skipped already")
        part.skip_at = offset
        return part

    async def let_halted_past(self, part: Partition) -> bool:
        """Let the record a partition halted at (and an operator skipped) past, and go on.

        It is dead-lettered first when a dead-letter topic is set (reason ``skipped``); returns
        whether it was. The partition then fetches and sends again from the next record,
        without a restart. A dead letter that can never be written leaves it halted.
        """
        halt = part.halted
        assert halt is not None  # noqa: S101 - see mark_skip
        assert halt.record is not None  # noqa: S101
        record = halt.record
        try:
            await self._skips.let_past(record, "skipped by an operator (space-pipeline skip)")
        except DeadLetterError as error:
            part.skip_at = None
            msg = f"{part.record_name(record.offset)} could not be dead-lettered: {error}"
            raise AdminRefusedError(msg, status=503) from error
        if part.revoked:
            return self._skips.dead_lettering  # the next owner reads the skip in the commit
        part.halted = None
        metrics.HALTED.labels(*part.labels).set(0)
        self.sender.cancel(self.lanes_of([part.tp]))  # clears the lanes' halt
        part.span.forget_after(record.offset + 1)  # cancelled when it halted: fetched again
        self._accepted(part, record)
        part.skipped += 1
        self._flow.seek(part.tp, record.offset + 1)
        if not part.operator_paused:
            self._flow.resume(part.tp)
        return self._skips.dead_lettering

    def pause_by_operator(self, tps: Iterable[TopicPartition]) -> list[Partition]:
        """Stop fetching and taking records of ``tps`` until resumed (or moved away).

        The stage then lets what is on the wire finish and calls :meth:`rewind`.
        """
        parts = [self._operated(tp) for tp in tps]
        for part in parts:
            part.operator_paused = True
            self._flow.pause(part.tp)
            metrics.OPERATOR_PAUSED.labels(*part.labels).set(1)
        return parts

    def rewind(self, parts: Iterable[Partition]) -> None:
        """Forget what paused partitions hold unaccepted, and fetch it again when resumed.

        Their lanes are empty by now, so the watermark is what was accepted, and what was not
        is sent again after :meth:`resume_by_operator`.
        """
        for part in parts:
            if part.revoked or part.halted is not None:
                continue  # a halted partition keeps its record: a skip lets it past
            oldest = part.span.oldest
            if oldest is not None:
                part.span.forget_after(oldest.offset)
                self._flow.seek(part.tp, oldest.offset)
            if part.paused:
                self._release(part)

    def resume_by_operator(self, tps: Iterable[TopicPartition]) -> list[Partition]:
        """Undo :meth:`pause_by_operator`; a halted partition stays halted."""
        parts = [self._operated(tp) for tp in tps]
        for part in parts:
            part.operator_paused = False
            metrics.OPERATOR_PAUSED.labels(*part.labels).set(0)
            if part.halted is None:
                self._flow.resume(part.tp)
            if part.may_resume(self._limits):  # held back while paused (a skip let it go on)
                self._release(part)
        return parts

    def _hold(self, part: Partition) -> None:
        """Stop taking records of a full (or halted) partition until it drained to half."""
        if not part.paused:
            part.paused = True
            metrics.PAUSED.labels(*part.labels).set(1)

    def _release(self, part: Partition) -> None:
        part.paused = False
        metrics.PAUSED.labels(*part.labels).set(0)


def lane_partition(lane: Lane) -> TopicPartition:
    """The partition a lane belongs to: the lane itself, or the first half of ``(tp, key)``."""
    if isinstance(lane, TopicPartition):
        return lane
    tp: TopicPartition = lane[0]  # type: ignore[index]
    return tp


def names(tps: Iterable[Any]) -> list[str]:
    """``topic/partition`` of each, sorted, for logs."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)
