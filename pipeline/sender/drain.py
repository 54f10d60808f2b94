"""Draining and cancelling lanes: everything that ends lanes early, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from pipeline.sender.lane import LaneState, Phase
from pipeline.sender.protocols import Gate, Lane
from pipeline.sender.receipt import Receipt

T = TypeVar("T")


class Drains(Generic[T]):
    """The drains in progress over a sender's lanes, and the cancellations they and others make.

    A drain without a deadline waits for its lanes to empty, retries included. A drain with one
    (a shutdown, a rebalance) changes how the lanes it covers work: attempts on the wire may
    finish and queues go on, but a lane may not wait for what could outlast the deadline (a
    retry's backoff, a blocked gate, a batch's linger). Such a lane is *parked*: cancelled at
    once, its items with it (never lost: they were not accepted). The lane worker asks
    :meth:`covers` before it would wait and reports a lane it stopped to :meth:`park`.
    """

    def __init__(
        self,
        lanes: dict[Lane, LaneState[T]],
        cancel_item: Callable[[Receipt[T]], int],
        gate: Gate | None,
    ) -> None:
        self._lanes = lanes
        self._cancel_item = cancel_item  # settles a receipt as cancelled: 1 if it was pending
        self._gate = gate
        self._deadlines: list[frozenset[Lane] | None] = []  # one entry per deadline drain
        self._parked = 0
        self.idled = asyncio.Event()  # set whenever a lane may have become idle

    @property
    def lingering(self) -> bool:
        """Whether a lane may wait for more items to batch: not while a deadline runs."""
        return not self._deadlines

    def covers(self, lane: Lane) -> bool:
        """Whether a deadline drain covers ``lane``: it must not wait for a retry or the gate."""
        return any(d is None or lane in d for d in self._deadlines)

    def park(self, state: LaneState[T]) -> None:
        """A worker stopped its lane for a deadline drain: the lane's items are cancelled.

        An item of the lane ended unaccepted, so sending the next would reorder them. The
        worker releases the bytes of its current batch.
        """
        for receipt in state.current:
            self._cancel_item(receipt)
        for receipt in state.unqueue():
            self._cancel_item(receipt)
        self._parked += 1

    async def wait(self, lanes: Iterable[Lane] | None, timeout: float | None) -> bool:
        """The body of :meth:`OrderedSender.drain`."""
        wanted = None if lanes is None else frozenset(lanes)
        cancelled = 0
        parked_before = self._parked
        if timeout is not None:
            self._deadlines.append(wanted)
            cancelled = self._cancel_parked(wanted)

        def idle() -> bool:
            keys = self._lanes.keys() if wanted is None else wanted & self._lanes.keys()
            return all(self._lanes[key].idle() for key in keys)

        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.idled.clear()
                    if idle():
                        return not cancelled and self._parked == parked_before
                    await self.idled.wait()
        except TimeoutError:
            return False
        finally:
            if timeout is not None:
                self._deadlines.remove(wanted)

    def _cancel_parked(self, lanes: frozenset[Lane] | None) -> int:
        """At the start of a deadline drain: cancel lanes that sleep or wait at a blocked gate."""
        gate_blocked = self._gate is not None and self._gate.blocked
        parked = [
            lane
            for lane, state in self._lanes.items()
            if (lanes is None or lane in lanes)
            and state.current
            and (state.phase is Phase.BACKOFF or (gate_blocked and state.phase is Phase.WAITING))
        ]
        return self.cancel(parked) if parked else 0

    def discard_queued(self, lanes: Iterable[Lane]) -> int:
        """The body of :meth:`OrderedSender.discard_queued`."""
        count = 0
        for lane in lanes:
            state = self._lanes.get(lane)
            if state is None:
                continue
            for receipt in state.unqueue(newest_first=True):
                count += self._cancel_item(receipt)
            state.signal_space()
        return count

    def cancel(self, lanes: Iterable[Lane]) -> int:
        """The body of :meth:`OrderedSender.cancel`."""
        count = 0
        for lane in lanes:
            count += self.discard_queued([lane])
            state = self._lanes.get(lane)
            if state is None:
                continue
            count += sum(self._cancel_item(r) for r in state.current)
            state.halted_by = None
            if state.worker is not None:
                state.worker.cancel()  # it forgets the lane, or restarts it for newer items
            elif not state.busy_in_thread:
                del self._lanes[lane]
        self.idled.set()
        return count
