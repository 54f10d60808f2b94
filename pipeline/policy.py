"""The rules: what each outcome of a delivery attempt means, and what happens next.

An answer is *accepted* (2xx), *retried* (``PIPELINE_RETRY_STATUSES``: the API may take it later),
an *auth outage* (``PIPELINE_AUTH_STATUSES``: nothing passes until credentials work, whatever the
record) or a *rejection* (any other status: the record itself is refused). Timeouts and
connection errors are retried. A rejection meets ``PIPELINE_ON_REJECT``: the partition halts at
the record, or the record goes to the dead-letter topic and the lane moves on once Kafka has it.
A guard halts a partition that dead-letters too much (a misconfigured API must not drain a topic
into the DLQ), and operators name exact records to let past (``PIPELINE_SKIP_RECORDS``).
"""

from __future__ import annotations

import enum
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

log = structlog.get_logger("pipeline.policy")

DEFAULT_RETRY_STATUSES = "408,409,425,429,500-599"
# What a delivery returns for a record that went to the dead-letter topic instead of the API.
DEAD_LETTERED = "dead-lettered"
DEFAULT_AUTH_STATUSES = "401,403,407"


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
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[object]],
        rules: RejectRules,
        dead_letters: DeadLetterSink | None,
        *,
        batched: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if rules.on_reject == "dead-letter" and dead_letters is None:
            msg = "dead-lettering needs a dead-letter sink"
            raise ValueError(msg)
        self._send = send
        self._rules = rules
        self._dead_letters = dead_letters
        self._batched = batched
        self._clock = clock or SystemClock()
        self._recent: dict[tuple[str, int], deque[float]] = {}  # dead letters per partition

    async def __call__(self, payload: Any) -> object:  # noqa: ANN401 - a record or a list
        """Deliver ``payload`` (a record, or a batch) under the rules."""
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

    @property
    def dead_lettering(self) -> bool:
        """Whether a record let past goes to the dead-letter topic."""
        return self._dead_letters is not None

    async def let_past(
        self, record: KafkaRecord, why: str = "named in PIPELINE_SKIP_RECORDS"
    ) -> None:
        """Dead-letter (if configured) and count one record; returns once it is done.

        The named records of the skip list come here, and so does a record an operator skips
        (``space-pipeline skip``), with ``why`` saying so in the dead letter; the reason is
        ``skipped`` either way.

        Raises :class:`~pipeline.errors.DeadLetterError` when the dead letter can never be
        written: the record may then not be let past, and its partition halts.
        """
        if self._dead_letters is not None:
            error = RejectedError(why, reason="skipped")
            await self._dead_letters.write(record, error, 0)
        metrics.SKIPPED.labels(record.topic, str(record.partition)).inc()
        log.warning(
            "policy.record_skipped",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            dead_lettered=self._dead_letters is not None,
            why=why,
        )
