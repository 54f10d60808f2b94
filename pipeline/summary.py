"""Say it once, then count: log lines for failures that repeat every few milliseconds.

An outage makes every lane fail on every attempt. One warning per attempt buries the log (and costs
CPU on the loop); none hides the outage. :class:`Repeats` lets the first occurrence through, then
one summary per interval with how many were held back.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from pipeline.clock import Clock, SystemClock


@dataclass(slots=True)
class _Streak:
    last_logged: float
    held_back: int = 0


class Repeats:
    """Per key (a lane, a partition): the first occurrence, then a count every ``interval`` s.

    Args:
        interval: Seconds between two lines for the same key.
        clock: Time source, for tests.
    """

    def __init__(self, interval: float, clock: Clock | None = None) -> None:
        self._interval = interval
        self._clock = clock or SystemClock()
        self._streaks: dict[Hashable, _Streak] = {}

    def note(self, key: Hashable) -> int | None:
        """Count one occurrence; return ``None`` to stay quiet, else how many were held back."""
        now = self._clock.monotonic()
        streak = self._streaks.get(key)
        if streak is None:
            self._streaks[key] = _Streak(now)
            return 0
        if now - streak.last_logged < self._interval:
            streak.held_back += 1
            return None
        held_back, streak.held_back, streak.last_logged = streak.held_back, 0, now
        return held_back

    def clear(self, key: Hashable) -> None:
        """End a streak (the lane succeeded): the next failure is news again."""
        self._streaks.pop(key, None)
