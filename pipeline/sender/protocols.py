"""What the sender asks of the code around it: a retry policy, a gate, an observer, batch limits."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T_contra = TypeVar("T_contra", contravariant=True)
Lane = Hashable


class RetryPolicy(Protocol):
    """Decides after each failed attempt: wait this long and try again, or give up."""

    def retry_delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; ``None`` makes ``error`` final."""
        ...


class Gate(Protocol):
    """Admission to a shared downstream (rate limit, throttling, circuit), around each attempt.

    The sender asks :attr:`clear` first, so an open gate costs nothing; otherwise it awaits
    :meth:`admit`. Either way it reports the attempt's outcome to :meth:`record`.
    """

    @property
    def clear(self) -> bool:
        """Whether an attempt may go at once, with nothing to wait for or count."""
        ...

    @property
    def blocked(self) -> bool:
        """Whether admission now waits: for an outage, a throttle or a rate slot.

        A deadline drain cancels a lane rather than let it wait: nothing of its attempt was sent.
        """
        ...

    async def admit(self) -> bool:
        """Wait until an attempt may go; ``True`` when it goes as an outage's single probe."""
        ...

    def record(self, error: BaseException | None, probe: bool) -> None:
        """The attempt ended: accepted (``None``), failed (its error) or cancelled."""
        ...


class RetryObserver(Protocol[T_contra]):
    """Told each time a failed attempt is scheduled again (metrics, logs)."""

    def __call__(
        self, item: T_contra, lane: Lane, error: BaseException, attempt: int, delay: float, /
    ) -> None:
        """Record one scheduled retry (with batches, ``item`` is the batch's first item)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How a lane groups consecutive items into one call of ``send``.

    Args:
        max_items: Items per call at most.
        max_bytes: Declared bytes per call at most (a single bigger item still goes alone).
        linger: Seconds a lane waits for more items when fewer than ``max_items`` are queued.
    """

    max_items: int
    max_bytes: int = 1 << 20
    linger: float = 0.0
