"""The folk way: ``await asyncio.create_task(send(record))``, one record at a time.

Built on the stage's own HTTP sink (``HttpSink`` on ``AiohttpClient``), so only the shape differs:
every record waits for the previous one, whatever its partition. Sends the topic from the start
until SIGTERM; the bench counts what the stub accepted.

    python bench/folk.py BOOTSTRAP TOPIC PARTITIONS URL
"""

import asyncio
import contextlib
import signal
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.http_client import AiohttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig


async def main(bootstrap: str, topic: str, partitions: int, url: str) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    try:
        async with HttpSink(HttpSinkConfig(url=url), AiohttpClient(Timeouts(), 1)) as api:
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for record in records:
                        await asyncio.create_task(api.send(record))  # the folk answer
    finally:
        await consumer.stop()


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM
        asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
