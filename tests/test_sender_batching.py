"""Ordered batches: consecutive items of one lane per call; a failed batch split to its culprit."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import LaneHaltedError, RejectedError, ResultError, RetryableSendError
from pipeline.sender import BatchLimits, OrderedSender
from tests.fakes import FakeClock


class BatchApi:
    """An async batch ``send`` that records each call and refuses batches holding a bad item."""

    def __init__(self, bad: set[int] | None = None, fail_first: int = 0) -> None:
        self.calls: list[list[int]] = []
        self.bad = bad or set()
        self.fail_first = fail_first

    async def send(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        await asyncio.sleep(0)
        if self.fail_first:
            self.fail_first -= 1
            raise RetryableSendError("busy", reason="5xx")
        if self.bad & set(batch):
            raise RejectedError("bad item", reason="4xx", status=422)


async def test_a_lane_sends_consecutive_items_in_batches_of_at_most_max_items() -> None:
    """Ten queued items of a lane go out as 4 + 4 + 2, in order, each batch after the last."""
    api = BatchApi()

    async with OrderedSender(api.send, batch=BatchLimits(max_items=4)) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(10)]

    assert [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] == api.calls
    assert all(r.result().attempts == 1 for r in receipts)


async def test_a_batch_stays_within_max_bytes_but_a_big_item_still_goes_alone() -> None:
    """Declared bytes bound a batch; an item bigger than the bound is sent on its own."""
    api = BatchApi()
    limits = BatchLimits(max_items=10, max_bytes=100)

    async with OrderedSender(api.send, batch=limits) as sender:
        for i, size in enumerate([40, 40, 40, 500, 10]):
            sender.try_submit(i, "a", nbytes=size)

    assert [[0, 1], [2], [3], [4]] == api.calls


async def test_lanes_batch_separately() -> None:
    """A batch never mixes lanes."""
    api = BatchApi()

    async with OrderedSender(api.send, batch=BatchLimits(max_items=10)) as sender:
        for i in range(6):
            sender.try_submit(i, i % 2)

    assert sorted([[0, 2, 4], [1, 3, 5]]) == sorted(api.calls)


async def test_linger_waits_for_more_items_before_sending_a_small_batch() -> None:
    """With a linger, items arriving shortly after the first join its batch."""
    api = BatchApi()
    limits = BatchLimits(max_items=5, linger=0.2)

    async with OrderedSender(api.send, batch=limits) as sender:
        sender.try_submit(0, "a")
        await asyncio.sleep(0.05)
        sender.try_submit(1, "a")
        sender.try_submit(2, "a")

    assert [[0, 1, 2]] == api.calls


async def test_a_retried_batch_is_sent_again_whole_and_in_order() -> None:
    """A retryable failure retries the same batch, so nothing is reordered or split."""
    api = BatchApi(fail_first=2)

    async with OrderedSender(api.send, batch=BatchLimits(max_items=3), clock=FakeClock()) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(3)]

    assert [[0, 1, 2]] * 3 == api.calls
    assert [3, 3, 3] == [r.result().attempts for r in receipts]


async def test_a_rejected_batch_is_split_until_the_bad_item_is_alone() -> None:
    """Batch 0-7 with item 5 bad: halves are tried in order, the good items are accepted, only
    item 5 fails, and items after it in the lane still go (no halt)."""
    api = BatchApi(bad={5})

    async with OrderedSender(api.send, batch=BatchLimits(max_items=8)) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(8)]

    assert [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [4, 5],
        [4],
        [5],
        [6, 7],
    ] == api.calls
    failed = [r.item for r in receipts if r.exception() is not None]
    assert [5] == failed
    assert isinstance(receipts[5].exception(), RejectedError)


async def test_with_halt_the_items_after_the_culprit_are_never_sent() -> None:
    """``halt_on_rejection``: once the culprit is isolated the lane halts; the rest of the batch
    fails unsent with LaneHaltedError."""
    api = BatchApi(bad={1})

    async with OrderedSender(
        api.send, batch=BatchLimits(max_items=4), halt_on_rejection=True
    ) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(4)]
        await sender.drain()
        sender.cancel(["a"])

    assert [[0, 1, 2, 3], [0, 1], [0], [1]] == api.calls
    assert receipts[0].exception() is None
    assert isinstance(receipts[1].exception(), RejectedError)
    assert all(isinstance(r.exception(), LaneHaltedError) for r in receipts[2:])


@pytest.mark.parametrize("max_items", [1, 2, 3, 7])
async def test_every_item_ends_in_order_whatever_the_batch_size(max_items: int) -> None:
    """Whatever the batch size, each item is accepted once, in submission order."""
    api = BatchApi()
    accepted: list[int] = []

    async with OrderedSender(
        api.send,
        batch=BatchLimits(max_items=max_items),
        on_done=lambda r: accepted.append(r.item),
    ) as sender:
        for i in range(20):
            sender.try_submit(i, "a")

    assert list(range(20)) == accepted


async def test_a_batch_whose_failure_says_it_was_delivered_halts_at_its_first_item_unsplit() -> (
    None
):
    """A final failure with ``delivered`` (the API took the batch, its result cannot be written)
    is not split to find a culprit, which would deliver the halves again: the lane halts at the
    batch's first item and the rest of the batch fails unsent with LaneHaltedError."""
    calls: list[list[int]] = []

    async def send(batch: list[int]) -> None:
        calls.append(list(batch))
        await asyncio.sleep(0)
        raise ResultError("the result topic is gone", reason="result_failed")

    async with OrderedSender(
        send, batch=BatchLimits(max_items=4), halt_on_rejection=True
    ) as sender:
        receipts = [sender.try_submit(i, "a") for i in range(4)]
        await sender.drain()
        halted_by = sender.halted("a")
        sender.cancel(["a"])

    assert [[0, 1, 2, 3]] == calls
    assert isinstance(receipts[0].exception(), ResultError)
    assert all(isinstance(r.exception(), LaneHaltedError) for r in receipts[1:])
    assert halted_by is receipts[0].exception()
