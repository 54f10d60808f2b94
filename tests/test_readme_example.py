"""The README's library example works as written: a blocking function, ordered per lane."""

from __future__ import annotations

import threading
import time

from pipeline import OrderedSender


async def test_a_blocking_send_function_is_wrapped_without_blocking_the_loop():
    """``send_to_space`` blocks for 20 ms per item; wrapped, submitting returns before any
    item is sent, the three lanes run in parallel threads, and each lane arrives in order."""
    arrived: list[dict[str, int]] = []
    lock = threading.Lock()
    running, most = 0, 0

    def send_to_space(item: dict[str, int]) -> None:  # blocking, unmodifiable
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
            arrived.append(item)

    items = [{"satellite": s, "seq": n} for n in range(5) for s in range(3)]
    async with OrderedSender(send_to_space, max_in_flight=16) as sender:
        receipts = [await sender.submit(item, lane=item["satellite"]) for item in items]
        done_at_submit = sum(receipt.done() for receipt in receipts)
        for receipt in receipts:
            await receipt

    assert 0 == done_at_submit, "submitting waited on the network"
    assert 3 == most, "lanes did not run concurrently"
    for satellite in range(3):
        assert list(range(5)) == [i["seq"] for i in arrived if i["satellite"] == satellite]
