"""Which offset of a partition is safe to commit, and how much the stage holds for it.

The committed offset is the next record a restarted consumer reads, so it may only move past a
record once the Space API accepted that record *and every earlier one* of its partition. With one
lane per partition acceptances already arrive in order; with key lanes they do not, and the
watermark waits for the slowest key. Records are tracked in the order they were handed over, so
offsets that compaction or transaction markers skipped never hold the watermark back.

The *tracked span* runs from the oldest unaccepted record to the newest handed over: with key
lanes it also holds records already accepted behind a slow key, and it is what bounds a
partition's memory (in records and bytes), not the number of unfinished sends.
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
    nbytes: int = 0


class PartitionOffsets:
    """The offsets of one partition in flight, and the contiguous prefix the API accepted.

    Args:
        committed: The partition's committed offset when it was assigned, if any.
    """

    __slots__ = ("_accepted", "_last_accepted_prefix", "_pending", "committed", "nbytes")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: deque[Pending] = deque()
        self._accepted: set[int] = set()
        self._last_accepted_prefix: int | None = None
        self.committed = committed
        self.nbytes = 0  # value bytes of the tracked span

    def track(self, offset: int, *, timestamp: float, received: float, nbytes: int = 0) -> None:
        """Remember a record handed over; offsets must grow."""
        if self._pending and offset <= self._pending[-1].offset:
            msg = f"offset {offset} tracked after {self._pending[-1].offset}"
            raise ValueError(msg)
        self._pending.append(Pending(offset, timestamp, received, nbytes))
        self.nbytes += nbytes

    def accept(self, offset: int) -> None:
        """Count ``offset`` as accepted and advance the watermark over every accepted prefix."""
        pending = self._pending
        if pending and pending[0].offset == offset:  # the in-order fast path
            self.nbytes -= pending.popleft().nbytes
            self._last_accepted_prefix = offset
        else:
            self._accepted.add(offset)
        accepted = self._accepted
        while pending and accepted and pending[0].offset in accepted:
            head = pending.popleft()
            self.nbytes -= head.nbytes
            accepted.discard(head.offset)
            self._last_accepted_prefix = head.offset

    def forget_after(self, offset: int) -> None:
        """Stop tracking ``offset`` and later ones: they will be fetched again (seek back)."""
        while self._pending and self._pending[-1].offset >= offset:
            dropped = self._pending.pop()
            self.nbytes -= dropped.nbytes
            self._accepted.discard(dropped.offset)

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

    def ready(self, position: int | None = None) -> int | None:
        """The offset to commit if committing it would move the committed offset forward.

        ``position`` is the consumer's fetch position. When nothing is tracked every record below
        it was either accepted or never handed over because Kafka skipped it (transaction
        markers, aborted transactions), so the commit may go that far: a partition whose only
        lag is markers is then fully delivered rather than lagging by one for ever.
        """
        mark = self.watermark
        if not self._pending and position is not None and (mark is None or position > mark):
            mark = position
        if mark is None or (self.committed is not None and mark <= self.committed):
            return None
        return mark
