"""What ``submit`` hands back: a receipt, and once accepted, the delivery it resolves to."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline.sender.protocols import Lane

T = TypeVar("T")

# A library logs through the standard library and leaves output to the application.
log = logging.getLogger("pipeline.sender")


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an accepted item got there, and what ``send`` returned for it.

    ``started`` and ``finished`` are seconds on the sender's monotonic clock (not wall time), so
    ``finished - started`` is the time from the first attempt to the acceptance.
    """

    item: Any
    lane: Lane
    attempts: int
    started: float
    finished: float
    result: Any = None  # what ``send`` returned (for a batch, its one return value)


class Outcome(enum.Enum):
    """How an item ended, once and for all."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Python 3.11 looks an enum member up through a descriptor (~150 ns); a receipt reads this one
# several times per item.
_PENDING = Outcome.PENDING


class Receipt(Generic[T]):
    """The outcome of one submitted item: await it, or poll it; it never disappears.

    Awaiting returns the :class:`Delivery`, or raises the error that ended the item: the send
    function's final exception, a :class:`~pipeline.errors.LaneHaltedError`, or
    :class:`asyncio.CancelledError` when the item was dropped by :meth:`OrderedSender.cancel`, by a
    drain with a deadline, or by a close that ran out of time. Nothing is allocated for awaiting
    until somebody awaits, so a receipt nobody awaits costs little.
    """

    __slots__ = (
        "_attempts",
        "_callbacks",
        "_error",
        "_finished",
        "_future",
        "_outcome",
        "_result",
        "_started",
        "item",
        "lane",
        "nbytes",
        "tag",
    )

    def __init__(self, item: T, lane: Lane, nbytes: int, tag: object = None) -> None:
        self.item = item
        self.lane = lane
        self.nbytes = nbytes
        self.tag = tag
        self._outcome = _PENDING
        self._error: BaseException | None = None
        self._attempts = 0
        self._result: object = None
        self._started = self._finished = 0.0
        self._future: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[Receipt[T]], None]] | None = None

    def __repr__(self) -> str:
        state = self._outcome.value
        if self._outcome is Outcome.ACCEPTED:
            state += f" after {self._attempts} attempt(s)"
        elif self._outcome is Outcome.FAILED:
            state += f": {self._error!r}"
        return f"<Receipt lane={self.lane!r} item={self.item!r} {state}>"

    def __await__(self) -> Generator[Any, None, Delivery]:
        while self._outcome is _PENDING:
            future = self._future
            if future is None or future.done():  # a waiter that gave up cancelled the last one
                future = self._future = asyncio.get_running_loop().create_future()
            yield from future
        return self.result()

    @property
    def error(self) -> BaseException | None:
        """The final error of a failed item; ``None`` otherwise (accepted, pending, cancelled)."""
        return self._error

    @property
    def returned(self) -> object:
        """What ``send`` returned for this item once accepted (``None`` before)."""
        return self._result

    def done(self) -> bool:
        """Whether the item has finished (accepted, failed or cancelled)."""
        return self._outcome is not _PENDING

    def cancelled(self) -> bool:
        """Whether the item was dropped without a final answer."""
        return self._outcome is Outcome.CANCELLED

    def exception(self) -> BaseException | None:
        """The final error of a finished item, ``None`` if it was accepted (like a future's)."""
        if self._outcome is _PENDING:
            raise asyncio.InvalidStateError("the item has not finished")
        if self._outcome is Outcome.CANCELLED:
            raise asyncio.CancelledError
        return self._error

    def result(self) -> Delivery:
        """The delivery of a finished, accepted item (raises like awaiting would)."""
        error = self.exception()
        if error is not None:
            raise error
        return Delivery(
            self.item, self.lane, self._attempts, self._started, self._finished, self._result
        )

    def add_done_callback(self, callback: Callable[[Receipt[T]], None]) -> None:
        """Call ``callback(receipt)`` the moment the item finishes (at once if it has).

        Unlike a future's callbacks these run synchronously, before the sender reports the lane
        idle, so whoever waits on :meth:`OrderedSender.drain` sees their effects.
        """
        if self._outcome is not _PENDING:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def _settle(self, outcome: Outcome, error: BaseException | None = None) -> bool:
        if self._outcome is not _PENDING:
            return False
        self._outcome = outcome
        self._error = error
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                log.exception("sender: a receipt callback failed (lane %r)", self.lane)
        return True
