"""One lane's state: its queue, the bytes it holds, the phase of its current attempt."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pipeline.sender.receipt import Receipt

if TYPE_CHECKING:
    from pipeline.sender.protocols import BatchLimits
    from pipeline.sender.threads import ThreadCalls

T = TypeVar("T")

# Which lane the running task works for, and whose threads run its blocking calls: set by each
# lane worker in its own task, for `call_blocking` and `current_attempt`.
CURRENT: ContextVar[tuple[ThreadCalls, LaneState[Any]] | None] = ContextVar(
    "pipeline_sender_lane", default=None
)


def current_attempt() -> int:
    """Which attempt at its items the running send is: 1, then 2 for the first retry, and so on.

    An async send function that reports attempts (a dead letter's headers do) reads the count
    here rather than keep its own: counts kept per item outlive the items the sender gave up on
    (a lane cancelled by a revoke is never retried), and grow for ever. Outside a lane it is 1.
    """
    current = CURRENT.get()
    return 1 if current is None else current[1].attempt


class Phase(enum.Enum):
    """Where a lane's current attempt is: what a deadline drain looks at."""

    WAITING = "waiting"  # for a slot, the gate, or more items to batch
    SENDING = "sending"  # an attempt is on the wire
    BACKOFF = "backoff"  # sleeping before a retry


class LaneState(Generic[T]):
    """The items of one lane, queued or in flight, and the bytes they declared.

    A lane's bytes are released when its current batch has finished (by the worker), not when
    the batch leaves the queue: ``lane_bytes`` bounds what the lane holds, in flight included.
    """

    __slots__ = (
        "arrived",
        "attempt",
        "current",
        "halted_by",
        "nbytes",
        "phase",
        "queue",
        "space",
        "thread_call",
        "worker",
    )

    def __init__(self) -> None:
        self.queue: deque[Receipt[T]] = deque()
        self.current: list[Receipt[T]] = []
        self.attempt = 0  # of the current items: for `current_attempt`
        self.nbytes = 0
        self.halted_by: BaseException | None = None
        self.worker: asyncio.Task[None] | None = None
        self.space: asyncio.Event | None = None
        self.arrived: asyncio.Event | None = None
        self.phase = Phase.WAITING
        # A blocking call keeps running in its thread whatever was cancelled: the lane stays busy
        # until it returns, so two calls of one lane never overlap.
        self.thread_call: Future[object] | None = None

    def idle(self) -> bool:
        """Whether the lane holds nothing: no item queued or in flight, no call in a thread.

        A lane whose items were cancelled while its blocking call runs on is not idle: the next
        call of the lane must wait for that one.
        """
        return not self.queue and not self.current and not self.busy_in_thread

    @property
    def busy_in_thread(self) -> bool:
        """Whether a blocking call of this lane still runs in its thread."""
        return self.thread_call is not None and not self.thread_call.done()

    def push(self, receipt: Receipt[T]) -> None:
        """Queue an item, and wake a worker that lingers for more."""
        self.queue.append(receipt)
        self.nbytes += receipt.nbytes
        if self.arrived is not None:
            self.arrived.set()

    def unqueue(self, *, newest_first: bool = False) -> Iterator[Receipt[T]]:
        """Take the queued items out one by one, releasing their bytes as each leaves.

        One at a time, because settling one may run callbacks that queue more on this lane.
        """
        take = self.queue.pop if newest_first else self.queue.popleft
        while self.queue:
            receipt = take()
            self.nbytes -= receipt.nbytes
            yield receipt

    async def take_batch(self, limits: BatchLimits, *, linger: bool) -> list[Receipt[T]]:
        """The next batch: up to ``limits`` of the queued items, after lingering for more."""
        queue = self.queue
        if linger and len(queue) < limits.max_items and limits.linger > 0:
            self.arrived = asyncio.Event()
            try:
                async with asyncio.timeout(limits.linger):
                    while len(queue) < limits.max_items:
                        self.arrived.clear()
                        await self.arrived.wait()
            except TimeoutError:
                pass
            finally:
                self.arrived = None
        batch = [queue.popleft()]
        nbytes = batch[0].nbytes
        while queue and len(batch) < limits.max_items:
            nbytes += queue[0].nbytes
            if nbytes > limits.max_bytes:
                break
            batch.append(queue.popleft())
        return batch

    def signal_space(self) -> None:
        """Wake whoever waits in ``submit`` for room on this lane."""
        if self.space is not None:
            self.space.set()
            self.space = None
