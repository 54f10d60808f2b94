"""Fill a topic fast: whole batches per partition, many in flight (1 M x 1 KiB in ~10 s).

Record ``i`` goes to partition ``i % partitions`` with key ``item-<i>`` and a JSON value
``{"seq": i, "payload": "xxx..."}`` padded to ``value_bytes``, so the stub can check the order of
single records (by offset) and of batches (by ``seq``).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

BATCH_BYTES = 512 * 1024
IN_FLIGHT = 32  # batches handed to the producer before waiting for the oldest


def value(seq: int, value_bytes: int) -> bytes:
    head = b'{"seq": %d, "payload": "' % seq
    return head + b"x" * max(0, value_bytes - len(head) - 2) + b'"}'


async def produce(
    bootstrap: str, topic: str, partitions: int, count: int, value_bytes: int = 90
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=BATCH_BYTES, max_request_size=4 * BATCH_BYTES
    )
    await producer.start()
    try:
        pending: list[asyncio.Future] = []
        batches = [producer.create_batch() for _ in range(partitions)]
        for i in range(count):
            partition = i % partitions
            batch = batches[partition]
            record = {"key": b"item-%d" % i, "value": value(i, value_bytes), "timestamp": None}
            if batch.append(**record):
                continue
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[partition] = producer.create_batch()
            batch.append(**record)
            if len(pending) >= IN_FLIGHT:
                await pending.pop(0)
        for partition, batch in enumerate(batches):
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
