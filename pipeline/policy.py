"""The rules: what each outcome of a delivery attempt means, and what happens next.

An answer is *accepted* (2xx), *retried* (``PIPELINE_RETRY_STATUSES``: the API may take it later),
an *auth outage* (``PIPELINE_AUTH_STATUSES``: nothing passes until credentials work, whatever the
record) or a *rejection* (any other status: the record itself is refused). Timeouts and
connection errors are retried. A rejection meets ``PIPELINE_ON_REJECT``: the partition halts at
the record, or the record goes to the dead-letter topic and the lane moves on once Kafka has it.
A guard halts a partition that dead-letters too much (a misconfigured API must not drain a topic
into the DLQ), and operators name exact records to let past (``PIPELINE_SKIP_RECORDS``).
Records older than ``PIPELINE_MAX_RECORD_AGE_S`` when their turn comes are let past unsent.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from pipeline import metrics
from pipeline.clock import Clock, SystemClock
from pipeline.errors import RejectedError
from pipeline.records import KafkaRecord, idempotency_key
from pipeline.sender import current_attempt
from pipeline.summary import Repeats

log = structlog.get_logger("pipeline.policy")

DEFAULT_RETRY_STATUSES = "408,409,425,429,500-599"
# What a delivery returns for a record that went to the dead-letter topic instead of the API.
DEAD_LETTERED = "dead-lettered"
DEFAULT_AUTH_STATUSES = "401,403,407"
# Seconds between two lines about expired records of one partition (a count in between).
EXPIRED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Withheld:
    """What a delivery returns when records of its payload never reached the API (expired).

    ``offsets`` are those records (one partition's: a lane never mixes partitions); they are
    done, and committed past, but not delivered. ``answered`` says whether the API was asked at
    all: the sender's gate must not take an attempt that sent nothing for the API's answer.
    """

    offsets: frozenset[int]
    answered: bool


def reached_api(returned: object, record: KafkaRecord) -> bool:
    """Whether an accepted ``record`` went to the API, by what its delivery returned."""
    if returned is DEAD_LETTERED:
        return False
    return not (isinstance(returned, Withheld) and record.offset in returned.offsets)


def parse_statuses(text: str) -> frozenset[int]:
    """``"408,429,500-599"`` as a set of status codes; ``ValueError`` says what is wrong."""
    codes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            msg = f"{part!r} is not a status code or a range such as 500-599"
            raise ValueError(msg) from None
        if not 100 <= low <= high <= 599:
            msg = f"{part!r} is not within 100-599 (or a range is backwards)"
            raise ValueError(msg)
        if low <= 299 and high >= 200:
            msg = f"{part!r} includes 2xx, which always means accepted"
            raise ValueError(msg)
        codes.update(range(low, high + 1))
    return frozenset(codes)


def format_statuses(codes: frozenset[int]) -> str:
    """The short form of a status set: ``408,409,425,429,500-599``."""
    parts: list[str] = []
    run: list[int] = []
    for code in sorted(codes):
        if run and code != run[-1] + 1:
            parts.append(_run_text(run))
            run = []
        run.append(code)
    if run:
        parts.append(_run_text(run))
    return ",".join(parts)


def _run_text(run: list[int]) -> str:
    if len(run) < 3:
        return ",".join(str(code) for code in run)
    return f"{run[0]}-{run[-1]}"


class Outcome(enum.Enum):
    """What an HTTP answer means for the record that got it."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    AUTH = "auth"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Classification:
    """Status codes to outcomes, as configured."""

    retry: frozenset[int] = parse_statuses(DEFAULT_RETRY_STATUSES)
    auth: frozenset[int] = parse_statuses(DEFAULT_AUTH_STATUSES)

    def outcome(self, status: int) -> Outcome:
        """The outcome of an answer with ``status``."""
        if 200 <= status < 300:
            return Outcome.ACCEPTED
        if status in self.retry:
            return Outcome.RETRY
        if status in self.auth:
            return Outcome.AUTH
        return Outcome.REJECTED


def parse_skip_list(text: str) -> frozenset[str]:
    """``topic/partition/offset,...`` as a set of idempotency keys; ``ValueError`` if malformed."""
    keys = set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        topic, _, rest = entry.partition("/")
        partition, _, offset = rest.partition("/")
        if not (topic and partition.isdecimal() and offset.isdecimal()):
            msg = f"{entry!r} is not topic/partition/offset"
            raise ValueError(msg)
        keys.add(f"{topic}/{int(partition)}/{int(offset)}")
    return frozenset(keys)


class DeadLetterSink(Protocol):
    """Where rejected records go: a Kafka topic, or a fake in tests."""

    async def write(self, record: KafkaRecord, error: RejectedError, attempts: int) -> None:
        """Store ``record`` with why it was rejected; return only once it is stored for good."""
        ...


@dataclass(frozen=True, slots=True)
class RejectRules:
    """What a rejection leads to."""

    on_reject: Literal["halt", "dead-letter"] = "halt"
    dead_letter_max_per_minute: int = 60


class Rules:
    """The send function the sender calls: the sink, then the rules for what it answered.

    A rejection of a single record meets the rules here, inside the lane's attempt, so the lane
    moves on only once the dead letter is stored; a rejected batch goes back to the sender,
    which splits it until the rejected record is alone.

    Args:
        send: The sink's send (a record, or a list of records when batching).
        rules: What a rejection leads to.
        dead_letters: Where rejected records go, if anywhere.
        batched: Whether ``send`` takes lists.
        clock: Time source for the dead-letter guard's minute: the sender's.
        expiry: Records too old to send (``PIPELINE_MAX_RECORD_AGE_S``), if there is a limit.
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[object]],
        rules: RejectRules,
        dead_letters: DeadLetterSink | None,
        *,
        batched: bool = False,
        clock: Clock | None = None,
        expiry: Expiry | None = None,
    ) -> None:
        if rules.on_reject == "dead-letter" and dead_letters is None:
            msg = "dead-lettering needs a dead-letter sink"
            raise ValueError(msg)
        self._send = send
        self._rules = rules
        self._dead_letters = dead_letters
        self._batched = batched
        self._clock = clock or SystemClock()
        self._expiry = expiry
        self._recent: dict[tuple[str, int], deque[float]] = {}  # dead letters per partition

    async def __call__(self, payload: Any) -> object:  # noqa: ANN401 - a record or a list
        """Deliver ``payload`` (a record, or a batch) under the rules.

        Age is judged here, at every attempt, because this is when a record would be sent: one
        that was fresh when fetched but waited out an outage is too old by the time it goes. A
        batch loses its expired records and sends the rest as one request, in their order.
        """
        expiry = self._expiry
        if expiry is None:
            return await self._deliver(payload)
        if not self._batched:
            if not expiry.expired(payload):
                return await self._deliver(payload)
            await expiry.let_past(payload)
            return Withheld(frozenset({payload.offset}), answered=False)
        fresh, withheld = await expiry.screen(payload)
        if not withheld:
            return await self._deliver(payload)
        returned = await self._deliver(fresh) if fresh else None
        expiry.forget(payload)  # done: a split or retry of this batch is over
        if returned is DEAD_LETTERED:
            withheld |= {fresh[0].offset}
        return Withheld(withheld, answered=bool(fresh))

    async def _deliver(self, payload: Any) -> object:  # noqa: ANN401 - a record or a list
        single = _single(payload) if self._batched else payload
        try:
            await self._send(payload)
        except RejectedError as error:
            if single is None:
                raise  # the sender splits the batch until the rejected record is alone
            await self._rejected(single, error)
            return DEAD_LETTERED
        return None

    async def _rejected(self, record: KafkaRecord, error: RejectedError) -> None:
        """Halt at ``record``, or dead-letter it.

        A dead letter that can never be written raises
        :class:`~pipeline.errors.DeadLetterError`: a final failure, so the lane halts there.
        """
        attempts = current_attempt()  # the sender's count: nothing kept here outlives a revoke
        if self._rules.on_reject != "dead-letter" or self._dead_letters is None:
            raise error  # halt: the partition stops at this record
        record_log = log.bind(topic=record.topic, partition=record.partition, offset=record.offset)
        if self._guard_trips(record, record_log):
            raise error
        await self._dead_letters.write(record, error, attempts)
        metrics.DEAD_LETTERS.labels(record.topic, str(record.partition)).inc()
        record_log.warning(
            "policy.dead_lettered", status=error.status, reason=error.reason, attempts=attempts
        )

    def _guard_trips(self, record: KafkaRecord, record_log: FilteringBoundLogger) -> bool:
        """More dead letters on this partition within a minute than allowed: halt instead."""
        now = self._clock.monotonic()
        window = self._recent.setdefault((record.topic, record.partition), deque())
        while window and now - window[0] > 60.0:
            window.popleft()
        if len(window) >= self._rules.dead_letter_max_per_minute:
            metrics.DEAD_LETTER_GUARD_TRIPS.labels(record.topic, str(record.partition)).inc()
            record_log.error(
                "policy.dead_letter_guard_tripped",
                max_per_minute=self._rules.dead_letter_max_per_minute,
            )
            return True
        window.append(now)
        return False


def _single(batch: Sequence[KafkaRecord]) -> KafkaRecord | None:
    return batch[0] if len(batch) == 1 else None


class Skips:
    """Records an operator named in ``PIPELINE_SKIP_RECORDS``: they never reach the API.

    Each is dead-lettered when a dead-letter topic is configured, otherwise let past; either
    way with a warning and a count. Nothing else is ever skipped.
    """

    def __init__(self, keys: frozenset[str], dead_letters: DeadLetterSink | None) -> None:
        self._keys = keys
        self._dead_letters = dead_letters

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, record: KafkaRecord) -> bool:
        return idempotency_key(record) in self._keys

    async def let_past(self, record: KafkaRecord) -> None:
        """Dead-letter (if configured) and count one named record; returns once it is done.

        Raises :class:`~pipeline.errors.DeadLetterError` when the dead letter can never be
        written: the record may then not be let past, and its partition halts.
        """
        if self._dead_letters is not None:
            error = RejectedError("named in PIPELINE_SKIP_RECORDS", reason="skipped")
            await self._dead_letters.write(record, error, 0)
        metrics.SKIPPED.labels(record.topic, str(record.partition)).inc()
        log.warning(
            "policy.record_skipped",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            dead_lettered=self._dead_letters is not None,
        )


class Expiry:
    """Records older than ``PIPELINE_MAX_RECORD_AGE_S`` when their turn comes: never sent.

    Each is dead-lettered (reason ``expired``) when a dead-letter topic is configured, otherwise
    let past; either way counted, and logged once then summarised per partition: after an
    outage they come by the thousand. They do not count towards the dead-letter guard, which
    stops a misconfigured API from draining a topic; expiry is a setting doing its job.

    Kafka timestamps are wall-clock milliseconds, so the age is measured against wall time
    (``now``); the monotonic clock has no epoch to compare them with.

    Args:
        max_age_s: The age past which a record is not sent.
        dead_letters: Where expired records go, if anywhere.
        now: Wall-clock seconds since the epoch.
        clock: Monotonic time for the log summary's interval.
        log_interval: Seconds between two lines for one partition.
    """

    # Records let past from batches still being delivered: a retry or a split of the batch
    # brings them round again, and they must not be written or counted twice. Entries outlive
    # their batch only when it ended without an answer (a halt, a revoke): bounded regardless.
    MAX_REMEMBERED = 100_000

    def __init__(
        self,
        max_age_s: float,
        dead_letters: DeadLetterSink | None,
        *,
        now: Callable[[], float] = time.time,
        clock: Clock | None = None,
        log_interval: float = EXPIRED_LOG_INTERVAL_S,
    ) -> None:
        self._max_age_ms = max_age_s * 1000
        self._max_age_s = max_age_s
        self._dead_letters = dead_letters
        self._now = now
        self._lines = Repeats(log_interval, clock)
        self._let_past: dict[str, None] = {}

    def expired(self, record: KafkaRecord) -> bool:
        """Whether ``record`` is older than the limit now.

        A record without a timestamp (``-1``, old message formats) has no age and is fresh.
        """
        timestamp = record.timestamp
        return timestamp >= 0 and self._now() * 1000 - timestamp > self._max_age_ms

    async def screen(
        self, batch: Sequence[KafkaRecord]
    ) -> tuple[list[KafkaRecord], frozenset[int]]:
        """Let a batch's expired records past, once each; the rest, in order, and their offsets.

        A record let past earlier in this batch's delivery (before a retry or a split) stays let
        past, whatever the clock says now.
        """
        fresh: list[KafkaRecord] = []
        expired: list[KafkaRecord] = []
        remembered = self._let_past
        for record in batch:
            key = idempotency_key(record) if remembered else ""
            if key in remembered:
                expired.append(record)
            elif self.expired(record):
                await self.let_past(record)
                if len(remembered) >= self.MAX_REMEMBERED:
                    del remembered[next(iter(remembered))]
                remembered[key or idempotency_key(record)] = None
                expired.append(record)
            else:
                fresh.append(record)
        return fresh, frozenset(record.offset for record in expired)

    def forget(self, batch: Sequence[KafkaRecord]) -> None:
        """A batch's delivery is over: its expired records will not come round again."""
        if self._let_past:
            for record in batch:
                self._let_past.pop(idempotency_key(record), None)

    async def let_past(self, record: KafkaRecord) -> None:
        """Dead-letter (if configured) and count one expired record; returns once it is done.

        Raises :class:`~pipeline.errors.DeadLetterError` when the dead letter can never be
        written: the record may then not be let past, and its partition halts.
        """
        age_s = self._now() - record.timestamp / 1000
        if self._dead_letters is not None:
            error = RejectedError(
                f"older than PIPELINE_MAX_RECORD_AGE_S ({self._max_age_s:g} s): {age_s:.0f} s",
                reason="expired",
            )
            await self._dead_letters.write(record, error, current_attempt() - 1)  # those sent
        metrics.EXPIRED.labels(record.topic, str(record.partition)).inc()
        held_back = self._lines.note((record.topic, record.partition))
        if held_back is not None:
            log.warning(
                "policy.record_expired",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                age_s=round(age_s, 3),
                max_age_s=self._max_age_s,
                dead_lettered=self._dead_letters is not None,
                held_back=held_back,
            )
