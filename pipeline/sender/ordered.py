"""The ordered sender itself: lifecycle, handing items over, and each lane's worker."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeVar

from pipeline.clock import Clock, SystemClock
from pipeline.errors import LaneFullError, LaneHaltedError, SenderClosedError
from pipeline.retry import Backoff
from pipeline.sender.drain import Drains
from pipeline.sender.lane import CURRENT, LaneState, Phase
from pipeline.sender.protocols import BatchLimits, Gate, Lane, RetryObserver, RetryPolicy
from pipeline.sender.receipt import Outcome, Receipt
from pipeline.sender.threads import ThreadCalls, is_async_callable
from pipeline.summary import Repeats

T = TypeVar("T")

# A library logs through the standard library and leaves output to the application.
log = logging.getLogger("pipeline.sender")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Verdict(enum.Enum):
    """What an attempt at a batch leaves to do."""

    SETTLED = "settled"  # every item of the batch has its final answer
    RETRY = "retry"  # the batch goes again, after its backoff
    PARKED = "parked"  # a deadline drain stopped the lane before a wait: nothing settled


# Python 3.11 looks an enum member up through a descriptor, ~150 ns for each `Enum.MEMBER`: the
# per-item path reads these names instead.
_SETTLED, _PARKED = Verdict.SETTLED, Verdict.PARKED
_PENDING, _ACCEPTED = Outcome.PENDING, Outcome.ACCEPTED
_SENDING, _WAITING = Phase.SENDING, Phase.WAITING


# What the gate learns from an attempt that sent nothing: no answer, as from a cancelled one.
_NOT_ASKED = asyncio.CancelledError()


def _verdict(result: object) -> BaseException | None:
    """What the gate learns from a send that returned ``result``.

    A send function may let an item past without asking the API (a record too old to send); a
    result with ``answered = False`` says so, and the gate must not take it for the API's answer
    (it would end an outage on a probe that never went out).
    """
    return _NOT_ASKED if getattr(result, "answered", True) is False else None


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
        self._threads = ThreadCalls(max_in_flight)
        # Chosen here, once: an async `send` is awaited as it is, with no coroutine level of ours
        # around it; a blocking one goes through the threads.
        self._blocking: Callable[[LaneState[Any], object], Awaitable[object]] | None = (
            None if is_async_callable(send) else partial(self._threads.send, send)
        )
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
        self._lanes: dict[Lane, LaneState[T]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        self._drains = Drains(self._lanes, self._cancel_item, gate)
        self._state = _State.UNOPENED
        self._tasks: asyncio.TaskGroup | None = None
        self.abandoned_calls = 0

    def __repr__(self) -> str:
        busy = sum(1 for state in self._lanes.values() if not state.idle())
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
        timeout = None if deadline is None else max(deadline - self._clock.monotonic(), 0.0)
        self.abandoned_calls = await self._threads.wait(self._lanes.values(), timeout)
        if self.abandoned_calls:
            log.warning(
                "sender: %d blocking call(s) still running at the deadline were abandoned",
                self.abandoned_calls,
            )
        self._threads.shutdown()
        self._state = _State.CLOSED

    # Handing items over

    def try_submit(self, item: T, lane: Lane, *, nbytes: int = 0, tag: object = None) -> Receipt[T]:
        """Queue ``item`` on ``lane`` now, or raise :class:`LaneFullError` if there is no room.

        ``tag`` is kept on the receipt for the caller (the stage keeps the partition's state).
        """
        if self._state is not _State.OPEN:
            raise SenderClosedError("the sender is " + self._state.value)
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = LaneState()
        elif state.halted_by is not None:
            raise LaneHaltedError(lane, state.halted_by)
        elif len(state.queue) + len(state.current) >= self._lane_capacity or (
            self._lane_bytes is not None
            and state.nbytes + nbytes > self._lane_bytes
            and not state.idle()
        ):
            raise LaneFullError(lane)
        receipt = Receipt(item, lane, nbytes, tag)
        state.push(receipt)
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
        on_wire = len(state.current) if state.phase is Phase.SENDING else 0
        return len(state.queue), on_wire + state.busy_in_thread, state.nbytes

    def sending(self, lane: Lane) -> list[T]:
        """The items of ``lane`` whose attempt is on the wire right now (empty when none is)."""
        state = self._lanes.get(lane)
        if state is None or state.phase is not Phase.SENDING:
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
        return await self._drains.wait(lanes, timeout)

    def discard_queued(self, lanes: Iterable[Lane]) -> int:
        """Cancel the unstarted items of ``lanes``; in-flight ones go on. Returns the count."""
        return self._drains.discard_queued(lanes)

    def cancel(self, lanes: Iterable[Lane]) -> int:
        """Drop ``lanes`` entirely: cancel queued and in-flight items, clear any halt.

        A blocking call already running in a thread cannot be stopped: its lane stays busy until
        the call returns, and items submitted meanwhile wait for it.
        """
        return self._drains.cancel(lanes)

    # The lane worker

    def _start_worker(self, lane: Lane, state: LaneState[T]) -> None:
        assert self._tasks is not None  # noqa: S101 - OPEN implies entered
        worker = state.worker = self._tasks.create_task(self._run_lane(lane, state))
        worker.add_done_callback(partial(self._worker_done, lane, state))

    async def _run_lane(self, lane: Lane, state: LaneState[T]) -> None:
        """Send a lane's items in order; exit when it is empty, so idle lanes cost nothing."""
        CURRENT.set((self._threads, state))  # this task's own context: for `call_blocking`
        limits = self._batch
        while state.queue and state.halted_by is None:
            if limits is None:
                batch = [state.queue.popleft()]
            else:
                batch = await state.take_batch(limits, linger=self._drains.lingering)
            state.current = batch
            try:
                verdict = await self._deliver(lane, state, batch)
            finally:
                state.current = []
                for receipt in batch:  # one pass: the bytes, and whatever the attempt left
                    state.nbytes -= receipt.nbytes
                    if receipt._outcome is _PENDING:
                        self._finish(receipt, Outcome.CANCELLED)
            if verdict is _PARKED:
                self._drains.park(state)
            state.signal_space()
        state.worker = None

    def _worker_done(self, lane: Lane, state: LaneState[T], worker: asyncio.Task[None]) -> None:
        """Clean up after a worker, also one cancelled before it ever ran."""
        if state.worker is worker:
            state.worker = None
        if state.busy_in_thread:
            self._threads.when_returned(state, partial(self._thread_returned, lane, state))
        else:
            self._resume_or_forget(lane, state)
        state.signal_space()
        self._drains.idled.set()

    def _thread_returned(self, lane: Lane, state: LaneState[T]) -> None:
        """A blocking call whose item was cancelled has returned: its lane may go on."""
        if not state.busy_in_thread:
            self._resume_or_forget(lane, state)
        self._drains.idled.set()

    def _resume_or_forget(self, lane: Lane, state: LaneState[T]) -> None:
        if self._lanes.get(lane) is not state or state.worker is not None:
            return
        if state.queue and state.halted_by is None and self._state is _State.OPEN:
            self._start_worker(lane, state)
        elif state.idle() and state.halted_by is None:
            del self._lanes[lane]

    async def _deliver(self, lane: Lane, state: LaneState[T], batch: list[Receipt[T]]) -> Verdict:
        """Try ``batch`` until it is accepted or fails for good; split a failed batch.

        Each attempt takes a slot, passes the gate and calls ``send``, written out here rather
        than in helpers: every coroutine level is paid again at each resumption of the request,
        and on a fast API that is most of the sender's cost.
        """
        clock, slots, gate, blocking = self._clock, self._slots, self._gate, self._blocking
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
                    if gate.blocked and self._drains.covers(lane):
                        return Verdict.PARKED  # a deadline drain cannot wait at the gate either
                    probe = await gate.admit()
                state.phase, state.attempt = _SENDING, attempt
                if blocking is None:
                    result = await self._send(payload)  # type: ignore[misc]
                else:
                    result = await blocking(state, payload)
            except Exception as error:  # every failure is the send function's answer
                failure = error
            except BaseException as error:  # cancelled: the gate frees a probe's place
                if gate is not None:
                    gate.record(error, probe)
                raise
            finally:
                state.phase = _WAITING
                slots.release()
            if gate is not None:
                gate.record(failure if failure is not None else _verdict(result), probe)
            if failure is None:
                self._accept(lane, batch, attempt, started, result)
                return _SETTLED
            verdict = await self._after_failure(lane, state, batch, failure, attempt)
            if verdict is not Verdict.RETRY:
                return verdict

    def _accept(
        self, lane: Lane, batch: list[Receipt[T]], attempt: int, started: float, result: object
    ) -> None:
        finished = self._clock.monotonic()
        if self._retry_log is not None:
            self._retry_log.clear(lane)
        for receipt in batch:
            receipt._attempts, receipt._started, receipt._finished = attempt, started, finished
            receipt._result = result
            self._finish(receipt, _ACCEPTED)

    async def _after_failure(
        self,
        lane: Lane,
        state: LaneState[T],
        batch: list[Receipt[T]],
        failure: Exception,
        attempt: int,
    ) -> Verdict:
        """Fail, split, or sleep before the next attempt."""
        delay = self._retry.retry_delay(failure, attempt)
        if delay is None:
            if len(batch) > 1 and not getattr(failure, "delivered", False):
                return await self._split(lane, state, batch)
            self._fail(lane, state, batch[0], failure, attempt)
            for receipt in batch[1:]:  # delivered, so never split: failed behind the first
                self._finish(receipt, Outcome.FAILED, LaneHaltedError(lane, failure))
            return Verdict.SETTLED
        self._note_retry(batch[0], lane, failure, attempt, delay)
        if self._drains.covers(lane):
            return Verdict.PARKED  # a deadline drain cannot wait for a retry
        state.phase = Phase.BACKOFF
        try:
            await self._clock.sleep(delay)
        finally:
            state.phase = Phase.WAITING
        return Verdict.RETRY

    async def _split(self, lane: Lane, state: LaneState[T], batch: list[Receipt[T]]) -> Verdict:
        """Deliver each half of a batch that failed for good, until the culprit is alone."""
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            if state.halted_by is not None:
                for receipt in half:
                    self._finish(receipt, Outcome.FAILED, LaneHaltedError(lane, state.halted_by))
            elif await self._deliver(lane, state, half) is Verdict.PARKED:
                return Verdict.PARKED
        return Verdict.SETTLED

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
        self, lane: Lane, state: LaneState[T], receipt: Receipt[T], error: Exception, attempt: int
    ) -> None:
        receipt._attempts = attempt
        self._finish(receipt, Outcome.FAILED, error)
        if self._halt_on_rejection:
            state.halted_by = error
            for queued in state.unqueue():
                self._finish(queued, Outcome.FAILED, LaneHaltedError(lane, error))

    def _finish(
        self, receipt: Receipt[T], outcome: Outcome, error: BaseException | None = None
    ) -> int:
        if not receipt._settle(outcome, error):
            return 0
        if self._on_done is not None:
            try:
                self._on_done(receipt)
            except Exception:
                log.exception("sender: on_done failed (lane %r)", receipt.lane)
        return 1

    def _cancel_item(self, receipt: Receipt[T]) -> int:
        return self._finish(receipt, Outcome.CANCELLED)
