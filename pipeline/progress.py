"""A progress line per topic, at the first record done and then every so often.

It is what a person at a terminal wants to see. Metrics answer the same questions for
dashboards; this answers them in the log, so someone running the stage by hand (or reading a
pod's log) sees at a glance that records flow, how fast, and what is left. Since the previous
line: records delivered, dead-lettered, skipped and expired (every record consumed is one of
these once done, or still ``pending``), and the rate while they flowed. Then the total done
since the start, the lag, and how many partitions are assigned, paused and halted.

The rate is over the time records were done (``active_s``, from the first to the last since the
previous line), not over the whole interval: 400 records done in 2 s of a 30 s interval flowed
at 200/s, not 13/s. It is ``None`` when fewer than two records were done, or all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from pipeline.partition import Done, Partition

log = structlog.get_logger("pipeline.progress")


@dataclass(slots=True)
class _TopicLine:
    assigned: int = 0
    paused: int = 0
    halted: int = 0
    lag: int = 0
    pending: int = 0
    first_done_at: float | None = None
    last_done_at: float | None = None

    def add(self, part: Partition) -> None:
        self.assigned += 1
        self.paused += part.paused
        self.halted += part.halted is not None
        self.lag += part.lag
        self.pending += len(part.span)
        first, last = part.first_done_at, part.last_done_at
        if first is not None and last is not None:
            self.first_done_at = (
                first if self.first_done_at is None else min(first, self.first_done_at)
            )
            self.last_done_at = last if self.last_done_at is None else max(last, self.last_done_at)
        part.first_done_at = part.last_done_at = None  # the next line's span starts afresh

    @property
    def active_s(self) -> float:
        if self.first_done_at is None or self.last_done_at is None:
            return 0.0
        return self.last_done_at - self.first_done_at


class Progress:
    """Turns the records done into one ``stage.progress`` line per topic."""

    def __init__(self) -> None:
        self._last: dict[str, Done] = {}

    def report(self, done: Mapping[str, Done], parts: Iterable[Partition]) -> None:
        """Log one line per topic with what was done since the previous report."""
        topics: dict[str, _TopicLine] = {}
        for part in parts:
            topics.setdefault(part.tp.topic, _TopicLine()).add(part)
        for topic in sorted(topics.keys() | done.keys()):
            line = topics.get(topic, _TopicLine())
            total = done.get(topic, Done())
            since = total - self._last.get(topic, Done())
            active_s = line.active_s
            rate = (since.total - 1) / active_s if since.total >= 2 and active_s > 0 else None
            log.info(
                "stage.progress",
                topic=topic,
                delivered=since.delivered,
                dead_lettered=since.dead_lettered,
                skipped=since.skipped,
                expired=since.expired,
                rate_per_s=None if rate is None else round(rate, 1),
                active_s=round(active_s, 3),
                total=total.total,
                pending=line.pending,
                lag_records=line.lag,
                assigned=line.assigned,
                paused=line.paused,
                halted=line.halted,
            )
        self._last = dict(done)
