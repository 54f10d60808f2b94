"""The clock seam: the system clock waits on the loop; the fake keeps its promises instantly."""

from __future__ import annotations

import asyncio
import time

from pipeline.clock import SystemClock
from tests.fakes import FakeClock


async def test_waiting_for_a_change_ends_when_it_comes() -> None:
    """``wait`` returns as soon as the future is done, long before its timeout."""
    changed = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, changed.set_result, None)
    started = time.monotonic()

    await SystemClock().wait(changed, timeout=10.0)

    assert time.monotonic() - started < 5.0


async def test_waiting_for_a_change_that_does_not_come_leaves_it_to_the_others() -> None:
    """At its timeout ``wait`` returns and the future, shared by other waiters, stays pending."""
    changed = asyncio.get_running_loop().create_future()
    started = time.monotonic()

    await SystemClock().wait(changed, timeout=0.02)

    assert time.monotonic() - started >= 0.015
    assert not changed.done()


async def test_the_fake_ends_waits_pending_together_in_the_order_of_their_deadlines() -> None:
    """Two sleeps and a wait started at once end at their own deadlines, earliest first, and
    virtual time moves to each in turn, never back."""
    clock = FakeClock(start=100.0)
    changed = asyncio.get_running_loop().create_future()
    ended: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        ended.append((name, clock.monotonic()))

    async def waiter() -> None:
        await clock.wait(changed, timeout=2.0)
        ended.append(("wait", clock.monotonic()))

    await asyncio.gather(sleeper("late", 3.0), waiter(), sleeper("early", 1.0))

    assert [("early", 101.0), ("wait", 102.0), ("late", 103.0)] == ended
    assert not changed.done()


async def test_the_fake_ends_a_wait_when_the_change_comes_first_without_moving_time() -> None:
    """A change before the timeout ends the wait at the virtual time it came."""
    clock = FakeClock()
    changed = asyncio.get_running_loop().create_future()

    async def change_after(seconds: float) -> None:
        await clock.sleep(seconds)
        changed.set_result(None)

    async def waiter() -> float:
        await clock.wait(changed, timeout=5.0)
        return clock.monotonic()

    _, woke = await asyncio.gather(change_after(1.0), waiter())

    assert 1.0 == woke
