"""The non-blocking ordered sender: hand items over now, have them delivered in order.

``await asyncio.create_task(send(item))`` in a loop is serial: N items cost N round trips. Firing
tasks without awaiting them is concurrent but loses order and loses errors. An
:class:`OrderedSender` sits between the two: items are grouped in *lanes* (a Kafka partition, a
key); lanes run concurrently up to a global limit, and within a lane an item is sent only once the
one before it has finished for good (accepted, or finally rejected). A retryable failure keeps its
item at the head of its lane, so retries never reorder anything and block only that lane.

``submit`` returns a :class:`Receipt` without waiting on the network; the receipt resolves to a
:class:`Delivery` or raises the final error. Buffers are bounded per lane, in items and bytes.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import structlog

from pipeline.errors import LaneFullError, LaneHaltedError, SenderClosedError
from pipeline.retry import Backoff

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
Lane = Hashable

log = structlog.get_logger("pipeline.sender")


class Clock(Protocol):
    """Time as the sender sees it; tests pass a fake that does not really sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds on the event loop's clock."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait on the event loop."""
        await asyncio.sleep(seconds)


class RetryObserver(Protocol[T_contra]):
    """Told each time a failed attempt is scheduled again (metrics, logs)."""

    def __call__(
        self, item: T_contra, lane: Lane, error: BaseException, attempt: int, delay: float, /
    ) -> None:
        """Record one scheduled retry."""
        ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an accepted item got there."""

    attempts: int
    started: float
    finished: float


class Receipt(Generic[T]):
    """The outcome of one submitted item: await it, or poll it; it never disappears.

    Awaiting returns the :class:`Delivery`, or raises the error that ended the item: a
    :class:`~pipeline.errors.SendError` (rejected, or retries exhausted), a
    :class:`~pipeline.errors.LaneHaltedError`, or :class:`asyncio.CancelledError` when the item was
    dropped by :meth:`OrderedSender.cancel` or a close that ran out of time.
    """

    __slots__ = ("_callbacks", "_future", "item", "lane", "nbytes")

    def __init__(self, item: T, lane: Lane, nbytes: int, future: asyncio.Future[Delivery]) -> None:
        self.item = item
        self.lane = lane
        self.nbytes = nbytes
        self._future = future
        self._callbacks: list[Callable[[Receipt[T]], None]] = []

    def __await__(self) -> Generator[Any, None, Delivery]:
        return self._future.__await__()

    def done(self) -> bool:
        """Whether the item has finished (accepted, failed or cancelled)."""
        return self._future.done()

    def cancelled(self) -> bool:
        """Whether the item was dropped without a final answer."""
        return self._future.cancelled()

    def exception(self) -> BaseException | None:
        """The final error of a finished item, ``None`` if it was accepted."""
        return self._future.exception()

    def result(self) -> Delivery:
        """The delivery of a finished, accepted item (raises like awaiting would)."""
        return self._future.result()

    def add_done_callback(self, callback: Callable[[Receipt[T]], None]) -> None:
        """Call ``callback(receipt)`` the moment the item finishes (at once if it has).

        Unlike a future's callbacks these run synchronously, before the sender reports the lane
        idle, so whoever waits on :meth:`OrderedSender.drain` sees their effects.
        """
        if self._future.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    def _settle(self, delivery: Delivery | None, error: BaseException | None = None) -> None:
        """Finish the item: accepted (``delivery``), failed (``error``) or cancelled (neither)."""
        if self._future.done():
            return
        if delivery is not None:
            self._future.set_result(delivery)
        elif error is not None:
            self._future.set_exception(error)
        else:
            self._future.cancel()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("sender.callback_failed", lane=repr(self.lane))


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _LaneState(Generic[T]):
    __slots__ = ("current", "halted_by", "nbytes", "queue", "space", "worker")

    def __init__(self) -> None:
        self.queue: deque[Receipt[T]] = deque()
        self.current: Receipt[T] | None = None
        self.nbytes = 0
        self.halted_by: BaseException | None = None
        self.worker: asyncio.Task[None] | None = None
        self.space: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.queue) + (self.current is not None)

    @property
    def halted(self) -> bool:
        return self.halted_by is not None


class OrderedSender(Generic[T]):
    """Deliver items through ``send`` in order per lane, concurrently across lanes.

    Args:
        send: ``async def send(item)`` or a plain blocking ``def send(item)`` (run in a thread pool
            of ``max_in_flight`` threads, so the event loop never blocks). It returns on
            acceptance and raises otherwise; an exception whose ``retryable`` attribute is false
            ends the item, any other is retried (nothing is dropped by default).
        max_in_flight: Attempts running at once, across all lanes.
        lane_capacity: Items a lane may hold (queued plus in flight).
        lane_bytes: Bytes a lane may hold, as declared by ``submit(..., nbytes=)``. A lane always
            takes one item when empty, so an oversized item cannot wedge it.
        backoff: The retry delay policy.
        halt_on_rejection: Stop a lane at its first final failure: later items of that lane fail
            with :class:`~pipeline.errors.LaneHaltedError` unsent, until :meth:`cancel` clears it.
        on_retry: Told of every scheduled retry.
        clock: Time source, for tests.
    """

    def __init__(
        self,
        send: Callable[[T], Awaitable[object]] | Callable[[T], object],
        *,
        max_in_flight: int = 64,
        lane_capacity: int = 1_000,
        lane_bytes: int | None = None,
        backoff: Backoff | None = None,
        halt_on_rejection: bool = False,
        on_retry: RetryObserver[T] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_in_flight < 1 or lane_capacity < 1:
            msg = "max_in_flight and lane_capacity must be at least 1"
            raise ValueError(msg)
        self._send = send
        self._is_async = inspect.iscoroutinefunction(send) or inspect.iscoroutinefunction(
            getattr(send, "__call__", None)  # noqa: B004 - an object with `async def __call__`
        )
        self._executor: ThreadPoolExecutor | None = None
        self._max_in_flight = max_in_flight
        self._lane_capacity = lane_capacity
        self._lane_bytes = lane_bytes
        self._backoff = backoff or Backoff()
        self._halt_on_rejection = halt_on_rejection
        self._on_retry = on_retry
        self._clock = clock or SystemClock()
        self._lanes: dict[Lane, _LaneState[T]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lane_idled = asyncio.Event()
        self._state = _State.UNOPENED
        self._tasks: asyncio.TaskGroup | None = None

    # Lifecycle

    async def __aenter__(self) -> OrderedSender[T]:
        if self._state is not _State.UNOPENED:
            msg = "an OrderedSender can be opened only once"
            raise RuntimeError(msg)
        if not self._is_async:
            self._executor = ThreadPoolExecutor(self._max_in_flight, "ordered-sender")
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._state = _State.OPEN
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(timeout=None if exc_info[0] is None else 0)
        assert self._tasks is not None  # noqa: S101 - set by __aenter__
        await self._tasks.__aexit__(*exc_info)  # type: ignore[arg-type]

    async def close(self, timeout: float | None = None) -> None:
        """Take no more items, let lanes finish for up to ``timeout`` seconds, cancel the rest.

        Idempotent: later calls return at once.
        """
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._state = _State.CLOSING
        if not await self.drain(timeout=timeout):
            dropped = self.cancel(list(self._lanes))
            log.warning("sender.close_timeout", cancelled=dropped, timeout=timeout)
        else:
            self.cancel(list(self._lanes))  # only halted lanes are left
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._state = _State.CLOSED

    # Handing items over

    def try_submit(self, item: T, lane: Lane, *, nbytes: int = 0) -> Receipt[T]:
        """Queue ``item`` on ``lane`` now, or raise :class:`LaneFullError` if there is no room."""
        if self._state is not _State.OPEN:
            raise SenderClosedError("the sender is " + self._state.value)
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _LaneState()
        elif state.halted:
            raise LaneHaltedError(lane, state.halted_by)
        elif len(state) >= self._lane_capacity or (
            self._lane_bytes is not None and state.nbytes + nbytes > self._lane_bytes and state
        ):
            raise LaneFullError(lane)
        receipt = Receipt(item, lane, nbytes, asyncio.get_running_loop().create_future())
        state.queue.append(receipt)
        state.nbytes += nbytes
        if state.worker is None:
            assert self._tasks is not None  # noqa: S101 - OPEN implies entered
            state.worker = self._tasks.create_task(self._run_lane(lane, state))
        return receipt

    async def submit(self, item: T, lane: Lane, *, nbytes: int = 0) -> Receipt[T]:
        """Queue ``item`` on ``lane``, waiting (not blocking the loop) while the lane is full."""
        while True:
            try:
                return self.try_submit(item, lane, nbytes=nbytes)
            except LaneFullError:
                state = self._lanes[lane]
                if state.space is None:
                    state.space = asyncio.Event()
                await state.space.wait()

    # Watching and steering lanes

    def lanes(self) -> list[Lane]:
        """The lanes that hold items or are halted."""
        return list(self._lanes)

    def occupancy(self, lane: Lane) -> tuple[int, int, int]:
        """``(queued, in_flight, nbytes)`` of a lane; zeros for an unknown one."""
        state = self._lanes.get(lane)
        if state is None:
            return 0, 0, 0
        return len(state.queue), int(state.current is not None), state.nbytes

    def halted(self, lane: Lane) -> BaseException | None:
        """The error that halted ``lane``, or ``None`` if it is not halted."""
        state = self._lanes.get(lane)
        return state.halted_by if state is not None else None

    async def drain(
        self, lanes: Iterable[Lane] | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until the given lanes (default: all) hold nothing; ``False`` on timeout."""
        wanted = None if lanes is None else set(lanes)

        def idle() -> bool:
            keys = self._lanes.keys() if wanted is None else wanted & self._lanes.keys()
            return all(not self._lanes[key] for key in keys)

        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._lane_idled.clear()
                    if idle():
                        return True
                    await self._lane_idled.wait()
        except TimeoutError:
            return False

    def discard_queued(self, lanes: Iterable[Lane]) -> int:
        """Cancel the unstarted items of ``lanes``; in-flight ones go on. Returns the count."""
        count = 0
        for lane in lanes:
            state = self._lanes.get(lane)
            if state is None:
                continue
            while state.queue:
                receipt = state.queue.pop()
                state.nbytes -= receipt.nbytes
                receipt._settle(None)
                count += 1
            self._signal(state)
        return count

    def cancel(self, lanes: Iterable[Lane]) -> int:
        """Drop ``lanes`` entirely: cancel queued and in-flight items, clear any halt."""
        count = 0
        for lane in lanes:
            count += self.discard_queued([lane])
            state = self._lanes.pop(lane, None)
            if state is None:
                continue
            if state.current is not None:
                count += 1
            if state.worker is not None:
                state.worker.cancel()
        self._notify_idle()
        return count

    # The lane worker

    async def _run_lane(self, lane: Lane, state: _LaneState[T]) -> None:
        """Send a lane's items one by one; exit when it is empty, so idle lanes cost nothing."""
        try:
            while state.queue and not state.halted:
                receipt = state.current = state.queue.popleft()
                try:
                    await self._deliver(lane, state, receipt)
                finally:
                    state.current = None
                    state.nbytes -= receipt.nbytes
                    if not receipt.done():
                        receipt._settle(None)
                self._signal(state)
        finally:
            state.worker = None
            if self._lanes.get(lane) is state and not state and not state.halted:
                del self._lanes[lane]
            self._notify_idle()

    async def _deliver(self, lane: Lane, state: _LaneState[T], receipt: Receipt[T]) -> None:
        started = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            async with self._slots:
                try:
                    await self._call(receipt.item)
                except Exception as error:
                    failure: Exception = error
                else:
                    delivery = Delivery(attempt, started, self._clock.monotonic())
                    receipt._settle(delivery)
                    return
            if not getattr(failure, "retryable", True) or self._backoff.exhausted(attempt):
                self._fail(lane, state, receipt, failure, attempt)
                return
            delay = self._backoff.delay(attempt, getattr(failure, "retry_after", None))
            if self._on_retry is not None:
                self._on_retry(receipt.item, lane, failure, attempt, delay)
            await self._clock.sleep(delay)

    async def _call(self, item: T) -> object:
        if self._is_async:
            return await self._send(item)  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, partial(self._send, item))
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            return await result
        return result

    def _fail(
        self, lane: Lane, state: _LaneState[T], receipt: Receipt[T], error: Exception, attempt: int
    ) -> None:
        log.error("sender.item_failed", lane=repr(lane), attempts=attempt, error=repr(error))
        receipt._settle(None, error)
        if self._halt_on_rejection:
            state.halted_by = error
            while state.queue:
                queued = state.queue.popleft()
                state.nbytes -= queued.nbytes
                queued._settle(None, LaneHaltedError(lane, error))

    def _signal(self, state: _LaneState[T]) -> None:
        if state.space is not None:
            state.space.set()
            state.space = None

    def _notify_idle(self) -> None:
        self._lane_idled.set()
