"""Produce at a steady rate and measure each record's latency to the API's acceptance.

Latency is measured from the record's Kafka timestamp (CreateTime, set here when the record is
handed to the producer, in wall-clock milliseconds) to the moment the stub API accepted it (its
``accepted_unix``, wall clock too, same host). The stub judges a request when it arrives, so the
API's own answer time is not in it; waiting behind the answers to earlier records of the same
partition is.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer

CREATE_TIME = 0  # RecordMetadata.timestamp_type of a producer's timestamp


async def produce_steadily(
    bootstrap: str, topic: str, partitions: int, rate: float, count: int
) -> dict[str, int]:
    """``count`` records at ``rate`` a second, round robin over the partitions, on a fixed
    schedule (a late send does not push the later ones back, so the load stays what was asked).

    Returns each record's CreateTime in ms by its stub key, ``<topic>/<partition>/<offset>``.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    sent: list[tuple[int, asyncio.Future]] = []
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            created_ms = int(time.time() * 1000)
            value = b'{"seq": %d}' % i
            future = await producer.send(
                topic, value, key=b"item-%d" % i, partition=i % partitions, timestamp_ms=created_ms
            )
            sent.append((created_ms, future))
        created = {}
        for created_ms, future in sent:
            meta = await future
            if meta.timestamp_type != CREATE_TIME:
                raise RuntimeError(f"{topic} keeps LogAppendTime: latency needs CreateTime")
            created[f"{meta.topic}/{meta.partition}/{meta.offset}"] = created_ms
        return created
    finally:
        await producer.stop()


def latencies_ms(created: Mapping[str, int], stats: Mapping[str, object]) -> list[float]:
    """Acceptance minus CreateTime of every produced record the stub accepted (``GET /stats
    ?offsets=1``); a record it never accepted is left out, and the caller compares counts."""
    keys, accepted = stats["keys"], stats["accepted_unix"]
    assert isinstance(keys, list)
    assert isinstance(accepted, list)
    return [
        at * 1000 - created[key] for key, at in zip(keys, accepted, strict=True) if key in created
    ]


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]
