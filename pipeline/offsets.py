"""Which offset of a partition is safe to commit.

The committed offset is the next record a restarted consumer reads, so it may only move past a
record once the Space API accepted that record *and every earlier one* of its partition. With one
lane per partition acceptances already arrive in order; with key lanes they do not, and the
watermark waits for the slowest key. Records are tracked in the order they were handed over, so
offsets that compaction or transaction markers skipped never hold the watermark back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pending:
    """A record handed to the sender and not yet counted into the watermark."""

    offset: int
    timestamp: float
    received: float


class PartitionOffsets:
    """The offsets of one partition in flight, and the contiguous prefix the API accepted.

    Args:
        committed: The partition's committed offset when it was assigned, if any.
    """

    __slots__ = ("_accepted", "_last_accepted_prefix", "_pending", "committed")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: deque[Pending] = deque()
        self._accepted: set[int] = set()
        self._last_accepted_prefix: int | None = None
        self.committed = committed

    def track(self, offset: int, *, timestamp: float, received: float) -> None:
        """Remember a record handed over; offsets must grow."""
        if self._pending and offset <= self._pending[-1].offset:
            msg = f"offset {offset} tracked after {self._pending[-1].offset}"
            raise ValueError(msg)
        self._pending.append(Pending(offset, timestamp, received))

    def accept(self, offset: int) -> None:
        """Count ``offset`` as accepted and advance the watermark over every accepted prefix."""
        pending = self._pending
        if pending and pending[0].offset == offset:  # the in-order fast path
            pending.popleft()
            self._last_accepted_prefix = offset
        else:
            self._accepted.add(offset)
        accepted = self._accepted
        while pending and accepted and pending[0].offset in accepted:
            head = pending.popleft()
            accepted.discard(head.offset)
            self._last_accepted_prefix = head.offset

    def forget_after(self, offset: int) -> None:
        """Stop tracking ``offset`` and later ones: they will be fetched again (seek back)."""
        while self._pending and self._pending[-1].offset >= offset:
            self._accepted.discard(self._pending.pop().offset)

    @property
    def watermark(self) -> int | None:
        """The offset to commit: the oldest unaccepted record, or one past the last accepted."""
        if self._pending:
            return self._pending[0].offset
        if self._last_accepted_prefix is not None:
            return self._last_accepted_prefix + 1
        return None

    @property
    def oldest(self) -> Pending | None:
        """The oldest record not yet accepted (it holds the watermark)."""
        return self._pending[0] if self._pending else None

    def __len__(self) -> int:
        return len(self._pending)

    def ready(self) -> int | None:
        """The watermark if committing it would move the committed offset forward."""
        mark = self.watermark
        if mark is None or (self.committed is not None and mark <= self.committed):
            return None
        return mark
