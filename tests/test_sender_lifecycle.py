"""The sender as a library: its lifecycle, its deadlines, its threads, and what it tells you."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from pipeline.errors import LaneFullError, RetryableSendError
from pipeline.retry import Backoff
from pipeline.sender import OrderedSender
from tests.fakes import FakeClock, Flaky, Gate


def failing(item: object) -> None:
    raise RetryableSendError(f"down for {item}", reason="5xx")


async def down(item: object) -> None:
    await asyncio.sleep(0)
    failing(item)


# Exceptions from the caller's own code


async def test_an_exception_in_the_body_comes_out_of_async_with_unchanged() -> None:
    """``LaneFullError`` raised by ``try_submit`` inside ``async with`` is caught by
    ``except LaneFullError``: the sender's task group never wraps it in an ExceptionGroup."""
    gate = Gate()

    async def overfill() -> None:
        async with OrderedSender(gate.send, lane_capacity=1) as sender:
            sender.try_submit(1, lane="a")
            sender.try_submit(2, lane="a")

    with pytest.raises(LaneFullError) as raised:
        await overfill()

    assert "a" == raised.value.lane


async def test_the_callers_own_error_type_is_kept_and_queued_items_are_cancelled() -> None:
    """Any exception of the body leaves ``async with`` as it was raised, and what was still
    queued ends cancelled, not lost in silence."""
    gate = Gate()

    receipts = []

    class Mine(Exception):
        pass

    async def fail_midway() -> None:
        async with OrderedSender(gate.send) as sender:
            receipts.append(sender.try_submit(1, lane="a"))
            raise Mine

    with pytest.raises(Mine):
        await fail_midway()

    assert receipts[0].cancelled()


def test_a_send_that_is_not_callable_is_refused_at_construction() -> None:
    """``OrderedSender("nope")`` is a ``TypeError`` at once, not a hang later."""
    with pytest.raises(TypeError, match="callable"):
        OrderedSender("nope")  # type: ignore[arg-type]


# What it says, and where


async def test_retries_are_logged_once_then_summarised_per_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries are visible through stdlib ``logging``: the first of a lane's streak at once, then
    one line per interval with how many were held back."""
    clock = FakeClock()
    flaky = Flaky({"x": [RetryableSendError("5xx", reason="5xx")] * 8})
    backoff = Backoff(initial=1.0, maximum=1.0, random=lambda: 1.0)
    caplog.set_level(logging.WARNING, logger="pipeline.sender")

    async with OrderedSender(
        flaky.send, backoff=backoff, clock=clock, retry_log_interval=3.0
    ) as sender:
        await sender.try_submit("x", "a")

    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.sender"]
    assert 3 == len(lines), lines  # attempts 1, 4 and 7 of 8 failures, one second apart
    assert "lane 'a' attempt 1 failed" in lines[0]
    assert "2 more retries" in lines[1]
    assert "attempt 4 failed" in lines[1]


async def test_a_success_ends_a_streak_and_each_lane_has_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a success the next failure of that lane is news again, as is any other lane's."""
    flaky = Flaky({"x": [RetryableSendError("5xx", reason="5xx")]})
    flaky.script.update({"y": [RetryableSendError("5xx", reason="5xx")]})
    caplog.set_level(logging.WARNING, logger="pipeline.sender")

    async with OrderedSender(flaky.send, clock=FakeClock(), retry_log_interval=60) as sender:
        await sender.try_submit("x", "a")
        flaky.script["x2"] = [RetryableSendError("5xx", reason="5xx")]
        await sender.try_submit("x2", "a")
        await sender.try_submit("y", "b")

    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.sender"]
    assert 2 == sum("lane 'a' attempt 1 failed" in line for line in lines)
    assert 1 == sum("lane 'b' attempt 1 failed" in line for line in lines)


async def test_nothing_is_printed_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """A library leaves output to its application: retries, a close with leftovers and a
    close without a timeout print nothing on stdout."""
    async with OrderedSender(down, clock=FakeClock(), backoff=Backoff(max_attempts=2)) as sender:
        sender.try_submit(1, "a")
    async with OrderedSender(Gate().send) as sender:
        sender.try_submit(1, "a")
        await sender.close(timeout=0.01)

    assert "" == capsys.readouterr().out


async def test_receipts_and_deliveries_say_which_item_and_lane() -> None:
    """Reprs name the item, the lane and the state; a delivery carries its item and lane."""
    flaky = Flaky({"x": [RetryableSendError("5xx", reason="5xx")]})

    async with OrderedSender(flaky.send, clock=FakeClock()) as sender:
        receipt = sender.try_submit("x", "a")
        pending = repr(receipt)
        delivery = await receipt

    assert "lane='a'" in pending
    assert "item='x'" in pending
    assert "pending" in pending
    assert "accepted after 2 attempt(s)" in repr(receipt)
    assert ("x", "a", 2) == (delivery.item, delivery.lane, delivery.attempts)
    assert delivery.finished >= delivery.started


# Deadlines: a lane sleeping before a retry is not in flight


async def test_a_deadline_drain_cancels_a_lane_sleeping_before_a_retry_at_once() -> None:
    """With a 30 s backoff ahead, a drain with a 5 s deadline does not wait it out: the lane is
    cancelled at once, the item behind it too (sending it would reorder them)."""
    backoff = Backoff(initial=30.0, maximum=30.0, random=lambda: 1.0)
    calls: list[int] = []

    async def send(item: int) -> None:
        calls.append(item)
        failing(item)

    async with OrderedSender(send, backoff=backoff) as sender:
        first = sender.try_submit(1, "a")
        second = sender.try_submit(2, "a")
        await asyncio.sleep(0.05)  # the first attempt failed; the lane sleeps
        started = time.monotonic()
        drained = await sender.drain(timeout=5)
        took = time.monotonic() - started

    assert not drained
    assert took < 0.5
    assert first.cancelled()
    assert second.cancelled()
    assert [1] == calls


async def test_a_deadline_drain_lets_attempts_on_the_wire_finish() -> None:
    """What is on the wire when the deadline drain starts is waited for and counts."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        receipt = sender.try_submit(1, "a")
        await gate.started.wait()
        draining = asyncio.create_task(sender.drain(timeout=5))
        await asyncio.sleep(0.05)
        gate.open()
        assert await draining

    assert 1 == (await receipt).attempts


async def test_a_lane_that_fails_during_a_deadline_drain_is_not_slept_on() -> None:
    """An attempt that fails while a deadline drain runs ends its lane there and then."""
    backoff = Backoff(initial=30.0, maximum=30.0, random=lambda: 1.0)
    release = asyncio.Event()

    async def send(item: int) -> None:
        await release.wait()
        failing(item)

    async with OrderedSender(send, backoff=backoff) as sender:
        receipt = sender.try_submit(1, "a")
        await asyncio.sleep(0.01)
        draining = asyncio.create_task(sender.drain(timeout=5))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        release.set()
        drained = await draining
        took = time.monotonic() - started

    assert not drained
    assert took < 0.5
    assert receipt.cancelled()


async def test_close_with_a_deadline_does_not_wait_out_retries() -> None:
    """``close(timeout=5)`` while the downstream is down returns at once, everything cancelled."""
    backoff = Backoff(initial=2.0, maximum=2.0, random=lambda: 1.0)
    sender = OrderedSender(down, backoff=backoff)
    async with sender:
        receipts = [sender.try_submit(i, i % 3) for i in range(9)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await sender.close(timeout=5)
        took = time.monotonic() - started

    assert took < 0.5
    assert all(r.cancelled() for r in receipts)


async def test_a_drain_without_a_deadline_waits_through_retries() -> None:
    """Without a deadline, drain waits for every item however many retries it takes."""
    flaky = Flaky({"x": [RetryableSendError("5xx", reason="5xx")] * 3})

    async with OrderedSender(flaky.send, clock=FakeClock()) as sender:
        receipt = sender.try_submit("x", "a")
        assert await sender.drain()

    assert 4 == receipt.result().attempts


# Blocking functions: a lane never runs two calls at once


class Blocking:
    """A blocking ``send`` that holds each call until released, counting overlap per lane."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls: list[int] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, item: int) -> None:
        with self._lock:
            self.calls.append(item)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            self.release.wait(10)
        finally:
            with self._lock:
                self.running -= 1


async def cancel_while_busy(
    blocking: Blocking, send: Callable[[int], Awaitable[object]] | Callable[[int], object]
) -> list[int]:
    """Cancel lane "a" while ``send`` is in ``blocking``'s first call, submit a second item,
    then release: the calls ``blocking`` saw before its release."""
    async with OrderedSender(send) as sender:
        sender.try_submit(1, "a")
        await asyncio.to_thread(blocking.started.wait, 5)
        sender.cancel(["a"])
        second = sender.try_submit(2, "a")
        await asyncio.sleep(0.2)
        calls_while_busy = list(blocking.calls)
        blocking.release.set()
        await second
    return calls_while_busy


async def test_a_cancelled_lane_stays_busy_until_its_blocking_call_returns() -> None:
    """``cancel()`` cannot stop a call running in a thread: the next item of that lane waits
    for it, so two calls of one lane never overlap."""
    blocking = Blocking()

    calls_while_busy = await cancel_while_busy(blocking, blocking)

    assert [1] == calls_while_busy
    assert [1, 2] == blocking.calls
    assert 1 == blocking.max_running


async def test_close_waits_for_blocking_calls_until_its_deadline_and_counts_the_rest() -> None:
    """A blocking call that outlives ``close(timeout)`` is abandoned, and counted."""
    send = Blocking()
    sender = OrderedSender(send)
    try:
        async with sender:
            sender.try_submit(1, "a")
            await asyncio.to_thread(send.started.wait, 5)
            started = time.monotonic()
            await sender.close(timeout=0.3)
            took = time.monotonic() - started
    finally:
        send.release.set()

    assert 1 == sender.abandoned_calls
    assert 0.25 < took < 2.0


async def test_close_without_leftovers_abandons_nothing() -> None:
    """A blocking call that returns within the deadline is not abandoned."""
    send = Blocking()
    send.release.set()
    sender = OrderedSender(send)

    async with sender:
        await sender.try_submit(1, "a")
        await sender.close(timeout=1)

    assert 0 == sender.abandoned_calls


async def test_a_blocking_call_made_by_an_async_send_keeps_its_lane_busy_too() -> None:
    """An async send that runs blocking code through ``call_blocking`` (as the function sink
    does) gets the same guarantee: after ``cancel()`` the lane waits for the running call."""
    from pipeline.sender import call_blocking  # noqa: PLC0415

    blocking = Blocking()

    async def send(item: int) -> None:
        await call_blocking(blocking, item)

    calls_while_busy = await cancel_while_busy(blocking, send)

    assert [1] == calls_while_busy
    assert 1 == blocking.max_running


def test_a_blocking_call_that_returns_after_the_loop_closed_is_ignored(caplog) -> None:
    """The loop that ran the sender is gone when an abandoned call finally returns: nothing is
    scheduled on the closed loop, and no "Event loop is closed" traceback is logged."""
    send = Blocking()
    returned = threading.Event()

    def send_then_note(item: int) -> None:
        try:
            send(item)
        finally:
            returned.set()

    async def abandon() -> None:
        async with OrderedSender(send_then_note) as sender:
            sender.try_submit(1, "a")
            await asyncio.to_thread(send.started.wait, 5)
            await sender.close(timeout=0.1)

    asyncio.run(abandon())
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        send.release.set()
        assert returned.wait(5)
        time.sleep(0.2)  # the pool's done-callbacks run just after the call returns

    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Event loop is closed" not in caplog.text


ABANDONING_PROGRAM = """
import asyncio, sys, time
from pipeline.sender import OrderedSender

def hang(item):
    print("called", flush=True)
    time.sleep(30)

async def main():
    async with OrderedSender(hang) as sender:
        sender.try_submit(1, "a")
        while not sender.occupancy("a")[1]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await sender.close(timeout=0.2)
    print("closed", time.monotonic(), flush=True)

asyncio.run(main())
"""


def test_an_abandoned_blocking_call_does_not_hold_the_interpreter_at_exit() -> None:
    """The sender's threads never block interpreter exit: a program whose blocking call hangs for
    30 s exits right after ``close(timeout)`` gave up on it."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", ABANDONING_PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started

    assert 0 == done.returncode, done.stderr
    assert "closed" in done.stdout
    assert took < 5.0, f"exit took {took:.1f}s"
