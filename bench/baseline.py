"""The baseline: a bare aiokafka + aiohttp forwarder with the stage's guarantees on the happy path.

A consumer group with auto-commit off; one task per assigned partition POSTs its records one after
another (partitions run concurrently), with the headers the stage sends; a partition whose queue
holds 1,000 records is paused until it is down to half; the offsets of accepted records are
committed explicitly every second and at the end. 429, 5xx and connection errors are retried
after 0.1 s; any other answer stops the process. No metrics, no logging. Configured like the stage
(``PIPELINE_KAFKA_FETCH_MAX_WAIT_MS`` too, for the latency row):

    PIPELINE_KAFKA_BOOTSTRAP_SERVERS=... PIPELINE_KAFKA_TOPICS=... PIPELINE_KAFKA_GROUP_ID=... \\
    PIPELINE_SPACE_API_URL=... python bench/baseline.py        # SIGTERM: commit and leave
"""

import asyncio
import os
import signal

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

BUFFER = 1000  # records queued per partition before it is paused


class Forwarder(ConsumerRebalanceListener):
    def __init__(
        self, consumer: AIOKafkaConsumer, session: aiohttp.ClientSession, url: str
    ) -> None:
        self.consumer, self.session, self.url = consumer, session, url
        self.queues: dict[TopicPartition, asyncio.Queue] = {}
        self.lanes: dict[TopicPartition, asyncio.Task] = {}
        self.accepted: dict[TopicPartition, int] = {}  # the next offset to commit
        self.committed: dict[TopicPartition, int] = {}

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.queues[tp] = asyncio.Queue()
            self.lanes[tp] = asyncio.create_task(self.lane(tp, self.queues[tp]))

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self.lanes.pop(tp).cancel()  # queued records are dropped: they were never sent
            del self.queues[tp]
        await self.commit()
        for tp in revoked:
            self.accepted.pop(tp, None)
            self.committed.pop(tp, None)

    async def lane(self, tp: TopicPartition, queue: asyncio.Queue) -> None:
        while True:
            record = await queue.get()
            await self.post(record)
            self.accepted[tp] = record.offset + 1

    async def post(self, record) -> None:  # noqa: ANN001
        key = f"{record.topic}/{record.partition}/{record.offset}"
        headers = {
            "User-Agent": "space-pipeline",
            "Content-Type": "application/json",  # the records of the bench carry no content-type
            "X-Kafka-Topic": record.topic,
            "X-Kafka-Partition": str(record.partition),
            "Idempotency-Key": key,
            "X-Kafka-Offset": str(record.offset),
        }
        while True:
            try:
                async with self.session.post(
                    self.url, data=record.value or b"", headers=headers
                ) as r:
                    await r.read()
                    if r.status < 300:
                        return
                    if r.status != 429 and r.status < 500:
                        raise SystemExit(f"baseline: {key} answered {r.status}, stopping")
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)

    async def commit(self) -> None:
        offsets = {tp: o for tp, o in self.accepted.items() if self.committed.get(tp) != o}
        if offsets:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + 1.0
        while not stop.is_set():
            for tp, records in (await self.consumer.getmany(timeout_ms=100)).items():
                if tp in self.queues:
                    for record in records:
                        self.queues[tp].put_nowait(record)
            for tp, queue in self.queues.items():
                if queue.qsize() >= BUFFER:
                    self.consumer.pause(tp)
                elif queue.qsize() <= BUFFER // 2:
                    self.consumer.resume(tp)
            if loop.time() >= next_commit:
                await self.commit()
                next_commit = loop.time() + 1.0
        for lane in self.lanes.values():
            lane.cancel()
        await self.commit()


async def main() -> None:
    env = os.environ
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env["PIPELINE_KAFKA_BOOTSTRAP_SERVERS"],
        group_id=env.get("PIPELINE_KAFKA_GROUP_ID", "space-pipeline"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=int(env.get("PIPELINE_KAFKA_FETCH_MAX_WAIT_MS", "500")),
    )
    session = aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",))
    forwarder = Forwarder(consumer, session, env["PIPELINE_SPACE_API_URL"])
    consumer.subscribe(env["PIPELINE_KAFKA_TOPICS"].split(","), listener=forwarder)
    await consumer.start()
    try:
        await forwarder.run(stop)
    finally:
        await consumer.stop()
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
