"""``OrderedSender`` alone (a no-op async send, 8 lanes), next to a bare ``await send(item)`` loop.

Prints one JSON object: items, seconds and CPU seconds of each, and this process's peak RSS.

    python bench/sender_alone.py [ITEMS]
"""

import asyncio
import json
import resource
import sys
import time

from pipeline.sender import OrderedSender


async def noop(_: int) -> None:
    return None


async def main(items: int) -> dict:
    started, cpu0 = time.perf_counter(), time.process_time()
    for i in range(items):
        await noop(i)
    bare = {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu0}
    async with OrderedSender(noop, lane_capacity=items) as sender:
        started, cpu0 = time.perf_counter(), time.process_time()
        receipts = [sender.try_submit(i, i % 8) for i in range(items)]
        await sender.drain()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        assert all(r.done() and r.exception() is None for r in receipts)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"items": items, "bare": bare, "sender": {"seconds": seconds, "cpu": cpu}, "rss": rss}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))))
