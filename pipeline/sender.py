"""The non-blocking ordered sender: hand items over now, have them delivered in order.

``await asyncio.create_task(send(item))`` in a loop is serial: N items cost N round trips. Firing
tasks without awaiting them is concurrent but loses order and loses errors. An
:class:`OrderedSender` sits between the two: items are grouped in *lanes* (a Kafka partition, a
key); lanes run concurrently up to a global limit, and within a lane an item is sent only once the
one before it has finished for good (accepted, or finally failed). A retryable failure keeps its
item at the head of its lane, so retries never reorder anything and block only that lane.

``submit`` returns a :class:`Receipt` without waiting on the network; the receipt resolves to a
:class:`Delivery` or raises the final error. Buffers are bounded per lane, in items and bytes.
With ``batch=`` a lane sends up to that many consecutive items in one call, and a batch that fails
for good is split in halves until the failing item is alone, so the items before it still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from pipeline.clock import Clock, SystemClock
from pipeline.errors import LaneFullError, LaneHaltedError, SenderClosedError
from pipeline.retry import Backoff
from pipeline.summary import Repeats

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
Lane = Hashable

# A library logs through the standard library and leaves output to the application.
log = logging.getLogger("pipeline.sender")

# Which sender and lane the running task works for: set by each lane worker in its own task.
_LANE: ContextVar[tuple[OrderedSender[Any], _LaneState[Any]] | None] = ContextVar(
    "pipeline_sender_lane", default=None
)


async def call_blocking(function: Callable[..., R], *args: object) -> R:
    """Run a blocking ``function(*args)`` without blocking the loop, as the current lane's call.

    An async send function that must call blocking code (a client library nobody can change)
    uses this: in a lane it runs in the sender's thread pool and the lane stays busy until the
    call returns, even if the lane is cancelled meanwhile, so two calls of one lane never
    overlap; outside a lane it is ``asyncio.to_thread``.
    """
    current = _LANE.get()
    if current is None:
        return await asyncio.to_thread(function, *args)
    sender, state = current
    return await sender._in_thread(state, function, *args)


def current_attempt() -> int:
    """Which attempt at its items the running send is: 1, then 2 for the first retry, and so on.

    An async send function that reports attempts (a dead letter's headers do) reads the count
    here rather than keep its own: counts kept per item outlive the items the sender gave up on
    (a lane cancelled by a revoke is never retried), and grow for ever. Outside a lane it is 1.
    """
    current = _LANE.get()
    return 1 if current is None else current[1].attempt


def is_async_callable(function: Callable[..., object]) -> bool:
    """Whether ``function`` is awaited, or is blocking code to run in a thread.

    An object whose ``__call__`` is ``async def`` counts as async too.
    """
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    )


class _DaemonThreads:
    """A bounded pool of daemon threads for blocking calls.

    ``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so one
    abandoned call that never returns would hold the process long past any shutdown deadline.
    These threads are daemons: once the caller has given up on a call, nothing waits for it.
    Threads start as calls need them, up to ``max_workers``, and are reused.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[object, ...]]]
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, function: Callable[..., R], *args: object) -> Future[R]:
        """Run ``function(*args)`` in a thread; the future gets what it returns or raises."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                msg = "the thread pool is shut down"
                raise RuntimeError(msg)
            self._work.put((future, function, args))
            if not self._idle.acquire(blocking=False) and self._threads < self._max_workers:
                self._threads += 1
                name = f"{self._name}_{self._threads}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    def shutdown(self) -> None:
        """Cancel calls not yet started and let idle threads end; running calls run on."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    future, _, _ = self._work.get_nowait()
                except queue.Empty:
                    break
                future.cancel()
            for _ in range(self._threads):
                self._work.put((Future(), _stop, ()))

    def _serve(self) -> None:
        while True:
            future, function, args = self._work.get()
            if function is _stop:
                return
            if future.set_running_or_notify_cancel():
                try:
                    result = function(*args)
                except BaseException as error:  # the caller gets it, as from any pool
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future, function, args  # a finished call's objects must not outlive it here
            self._idle.release()


def _stop() -> None:
    """The marker that ends a :class:`_DaemonThreads` worker."""


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


class _Outcome(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    FAILED = "failed"
    CANCELLED = "cancelled"


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
        self._outcome = _Outcome.PENDING
        self._error: BaseException | None = None
        self._attempts = 0
        self._result: object = None
        self._started = self._finished = 0.0
        self._future: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[Receipt[T]], None]] | None = None

    def __repr__(self) -> str:
        state = self._outcome.value
        if self._outcome is _Outcome.ACCEPTED:
            state += f" after {self._attempts} attempt(s)"
        elif self._outcome is _Outcome.FAILED:
            state += f": {self._error!r}"
        return f"<Receipt lane={self.lane!r} item={self.item!r} {state}>"

    def __await__(self) -> Generator[Any, None, Delivery]:
        while self._outcome is _Outcome.PENDING:
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
        return self._outcome is not _Outcome.PENDING

    def cancelled(self) -> bool:
        """Whether the item was dropped without a final answer."""
        return self._outcome is _Outcome.CANCELLED

    def exception(self) -> BaseException | None:
        """The final error of a finished item, ``None`` if it was accepted (like a future's)."""
        if self._outcome is _Outcome.PENDING:
            raise asyncio.InvalidStateError("the item has not finished")
        if self._outcome is _Outcome.CANCELLED:
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
        if self._outcome is not _Outcome.PENDING:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def _settle(self, outcome: _Outcome, error: BaseException | None = None) -> bool:
        if self._outcome is not _Outcome.PENDING:
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


class _Phase(enum.Enum):
    WAITING = "waiting"  # for a slot, the gate, or more items to batch
    SENDING = "sending"  # an attempt is on the wire
    BACKOFF = "backoff"  # sleeping before a retry


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _LaneState(Generic[T]):
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
        self.phase = _Phase.WAITING
        # A blocking call keeps running in its thread whatever was cancelled: the lane stays busy
        # until it returns, so two calls of one lane never overlap.
        self.thread_call: Future[object] | None = None

    def __len__(self) -> int:
        return len(self.queue) + len(self.current) + self.busy_in_thread

    @property
    def busy_in_thread(self) -> int:
        return int(self.thread_call is not None and not self.thread_call.done())


class OrderedSender(Generic[T]):
    """Deliver items through ``send`` in order per lane, concurrently across lanes.

    Args:
        send: ``async def send(item)`` or a plain blocking ``def send(item)`` (run in a thread pool
            of ``max_in_flight`` threads, so the event loop never blocks); with ``batch`` it gets a
            list of consecutive items of one lane. It returns on acceptance and raises otherwise.
        max_in_flight: Attempts running at once, across all lanes.
        lane_capacity: Items a lane may hold (queued plus in flight).
        lane_bytes: Bytes a lane may hold, as declared by ``submit(..., nbytes=)``. A lane always
            takes one item when empty, so an oversized item cannot wedge it.
        backoff: The :class:`RetryPolicy`. The default :class:`~pipeline.retry.Backoff` retries
            without limit every error except one whose ``retryable`` attribute is false and the
            programming and data errors (``TypeError``, ``ValueError``, ...; see
            :func:`~pipeline.retry.is_retryable`). ``Backoff(max_attempts=n)`` bounds attempts.
        batch: Send up to this many consecutive items of a lane per call.
        gate: Admission to the downstream, shared by all lanes (see :class:`Gate`).
        halt_on_rejection: Stop a lane at its first final failure: later items of that lane fail
            with :class:`~pipeline.errors.LaneHaltedError` unsent, until :meth:`cancel` clears it.
        on_retry: Told of every scheduled retry.
        on_done: Called with each receipt as it finishes, after the receipt's own callbacks;
            cheaper than a callback per receipt when one function watches them all.
        retry_log_interval: Each lane's retries are logged (stdlib ``logging``, warning): the first
            of a streak at once, then a count every this many seconds; ``None`` for silence.
        clock: Time source, for tests.
    """

    def __init__(
        self,
        send: Callable[[Any], Awaitable[object]] | Callable[[Any], object],
        *,
        max_in_flight: int = 64,
        lane_capacity: int = 1_000,
        lane_bytes: int | None = None,
        backoff: RetryPolicy | None = None,
        batch: BatchLimits | None = None,
        gate: Gate | None = None,
        halt_on_rejection: bool = False,
        on_retry: RetryObserver[T] | None = None,
        on_done: Callable[[Receipt[T]], None] | None = None,
        retry_log_interval: float | None = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not callable(send):
            msg = f"send must be a function or other callable, not {type(send).__name__}"
            raise TypeError(msg)
        if max_in_flight < 1 or lane_capacity < 1 or (batch is not None and batch.max_items < 1):
            msg = "max_in_flight, lane_capacity and batch.max_items must be at least 1"
            raise ValueError(msg)
        self._send = send
        self._is_async = is_async_callable(send)
        self._executor: _DaemonThreads | None = None
        self._max_in_flight = max_in_flight
        self._lane_capacity = lane_capacity
        self._lane_bytes = lane_bytes
        self._retry: RetryPolicy = backoff or Backoff()
        self._batch = batch
        self._gate = gate
        self._halt_on_rejection = halt_on_rejection
        self._on_retry = on_retry
        self._on_done = on_done
        self._clock = clock or SystemClock()
        self._retry_log = Repeats(retry_log_interval, self._clock) if retry_log_interval else None
        self._lanes: dict[Lane, _LaneState[T]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lane_idled = asyncio.Event()
        self._deadline_drains: list[frozenset[Lane] | None] = []
        self._parked_cancels = 0
        self._state = _State.UNOPENED
        self._tasks: asyncio.TaskGroup | None = None
        self.abandoned_calls = 0

    def __repr__(self) -> str:
        busy = sum(1 for state in self._lanes.values() if state)
        return f"<OrderedSender {self._state.value} lanes={len(self._lanes)} busy={busy}>"

    # Lifecycle

    async def __aenter__(self) -> OrderedSender[T]:
        if self._state is not _State.UNOPENED:
            msg = "an OrderedSender can be opened only once"
            raise RuntimeError(msg)
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._state = _State.OPEN
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # The lane workers live in a task group, but the caller's own exception must come out of
        # `async with` as it went in: never wrapped in an ExceptionGroup.
        assert self._tasks is not None  # noqa: S101 - set by __aenter__
        try:
            await self.close(timeout=None if exc_type is None else 0)
        finally:
            self.cancel(list(self._lanes))
            await self._tasks.__aexit__(None, None, None)

    async def close(self, timeout: float | None = None) -> None:
        """Take no more items and finish, within ``timeout`` seconds if given.

        Without a timeout every lane is delivered to the end, retries included. With one, this is
        a drain with a deadline (see :meth:`drain`): attempts on the wire may finish, lanes that
        would sleep before a retry are cancelled at once, and whatever is left at the deadline is
        cancelled. Blocking calls still running in their threads are waited for until the
        deadline too; those that outlive it are abandoned (counted in :attr:`abandoned_calls`).
        Idempotent: later calls return at once.
        """
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._state = _State.CLOSING
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        await self.drain(timeout=timeout)
        cancelled = self.cancel(list(self._lanes))
        if cancelled and timeout:
            log.warning(
                "sender: close(timeout=%s) cancelled %d unfinished item(s)", timeout, cancelled
            )
        self.abandoned_calls = await self._wait_for_threads(deadline)
        if self.abandoned_calls:
            log.warning(
                "sender: %d blocking call(s) still running at the deadline were abandoned",
                self.abandoned_calls,
            )
        if self._executor is not None:
            self._executor.shutdown()
        self._state = _State.CLOSED

    async def _wait_for_threads(self, deadline: float | None) -> int:
        running = [s.thread_call for s in self._lanes.values() if s.busy_in_thread]
        if not running:
            return 0
        timeout = None if deadline is None else max(deadline - self._clock.monotonic(), 0.0)
        waiting = [asyncio.wrap_future(call) for call in running if call is not None]
        _, pending = await asyncio.wait(waiting, timeout=timeout)
        return len(pending)

    # Handing items over

    def try_submit(self, item: T, lane: Lane, *, nbytes: int = 0, tag: object = None) -> Receipt[T]:
        """Queue ``item`` on ``lane`` now, or raise :class:`LaneFullError` if there is no room.

        ``tag`` is kept on the receipt for the caller (the stage keeps the partition's state).
        """
        if self._state is not _State.OPEN:
            raise SenderClosedError("the sender is " + self._state.value)
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _LaneState()
        elif state.halted_by is not None:
            raise LaneHaltedError(lane, state.halted_by)
        elif len(state.queue) + len(state.current) >= self._lane_capacity or (
            self._lane_bytes is not None and state.nbytes + nbytes > self._lane_bytes and state
        ):
            raise LaneFullError(lane)
        receipt = Receipt(item, lane, nbytes, tag)
        state.queue.append(receipt)
        state.nbytes += nbytes
        if state.arrived is not None:
            state.arrived.set()
        if state.worker is None and not state.busy_in_thread:
            self._start_worker(lane, state)
        return receipt

    async def submit(
        self, item: T, lane: Lane, *, nbytes: int = 0, tag: object = None
    ) -> Receipt[T]:
        """Queue ``item`` on ``lane``, waiting (not blocking the loop) while the lane is full."""
        while True:
            try:
                return self.try_submit(item, lane, nbytes=nbytes, tag=tag)
            except LaneFullError:
                state = self._lanes[lane]
                if state.space is None:
                    state.space = asyncio.Event()
                await state.space.wait()

    # Watching and steering lanes

    def lanes(self) -> list[Lane]:
        """The lanes that hold items, run a call, or are halted."""
        return list(self._lanes)

    def occupancy(self, lane: Lane) -> tuple[int, int, int]:
        """``(queued, in_flight, nbytes)`` of a lane; zeros for an unknown one.

        ``in_flight`` counts the items of an attempt on the wire, not a lane sleeping before a
        retry, plus a blocking call that still runs after its item was cancelled.
        """
        state = self._lanes.get(lane)
        if state is None:
            return 0, 0, 0
        on_wire = len(state.current) if state.phase is _Phase.SENDING else 0
        return len(state.queue), on_wire + state.busy_in_thread, state.nbytes

    def sending(self, lane: Lane) -> list[T]:
        """The items of ``lane`` whose attempt is on the wire right now (empty when none is)."""
        state = self._lanes.get(lane)
        if state is None or state.phase is not _Phase.SENDING:
            return []
        return [receipt.item for receipt in state.current]

    def halted(self, lane: Lane) -> BaseException | None:
        """The error that halted ``lane``, or ``None`` if it is not halted."""
        state = self._lanes.get(lane)
        return state.halted_by if state is not None else None

    async def drain(
        self, lanes: Iterable[Lane] | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until the given lanes (default: all) hold nothing.

        Without a timeout this waits for every item, however many retries it takes. With one it
        is a drain with a deadline, as a shutdown or a rebalance needs: attempts on the wire may
        finish and lanes go on through their queues, but a lane that would sleep before a retry,
        or wait at a blocked gate, cannot finish in time, so it is cancelled at once (its items
        are cancelled, never lost: they were not accepted). Returns ``True`` when the lanes
        emptied with nothing cancelled, ``False`` otherwise.
        """
        wanted = None if lanes is None else frozenset(lanes)
        cancelled = 0
        parked_before = self._parked_cancels
        if timeout is not None:
            self._deadline_drains.append(wanted)
            cancelled = self._cancel_parked(wanted)

        def idle() -> bool:
            keys = self._lanes.keys() if wanted is None else wanted & self._lanes.keys()
            return all(not self._lanes[key] for key in keys)

        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._lane_idled.clear()
                    if idle():
                        return not cancelled and self._parked_cancels == parked_before
                    await self._lane_idled.wait()
        except TimeoutError:
            return False
        finally:
            if timeout is not None:
                self._deadline_drains.remove(wanted)

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
                count += self._finish(receipt, _Outcome.CANCELLED)
            self._signal_space(state)
        return count

    def cancel(self, lanes: Iterable[Lane]) -> int:
        """Drop ``lanes`` entirely: cancel queued and in-flight items, clear any halt.

        A blocking call already running in a thread cannot be stopped: its lane stays busy until
        the call returns, and items submitted meanwhile wait for it.
        """
        count = 0
        for lane in lanes:
            count += self.discard_queued([lane])
            state = self._lanes.get(lane)
            if state is None:
                continue
            count += sum(self._finish(r, _Outcome.CANCELLED) for r in state.current)
            state.halted_by = None
            if state.worker is not None:
                state.worker.cancel()  # it forgets the lane, or restarts it for newer items
            elif not state.busy_in_thread:
                del self._lanes[lane]
        self._lane_idled.set()
        return count

    # The lane worker

    def _start_worker(self, lane: Lane, state: _LaneState[T]) -> None:
        assert self._tasks is not None  # noqa: S101 - OPEN implies entered
        worker = state.worker = self._tasks.create_task(self._run_lane(lane, state))
        worker.add_done_callback(partial(self._worker_done, lane, state))

    async def _run_lane(self, lane: Lane, state: _LaneState[T]) -> None:
        """Send a lane's items in order; exit when it is empty, so idle lanes cost nothing."""
        _LANE.set((self, state))  # this task's own context: for `call_blocking`
        while state.queue and state.halted_by is None:
            batch = await self._take_batch(state)
            state.current = batch
            try:
                finished = await self._deliver(lane, state, batch)
            finally:
                state.current = []
                for receipt in batch:
                    state.nbytes -= receipt.nbytes
                    if receipt._outcome is _Outcome.PENDING:
                        self._finish(receipt, _Outcome.CANCELLED)
            if not finished:
                # An item of this lane ended unaccepted: sending the next would reorder them.
                self._drop(state)
                self._parked_cancels += 1
            self._signal_space(state)
        state.worker = None

    def _worker_done(self, lane: Lane, state: _LaneState[T], worker: asyncio.Task[None]) -> None:
        """Clean up after a worker, also one cancelled before it ever ran."""
        if state.worker is worker:
            state.worker = None
        if state.busy_in_thread:
            assert state.thread_call is not None  # noqa: S101 - busy implies a call
            state.thread_call.add_done_callback(
                partial(self._returned_in_thread, asyncio.get_running_loop(), lane, state)
            )
        else:
            self._resume_or_forget(lane, state)
        self._signal_space(state)
        self._lane_idled.set()

    def _returned_in_thread(
        self, loop: asyncio.AbstractEventLoop, lane: Lane, state: _LaneState[T], _: object
    ) -> None:
        """Tell the loop that a cancelled lane's call returned, if the loop is still there.

        An abandoned call may return long after the sender closed and its loop ended: then
        nobody is left to tell, and the return is ignored.
        """
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(self._thread_returned, lane, state)

    def _thread_returned(self, lane: Lane, state: _LaneState[T]) -> None:
        """A blocking call whose item was cancelled has returned: its lane may go on."""
        if not state.busy_in_thread:
            self._resume_or_forget(lane, state)
        self._lane_idled.set()

    def _resume_or_forget(self, lane: Lane, state: _LaneState[T]) -> None:
        if self._lanes.get(lane) is not state or state.worker is not None:
            return
        if state.queue and state.halted_by is None and self._state is _State.OPEN:
            self._start_worker(lane, state)
        elif not state and state.halted_by is None:
            del self._lanes[lane]

    def _drop(self, state: _LaneState[T]) -> None:
        """Cancel everything a lane holds (the worker releases the bytes of its current batch)."""
        for receipt in state.current:
            self._finish(receipt, _Outcome.CANCELLED)
        while state.queue:
            receipt = state.queue.popleft()
            state.nbytes -= receipt.nbytes
            self._finish(receipt, _Outcome.CANCELLED)

    async def _take_batch(self, state: _LaneState[T]) -> list[Receipt[T]]:
        limits = self._batch
        if limits is None:
            return [state.queue.popleft()]
        queue = state.queue
        if len(queue) < limits.max_items and limits.linger > 0 and not self._deadline_drains:
            state.arrived = asyncio.Event()
            try:
                async with asyncio.timeout(limits.linger):
                    while len(queue) < limits.max_items:
                        state.arrived.clear()
                        await state.arrived.wait()
            except TimeoutError:
                pass
            finally:
                state.arrived = None
        batch = [queue.popleft()]
        nbytes = batch[0].nbytes
        while queue and len(batch) < limits.max_items:
            nbytes += queue[0].nbytes
            if nbytes > limits.max_bytes:
                break
            batch.append(queue.popleft())
        return batch

    async def _deliver(self, lane: Lane, state: _LaneState[T], batch: list[Receipt[T]]) -> bool:
        """Try ``batch`` until it is accepted or fails for good; split a failed batch.

        Each attempt takes a slot, passes the gate and calls ``send``, written out here rather
        than in helpers: every coroutine level is paid again at each resumption of the request,
        and on a fast API that is most of the sender's cost. Returns ``False`` when a deadline
        drain stopped it before an attempt it would have had to wait for (nothing settled).
        """
        clock, slots, gate = self._clock, self._slots, self._gate
        started = clock.monotonic()
        payload: object = [r.item for r in batch] if self._batch is not None else batch[0].item
        attempt = 0
        while True:
            attempt += 1
            failure: Exception | None = None
            probe = False
            await slots.acquire()
            try:
                if gate is not None and not gate.clear:
                    if gate.blocked and self._parked(lane):
                        return False  # a deadline drain cannot wait at the gate either
                    probe = await gate.admit()
                state.phase, state.attempt = _Phase.SENDING, attempt
                if self._is_async:
                    result = await self._send(payload)  # type: ignore[misc]
                else:
                    result = await self._call_blocking(state, payload)
            except Exception as error:  # every failure is the send function's answer
                failure = error
            except BaseException as error:  # cancelled: the gate frees a probe's place
                if gate is not None:
                    gate.record(error, probe)
                raise
            finally:
                state.phase = _Phase.WAITING
                slots.release()
            if gate is not None:
                gate.record(failure, probe)
            if failure is None:
                self._accept(lane, batch, attempt, started, result)
                return True
            ended = await self._after_failure(lane, state, batch, failure, attempt)
            if ended is not None:
                return ended

    def _accept(
        self, lane: Lane, batch: list[Receipt[T]], attempt: int, started: float, result: object
    ) -> None:
        finished = self._clock.monotonic()
        if self._retry_log is not None:
            self._retry_log.clear(lane)
        for receipt in batch:
            receipt._attempts, receipt._started, receipt._finished = attempt, started, finished
            receipt._result = result
            self._finish(receipt, _Outcome.ACCEPTED)

    async def _after_failure(
        self,
        lane: Lane,
        state: _LaneState[T],
        batch: list[Receipt[T]],
        failure: Exception,
        attempt: int,
    ) -> bool | None:
        """Fail, split or wait before the next attempt; ``None`` means try again."""
        delay = self._retry.retry_delay(failure, attempt)
        if delay is None:
            if len(batch) > 1:
                return await self._split(lane, state, batch)
            self._fail(lane, state, batch[0], failure, attempt)
            return True
        self._note_retry(batch[0], lane, failure, attempt, delay)
        if self._parked(lane):
            return False  # a deadline drain cannot wait for a retry
        state.phase = _Phase.BACKOFF
        try:
            await self._clock.sleep(delay)
        finally:
            state.phase = _Phase.WAITING
        return None

    async def _split(self, lane: Lane, state: _LaneState[T], batch: list[Receipt[T]]) -> bool:
        """Deliver each half of a batch that failed for good, until the culprit is alone."""
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            if state.halted_by is not None:
                for receipt in half:
                    self._finish(receipt, _Outcome.FAILED, LaneHaltedError(lane, state.halted_by))
            elif not await self._deliver(lane, state, half):
                return False
        return True

    async def _call_blocking(self, state: _LaneState[T], payload: object) -> object:
        result = await self._in_thread(state, self._send, payload)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            return await result
        return result

    async def _in_thread(
        self, state: _LaneState[T], function: Callable[..., R], *args: object
    ) -> R:
        """Run a blocking call of ``state``'s lane in the pool.

        The lane stays busy until the call returns, even if the lane is cancelled meanwhile.
        """
        if self._executor is None:
            self._executor = _DaemonThreads(self._max_in_flight, "ordered-sender")
        call = self._executor.submit(function, *args)
        state.thread_call = call  # type: ignore[assignment]
        return await asyncio.wrap_future(call)

    def _parked(self, lane: Lane) -> bool:
        return any(d is None or lane in d for d in self._deadline_drains)

    def _cancel_parked(self, lanes: frozenset[Lane] | None) -> int:
        """At the start of a deadline drain: cancel lanes that sleep or wait at a blocked gate."""
        gate_blocked = self._gate is not None and self._gate.blocked
        parked = [
            lane
            for lane, state in self._lanes.items()
            if (lanes is None or lane in lanes)
            and state.current
            and (state.phase is _Phase.BACKOFF or (gate_blocked and state.phase is _Phase.WAITING))
        ]
        return self.cancel(parked) if parked else 0

    def _note_retry(
        self, receipt: Receipt[T], lane: Lane, error: BaseException, attempt: int, delay: float
    ) -> None:
        if self._on_retry is not None:
            self._on_retry(receipt.item, lane, error, attempt, delay)
        if self._retry_log is None or (held := self._retry_log.note(lane)) is None:
            return
        if held:
            log.warning(
                "sender: lane %r still failing: %d more retries since the last line; attempt %d"
                " failed, retrying in %.2fs: %r",
                lane,
                held,
                attempt,
                delay,
                error,
            )
        else:
            log.warning(
                "sender: lane %r attempt %d failed, retrying in %.2fs: %r",
                lane,
                attempt,
                delay,
                error,
            )

    def _fail(
        self, lane: Lane, state: _LaneState[T], receipt: Receipt[T], error: Exception, attempt: int
    ) -> None:
        receipt._attempts = attempt
        self._finish(receipt, _Outcome.FAILED, error)
        if self._halt_on_rejection:
            state.halted_by = error
            while state.queue:
                queued = state.queue.popleft()
                state.nbytes -= queued.nbytes
                self._finish(queued, _Outcome.FAILED, LaneHaltedError(lane, error))

    def _finish(
        self, receipt: Receipt[T], outcome: _Outcome, error: BaseException | None = None
    ) -> int:
        if not receipt._settle(outcome, error):
            return 0
        if self._on_done is not None:
            try:
                self._on_done(receipt)
            except Exception:
                log.exception("sender: on_done failed (lane %r)", receipt.lane)
        return 1

    def _signal_space(self, state: _LaneState[T]) -> None:
        if state.space is not None:
            state.space.set()
            state.space = None
