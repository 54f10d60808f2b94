"""Whether, and how long to wait before, trying an item again.

Capped exponential backoff with full jitter (a uniform draw below the cap) spreads the retries of
many lanes hitting the same outage. When the server says ``Retry-After``, it knows better than any
formula: that value is used as given, capped so a hostile or buggy header cannot park a partition
for a day.

Whether an error is worth retrying is read from its ``retryable`` attribute. An error without one
is retried unless it is a programming or data error (``TypeError``, ``ValueError``, ...): sending
the same item through the same code again would fail the same way, for ever, and a lane blocked for
ever is worse than an item that fails visibly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Retrying these cannot help: the same item through the same code fails the same way.
FINAL_BY_DEFAULT: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    NameError,
    LookupError,
    ArithmeticError,
    AssertionError,
    NotImplementedError,
    ImportError,
)


def is_retryable(error: BaseException) -> bool:
    """Whether a failed attempt may succeed if tried again.

    The error's own ``retryable`` attribute decides when it has one; otherwise everything is
    retried except the programming and data errors in :data:`FINAL_BY_DEFAULT`.
    """
    flag = getattr(error, "retryable", None)
    if flag is not None:
        return bool(flag)
    return not isinstance(error, FINAL_BY_DEFAULT)


@dataclass(frozen=True, slots=True)
class Backoff:
    """The retry delay policy of a sender.

    Args:
        initial: The cap of the first delay, in seconds.
        maximum: The cap no delay from the formula exceeds, in seconds.
        multiplier: Growth of the cap per attempt.
        retry_after_max: The cap on a server's ``Retry-After``, in seconds.
        max_attempts: Give up after this many attempts; ``None`` (the default) never gives up,
            because a dropped record is worse than a late one.
        random: A draw in ``[0, 1)``; injectable so tests are deterministic.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    retry_after_max: float = 300.0
    max_attempts: int | None = None
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after:  # `Retry-After: 0` says nothing useful: back off as usual
            return min(max(retry_after, 0.0), self.retry_after_max)
        try:
            growth = self.multiplier ** (attempt - 1)
        except OverflowError:  # hours into an outage: the cap has long been reached
            growth = math.inf
        ceiling = min(self.maximum, self.initial * growth)
        return self.random() * ceiling

    def exhausted(self, attempt: int) -> bool:
        """Whether ``attempt`` failed attempts use up the budget."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def retry_delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` when ``error`` is final.

        This is the :class:`~pipeline.sender.RetryPolicy` the sender asks after every failure. An
        error may bound its own attempts with a ``max_attempts`` attribute.
        """
        own_limit = getattr(error, "max_attempts", None)
        if (
            not is_retryable(error)
            or self.exhausted(attempt)
            or (own_limit is not None and attempt >= own_limit)
        ):
            return None
        return self.delay(attempt, getattr(error, "retry_after", None))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.

    Returns seconds from ``now`` (never negative), or ``None`` when the header is absent or
    unreadable; an unreadable header must not turn a retryable answer into a crash.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)
