"""The README's library example works as written: a blocking function, ordered per lane."""

from __future__ import annotations

import threading
import time

from pipeline import OrderedSender


async def test_a_blocking_send_function_is_wrapped_without_blocking_the_loop():
    """``send_to_space`` blocks for 20 ms per item; wrapped, 3 lanes of 5 items take about
    5 x 20 ms, items of a lane arrive in order, and the event loop is never blocked."""
    arrived: list[dict[str, int]] = []
    lock = threading.Lock()

    def send_to_space(item: dict[str, int]) -> None:  # blocking, unmodifiable
        time.sleep(0.02)
        with lock:
            arrived.append(item)

    items = [{"satellite": s, "seq": n} for n in range(5) for s in range(3)]
    started = time.perf_counter()
    async with OrderedSender(send_to_space, max_in_flight=16) as sender:
        receipts = [await sender.submit(item, lane=item["satellite"]) for item in items]
        submitted_in = time.perf_counter() - started
        for receipt in receipts:
            await receipt
    elapsed = time.perf_counter() - started

    assert submitted_in < 0.01, "submitting waited on the network"
    assert elapsed < 15 * 0.02 / 2, "lanes did not run concurrently"
    for satellite in range(3):
        assert list(range(5)) == [i["seq"] for i in arrived if i["satellite"] == satellite]
