"""A progress line per topic, every so often: what a person at a terminal wants to see.

Metrics answer the same questions for dashboards; this answers them in the log, so someone
running the stage by hand (or reading a pod's log) sees at a glance that records flow, how fast,
and what is left: records delivered and the rate since the last line, the lag, and how many
partitions are assigned, paused and halted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from pipeline.partition import Partition

log = structlog.get_logger("pipeline.progress")


@dataclass(slots=True)
class _TopicLine:
    assigned: int = 0
    paused: int = 0
    halted: int = 0
    lag: int = 0


class Progress:
    """Turns delivery counts into one ``stage.progress`` line per topic."""

    def __init__(self, now: float) -> None:
        self._last_at = now
        self._last: Counter[str] = Counter()

    def report(self, now: float, delivered: Counter[str], parts: Iterable[Partition]) -> None:
        """Log one line per topic with counts since the previous report."""
        topics: dict[str, _TopicLine] = {}
        for part in parts:
            line = topics.setdefault(part.tp.topic, _TopicLine())
            line.assigned += 1
            line.paused += part.paused
            line.halted += part.halted is not None
            line.lag += part.lag
        elapsed = max(now - self._last_at, 1e-9)
        for topic in sorted(topics.keys() | delivered.keys()):
            line = topics.get(topic, _TopicLine())
            since = delivered[topic] - self._last[topic]
            log.info(
                "stage.progress",
                topic=topic,
                delivered=since,
                rate_per_s=round(since / elapsed, 1),
                total=delivered[topic],
                lag_records=line.lag,
                assigned=line.assigned,
                paused=line.paused,
                halted=line.halted,
            )
        self._last = Counter(delivered)
        self._last_at = now
