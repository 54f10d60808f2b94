"""The ordered sender: in order per lane, concurrent across lanes, bounded, retried, steerable."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import (
    LaneFullError,
    LaneHaltedError,
    RejectedError,
    RetryableSendError,
    SenderClosedError,
)
from pipeline.retry import Backoff
from pipeline.sender import Delivery, OrderedSender
from tests.fakes import FakeClock, Flaky, Gate

# A backoff whose jitter draw is always the top of the range: delays are exactly the caps.
TOP_OF_RANGE = Backoff(random=lambda: 1.0)


async def ticks(count: int) -> None:
    """Let the event loop run other tasks ``count`` times (latency without wall-clock time)."""
    for _ in range(count):
        await asyncio.sleep(0)


def retryable(reason: str = "5xx") -> RetryableSendError:
    return RetryableSendError(f"Space API answered {reason}", reason=reason)


def rejected() -> RejectedError:
    return RejectedError("Space API rejected the record with 422", reason="4xx", status=422)


class Throttled(Exception):
    """A user's own error type that asks for a retry after a given time."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"come back in {retry_after}s")
        self.retry_after = retry_after


class Invalid(Exception):
    """A user's own error type that must not be retried."""

    retryable = False


# The ordering property


@dataclass(frozen=True)
class ItemPlan:
    """How the fake API treats one item: its lane, latency, failures and final answer."""

    lane: int
    latency: int  # event-loop ticks per attempt
    failures: int  # retryable failures before the final answer
    rejected: bool  # the final answer is a rejection rather than an acceptance


class ScriptedApi:
    """An async ``send`` that follows a plan per item and records every attempt it sees."""

    def __init__(self, plans: list[ItemPlan]) -> None:
        self.plans = plans
        self.attempts: Counter[int] = Counter()
        self.events: list[tuple[str, int]] = []  # ("start" | "retry" | "accepted" | "rejected", i)
        self.rejections: dict[int, RejectedError] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lane_in_flight: Counter[int] = Counter()
        self.max_lane_in_flight = 0

    async def send(self, item: int) -> None:
        plan = self.plans[item]
        self.events.append(("start", item))
        self.in_flight += 1
        self.lane_in_flight[plan.lane] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_lane_in_flight = max(self.max_lane_in_flight, self.lane_in_flight[plan.lane])
        outcome = "accepted"
        try:
            await ticks(plan.latency)
            self.attempts[item] += 1
            if self.attempts[item] <= plan.failures:
                outcome = "retry"
                raise retryable()
            if plan.rejected:
                outcome = "rejected"
                self.rejections[item] = rejected()
                raise self.rejections[item]
        finally:
            self.in_flight -= 1
            self.lane_in_flight[plan.lane] -= 1
            self.events.append((outcome, item))


def expected_lane_events(
    plans: list[ItemPlan], items: list[int], *, halt: bool
) -> tuple[list[tuple[str, int]], list[int]]:
    """The exact event sequence one lane must show, and the items it must never send."""
    events: list[tuple[str, int]] = []
    for position, item in enumerate(items):
        plan = plans[item]
        events += [("start", item), ("retry", item)] * plan.failures
        events += [("start", item), ("rejected" if plan.rejected else "accepted", item)]
        if halt and plan.rejected:
            return events, items[position + 1 :]
    return events, []


async def run_plans(
    plans: list[ItemPlan], *, max_in_flight: int, halt: bool
) -> tuple[ScriptedApi, FakeClock, list]:
    api = ScriptedApi(plans)
    clock = FakeClock()
    sender: OrderedSender[int] = OrderedSender(
        api.send,
        max_in_flight=max_in_flight,
        backoff=TOP_OF_RANGE,
        halt_on_rejection=halt,
        clock=clock,
    )
    async with sender:
        receipts = [sender.try_submit(i, plan.lane) for i, plan in enumerate(plans)]
        async with asyncio.timeout(10):
            assert await sender.drain()
    return api, clock, receipts


item_plans = st.lists(
    st.builds(
        ItemPlan,
        lane=st.integers(0, 3),
        latency=st.integers(0, 3),
        failures=st.integers(0, 3),
        rejected=st.integers(0, 4).map(lambda n: n == 0),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(plans=item_plans, max_in_flight=st.integers(1, 4), halt=st.booleans())
def test_each_lane_sends_its_items_one_at_a_time_in_submission_order(
    plans: list[ItemPlan], max_in_flight: int, halt: bool
) -> None:
    """Per lane, item i+1 is first tried only after item i finished for good; retries hold it."""
    api, clock, receipts = asyncio.run(run_plans(plans, max_in_flight=max_in_flight, halt=halt))

    assert 1 == api.max_lane_in_flight, "two items of one lane were in flight together"
    assert api.max_in_flight <= max_in_flight
    retries = 0
    for lane in {plan.lane for plan in plans}:
        items = [i for i, plan in enumerate(plans) if plan.lane == lane]
        expected_events, never_sent = expected_lane_events(plans, items, halt=halt)
        assert expected_events == [event for event in api.events if event[1] in items]
        accepted = [item for kind, item in api.events if kind == "accepted" and item in items]
        assert [i for i in items if i not in never_sent and not plans[i].rejected] == accepted
        for item in items:
            receipt, plan = receipts[item], plans[item]
            error = receipt.exception()
            if item in never_sent:
                assert isinstance(error, LaneHaltedError)
                assert api.rejections[expected_events[-1][1]] is error.cause
                continue
            retries += plan.failures
            if plan.rejected:
                assert api.rejections[item] is error
            else:
                assert error is None
                assert plan.failures + 1 == receipt.result().attempts
    assert retries == len(clock.sleeps), "every retryable failure waits out one backoff"


# Concurrency


async def test_lanes_are_sent_concurrently() -> None:
    """The send of lane ``b`` starts while the send of lane ``a`` is still in flight."""
    in_flight: set[str] = set()
    overlapped: list[set[str]] = []

    async def slow_send(item: str) -> None:
        in_flight.add(item)
        overlapped.append(set(in_flight))
        await asyncio.sleep(0.05)
        in_flight.discard(item)

    async with OrderedSender(slow_send) as sender:
        receipts = [sender.try_submit("x", "a"), sender.try_submit("y", "b")]
        for receipt in receipts:
            await receipt

    assert {"x", "y"} in overlapped


async def test_attempts_in_flight_never_exceed_max_in_flight() -> None:
    """Across all lanes, at most ``max_in_flight`` sends run at once."""
    plans = [ItemPlan(lane=i % 10, latency=3, failures=0, rejected=False) for i in range(40)]
    api = ScriptedApi(plans)

    async with OrderedSender(api.send, max_in_flight=3) as sender:
        for i, plan in enumerate(plans):
            sender.try_submit(i, plan.lane)
        assert await sender.drain(timeout=5)

    assert 3 == api.max_in_flight
    assert 40 == sum(api.attempts.values())


async def test_a_blocking_send_runs_in_threads_and_keeps_lane_order() -> None:
    """A plain ``def send`` with ``time.sleep`` inside never blocks the event loop."""
    sent: list[tuple[str, int]] = []

    def blocking_send(item: tuple[str, int]) -> None:
        time.sleep(0.02)
        sent.append(item)

    loop_ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal loop_ticks
        while not stop.is_set():
            loop_ticks += 1
            await asyncio.sleep(0.001)

    async with OrderedSender(blocking_send, max_in_flight=4) as sender:
        receipts = [sender.try_submit((lane, i), lane) for i in range(5) for lane in "ab"]
        ticking = asyncio.create_task(ticker())
        assert await sender.drain(timeout=5)
        stop.set()
        await ticking

    assert all(receipt.exception() is None for receipt in receipts)
    for lane in "ab":
        assert [(lane, i) for i in range(5)] == [item for item in sent if item[0] == lane]
    assert loop_ticks >= 10, "the event loop was blocked while the sends ran"


# Bounded lanes


async def test_try_submit_raises_lane_full_when_the_lane_holds_lane_capacity_items() -> None:
    """Queued plus in-flight items count against ``lane_capacity``; other lanes are unaffected."""
    gate = Gate()

    async with OrderedSender(gate.send, lane_capacity=2) as sender:
        sender.try_submit(1, "a")
        sender.try_submit(2, "a")
        await gate.started.wait()
        with pytest.raises(LaneFullError) as full:
            sender.try_submit(3, "a")
        sender.try_submit(1, "b")
        gate.open()

    assert "a" == full.value.lane


async def test_submit_waits_until_the_lane_has_room() -> None:
    """``submit`` on a full lane waits without blocking, then queues behind the earlier items."""
    gate = Gate()

    async with OrderedSender(gate.send, lane_capacity=2) as sender:
        sender.try_submit(1, "a")
        sender.try_submit(2, "a")
        waiting = asyncio.create_task(sender.submit(3, "a"))
        await ticks(5)
        assert not waiting.done()
        gate.open()
        receipt = await waiting
        await receipt

    assert [1, 2, 3] == gate.calls


async def test_lane_bytes_bounds_the_declared_bytes_of_a_lane() -> None:
    """An item that would take a lane past ``lane_bytes`` is refused; up to the bound is fine."""
    gate = Gate()

    async with OrderedSender(gate.send, lane_bytes=100) as sender:
        sender.try_submit("first", "a", nbytes=60)
        await gate.started.wait()
        with pytest.raises(LaneFullError):
            sender.try_submit("too big", "a", nbytes=50)
        sender.try_submit("fits", "a", nbytes=40)
        occupancy = sender.occupancy("a")
        gate.open()

    assert (1, 1, 100) == occupancy
    assert ["first", "fits"] == gate.calls


async def test_an_empty_lane_always_takes_one_item_however_big() -> None:
    """An oversized item cannot wedge its lane: it goes in alone, and the lane is then full."""
    gate = Gate()

    async with OrderedSender(gate.send, lane_bytes=100) as sender:
        receipt = sender.try_submit("huge", "a", nbytes=1_000)
        with pytest.raises(LaneFullError):
            sender.try_submit("tiny", "a", nbytes=0)
        gate.open()
        await receipt
        sender.try_submit("after", "a", nbytes=1_000)

    assert ["huge", "after"] == gate.calls


async def test_occupancy_reports_queued_in_flight_and_bytes() -> None:
    """``occupancy`` is ``(queued, in_flight, nbytes)``, zeros for an unknown lane."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        sender.try_submit(1, "a", nbytes=10)
        sender.try_submit(2, "a", nbytes=5)
        await gate.started.wait()
        occupancy = sender.occupancy("a")
        unknown = sender.occupancy("nowhere")
        gate.open()

    assert (1, 1, 15) == occupancy
    assert (0, 0, 0) == unknown


# Retries


async def test_retries_wait_backoff_delays_that_double_up_to_the_maximum() -> None:
    """With the top jitter draw the delays are 0.1, 0.2, 0.4 … capped at ``maximum``."""
    clock = FakeClock()
    flaky = Flaky({"x": [retryable() for _ in range(6)]})
    backoff = Backoff(initial=0.1, maximum=1.0, random=lambda: 1.0)

    async with OrderedSender(flaky.send, backoff=backoff, clock=clock) as sender:
        delivery = await sender.try_submit("x", "a")

    assert pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0]) == clock.sleeps
    expected = Delivery(item="x", lane="a", attempts=7, started=0.0, finished=pytest.approx(3.5))
    assert expected == delivery


@pytest.mark.parametrize(
    ("error", "expected_delay"),
    [
        (Throttled(retry_after=7.0), 7.0),
        (RetryableSendError("429", reason="429", retry_after=2.5), 2.5),
        (Throttled(retry_after=1_000.0), 60.0),
    ],
    ids=["own-error-type", "send-error", "capped-at-retry-after-max"],
)
async def test_a_retry_after_on_the_error_replaces_the_backoff_delay(
    error: Exception, expected_delay: float
) -> None:
    """An error's ``retry_after`` is the delay, capped at ``retry_after_max``."""
    clock = FakeClock()
    flaky = Flaky({"x": [error]})
    backoff = Backoff(retry_after_max=60.0, random=lambda: 1.0)

    async with OrderedSender(flaky.send, backoff=backoff, clock=clock) as sender:
        await sender.try_submit("x", "a")

    assert [expected_delay] == clock.sleeps


@pytest.mark.parametrize("error", [rejected(), Invalid("bad")], ids=["rejected", "own-error-type"])
async def test_an_error_that_is_not_retryable_fails_the_receipt_at_once(error: Exception) -> None:
    """``retryable = False`` ends the item after one attempt; awaiting raises that error."""
    clock = FakeClock()
    flaky = Flaky({"x": [error]})

    async with OrderedSender(flaky.send, clock=clock) as sender:
        receipt = sender.try_submit("x", "a")
        with pytest.raises(type(error)) as raised:
            await receipt

    assert error is raised.value
    assert error is receipt.exception()
    assert ["x"] == flaky.calls
    assert [] == clock.sleeps


async def test_any_other_exception_is_retried() -> None:
    """An exception without a ``retryable`` attribute is retried (network trouble, a server
    that hiccups): nothing is dropped."""
    flaky = Flaky({"x": [ConnectionResetError("reset"), RuntimeError("odd"), TimeoutError()]})

    async with OrderedSender(flaky.send, clock=FakeClock()) as sender:
        delivery = await sender.try_submit("x", "a")

    assert 4 == delivery.attempts


@pytest.mark.parametrize(
    "error",
    [TypeError("bad call"), ValueError("bad data"), AttributeError("typo"), KeyError("k")],
)
async def test_programming_and_data_errors_are_final_by_default(error: Exception) -> None:
    """The same item through the same code fails the same way: such an error ends the item at
    once instead of blocking its lane for ever."""
    flaky = Flaky({"x": [error]})
    clock = FakeClock()

    async with OrderedSender(flaky.send, clock=clock) as sender:
        receipt = sender.try_submit("x", "a")
        with pytest.raises(type(error)):
            await receipt

    assert ["x"] == flaky.calls
    assert [] == clock.sleeps


async def test_a_retryable_attribute_overrides_the_default_for_any_type() -> None:
    """A ``ValueError`` that says ``retryable = True`` is retried like any transient error."""
    error = ValueError("upstream sent garbage, try again")
    error.retryable = True  # type: ignore[attr-defined]
    flaky = Flaky({"x": [error]})

    async with OrderedSender(flaky.send, clock=FakeClock()) as sender:
        delivery = await sender.try_submit("x", "a")

    assert 2 == delivery.attempts


async def test_max_attempts_gives_up_with_the_last_error() -> None:
    """``Backoff(max_attempts=3)`` makes three attempts, then fails the receipt."""
    clock = FakeClock()
    errors = [retryable() for _ in range(10)]
    flaky = Flaky({"x": errors})

    async with OrderedSender(flaky.send, backoff=Backoff(max_attempts=3), clock=clock) as sender:
        receipt = sender.try_submit("x", "a")
        async with asyncio.timeout(5):
            assert await sender.drain()

    assert errors[2] is receipt.exception()
    assert ["x", "x", "x"] == flaky.calls
    assert 2 == len(clock.sleeps)


async def test_on_retry_is_told_item_lane_error_attempt_and_delay() -> None:
    """The observer hears of every scheduled retry, with the delay about to be waited."""
    errors = [retryable(), retryable()]
    flaky = Flaky({"x": list(errors)})
    seen: list[tuple[object, ...]] = []

    def on_retry(item: str, lane: object, error: BaseException, attempt: int, delay: float) -> None:
        seen.append((item, lane, error, attempt, delay))

    async with OrderedSender(
        flaky.send, backoff=TOP_OF_RANGE, on_retry=on_retry, clock=FakeClock()
    ) as sender:
        await sender.try_submit("x", "a")

    assert [("x", "a", errors[0], 1, 0.1), ("x", "a", errors[1], 2, 0.2)] == seen


async def test_a_retrying_item_holds_only_its_own_lane() -> None:
    """While one lane waits out a long backoff, other lanes deliver."""
    gate = asyncio.Event()

    class HeldClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            await gate.wait()

    flaky = Flaky({"stuck": [retryable()]})

    async with OrderedSender(flaky.send, clock=HeldClock()) as sender:
        stuck = sender.try_submit("stuck", "a")
        behind = sender.try_submit("behind", "a")
        await sender.try_submit("free", "b")
        assert not stuck.done()
        assert not behind.done()
        gate.set()

    assert ["stuck", "free", "stuck", "behind"] == flaky.calls


async def test_a_lane_keeps_retrying_past_a_thousand_attempts() -> None:
    """With no ``max_attempts`` an item is retried for as long as it takes."""
    flaky = Flaky({"x": [retryable() for _ in range(1_100)]})
    backoff = Backoff(random=lambda: 0.0)

    async with OrderedSender(flaky.send, backoff=backoff, clock=FakeClock()) as sender:
        delivery = await sender.try_submit("x", "a")

    assert 1_101 == delivery.attempts


# Halting on rejection


async def test_halt_on_rejection_stops_the_lane_and_spares_the_others() -> None:
    """Later items of a halted lane fail unsent with LaneHaltedError; other lanes go on."""
    error = rejected()
    flaky = Flaky({"a-bad": [error]})

    async with OrderedSender(flaky.send, halt_on_rejection=True) as sender:
        receipts = {
            item: sender.try_submit(item, item[0])
            for item in ["a-ok", "a-bad", "a-x", "a-y", "b-1"]
        }
        assert await sender.drain(timeout=5)
        with pytest.raises(LaneHaltedError) as refused:
            sender.try_submit("a-z", "a")
        await sender.try_submit("b-2", "b")
        halted_by = sender.halted("a")

    assert error is halted_by
    assert error is refused.value.cause
    assert error is receipts["a-bad"].exception()
    for item in ("a-x", "a-y"):
        halt = receipts[item].exception()
        assert isinstance(halt, LaneHaltedError)
        assert error is halt.cause
    assert receipts["a-ok"].exception() is None
    assert receipts["b-1"].exception() is None
    assert ["a-ok", "a-bad"] == [item for item in flaky.calls if item[0] == "a"]
    assert ["b-1", "b-2"] == [item for item in flaky.calls if item[0] == "b"]


async def test_cancel_clears_a_halted_lane() -> None:
    """After ``cancel([lane])`` the lane takes and delivers items again."""
    flaky = Flaky({"bad": [rejected()]})

    async with OrderedSender(flaky.send, halt_on_rejection=True) as sender:
        bad = sender.try_submit("bad", "a")
        assert await sender.drain(timeout=5)
        assert sender.halted("a") is not None
        sender.cancel(["a"])
        halted_after_cancel = sender.halted("a")
        await sender.try_submit("again", "a")

    assert isinstance(bad.exception(), RejectedError)
    assert halted_after_cancel is None
    assert ["bad", "again"] == flaky.calls


async def test_without_halt_on_rejection_a_rejection_ends_only_its_item() -> None:
    """By default the items after a rejected one are still sent."""
    flaky = Flaky({"bad": [rejected()]})

    async with OrderedSender(flaky.send) as sender:
        bad = sender.try_submit("bad", "a")
        await sender.try_submit("next", "a")

    assert isinstance(bad.exception(), RejectedError)
    assert ["bad", "next"] == flaky.calls


# Draining, discarding, cancelling, closing


async def test_drain_returns_true_once_the_lanes_are_empty_and_false_on_timeout() -> None:
    """``drain(lanes, timeout)`` waits only for the given lanes, and only as long as allowed."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        receipt = sender.try_submit(1, "a")
        await gate.started.wait()
        timed_out = await sender.drain(["a"], timeout=0.01)
        other_lane = await sender.drain(["b"], timeout=0.01)
        gate.open()
        drained = await sender.drain(["a"], timeout=5)

    assert timed_out is False
    assert other_lane is True
    assert drained is True
    assert receipt.done()


async def test_discard_queued_cancels_unstarted_items_but_the_in_flight_one_completes() -> None:
    """Discarded receipts are cancelled and never sent; the item in flight is delivered."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        in_flight = sender.try_submit(1, "a")
        queued = [sender.try_submit(2, "a"), sender.try_submit(3, "a")]
        await gate.started.wait()
        discarded = sender.discard_queued(["a", "unknown"])
        gate.open()
        delivery = await in_flight

    assert 2 == discarded
    assert all(receipt.cancelled() for receipt in queued)
    assert 1 == delivery.attempts
    assert [1] == gate.calls


async def test_cancel_drops_queued_and_in_flight_items() -> None:
    """``cancel`` cancels every receipt of the lanes, including the one being sent."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(3)]
        await gate.started.wait()
        cancelled = sender.cancel(["a"])
        await ticks(2)
        lanes = sender.lanes()

    assert 3 == cancelled
    assert all(receipt.cancelled() for receipt in receipts)
    assert [] == lanes


async def test_close_waits_for_the_lanes_to_finish() -> None:
    """Without a timeout, close delivers everything already handed over."""
    flaky = Flaky({2: [retryable()]})

    async with OrderedSender(flaky.send, clock=FakeClock()) as sender:
        receipts = [sender.try_submit(i, i % 2) for i in range(4)]
        await sender.close()

    assert all(receipt.exception() is None for receipt in receipts)
    assert [0, 1, 2, 3] == sorted(flaky.accepted)


async def test_close_cancels_what_remains_after_the_timeout_and_is_idempotent() -> None:
    """``close(timeout)`` cancels unfinished items; later closes return at once."""
    gate = Gate()

    async with OrderedSender(gate.send) as sender:
        in_flight = sender.try_submit(1, "a")
        queued = sender.try_submit(2, "a")
        await gate.started.wait()
        await sender.close(timeout=0.02)
        queued_cancelled = queued.cancelled()
        started = time.monotonic()
        await sender.close(timeout=10)
        second_close = time.monotonic() - started
        with pytest.raises(SenderClosedError):
            sender.try_submit(3, "a")

    assert queued_cancelled
    assert in_flight.cancelled()
    assert second_close < 0.01
    assert [1] == gate.calls


async def test_submit_after_close_raises_sender_closed() -> None:
    """``submit`` refuses like ``try_submit`` once the sender is closed."""
    async with OrderedSender(Flaky().send) as sender:
        await sender.close()
        with pytest.raises(SenderClosedError):
            await sender.submit(1, "a")


async def test_try_submit_before_the_sender_is_open_raises_sender_closed() -> None:
    """Items are taken only inside ``async with``."""
    sender = OrderedSender(Flaky().send)

    with pytest.raises(SenderClosedError):
        sender.try_submit(1, "a")


def test_limits_below_one_are_refused() -> None:
    """``max_in_flight`` and ``lane_capacity`` must be at least 1."""
    with pytest.raises(ValueError, match="at least 1"):
        OrderedSender(Flaky().send, max_in_flight=0)
    with pytest.raises(ValueError, match="at least 1"):
        OrderedSender(Flaky().send, lane_capacity=0)


# Receipts


async def test_a_receipt_reports_its_outcome_and_calls_back_when_done() -> None:
    """A receipt can be polled, awaited, and observed with a done callback."""
    seen: list[object] = []

    async with OrderedSender(Flaky().send, clock=FakeClock()) as sender:
        receipt = sender.try_submit("x", "a", nbytes=3)
        receipt.add_done_callback(seen.append)
        pending = receipt.done()
        delivery = await receipt

    assert pending is False
    assert receipt.done()
    assert not receipt.cancelled()
    assert receipt.exception() is None
    assert delivery == receipt.result()
    assert [receipt] == seen
    assert ("x", "a", 3) == (receipt.item, receipt.lane, receipt.nbytes)


async def test_done_callbacks_have_run_when_drain_returns() -> None:
    """Callbacks run as each item settles, so a drain sees every acceptance."""
    seen: list[int] = []

    async with OrderedSender(Flaky().send) as sender:
        for i in range(6):
            sender.try_submit(i, i % 3).add_done_callback(lambda receipt: seen.append(receipt.item))
        assert await sender.drain(timeout=5)
        seen_at_drain = sorted(seen)

    assert [0, 1, 2, 3, 4, 5] == seen_at_drain


async def test_a_callback_added_to_a_finished_receipt_runs_at_once() -> None:
    """Adding a callback late still calls it, immediately."""
    seen: list[object] = []

    async with OrderedSender(Flaky().send) as sender:
        receipt = sender.try_submit("x", "a")
        await receipt
        receipt.add_done_callback(seen.append)

    assert [receipt] == seen


async def test_a_failing_callback_does_not_stop_the_lane() -> None:
    """A callback that raises is logged; the lane goes on delivering."""
    flaky = Flaky()

    def broken(receipt: object) -> None:
        raise RuntimeError("callback bug")

    async with OrderedSender(flaky.send) as sender:
        sender.try_submit(1, "a").add_done_callback(broken)
        delivery = await sender.try_submit(2, "a")

    assert 1 == delivery.attempts
    assert [1, 2] == flaky.accepted


class AsyncCallable:
    """A send function written as a class with ``async def __call__``."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    async def __call__(self, item: object) -> None:
        self.calls.append(item)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_an_async_callable_object_is_awaited() -> None:
    """An object with ``async def __call__`` is an async send, not a blocking one."""
    send = AsyncCallable()

    async with OrderedSender(send) as sender:
        await sender.try_submit("x", "a")
    gc.collect()

    assert ["x"] == send.calls
