"""What the log tells a person at a terminal (issue 18): the ``stage.progress`` line comes with
the first delivery, its rate is over the time records flowed, and every record done is in it;
the assignment line says where each partition starts, and how far behind it is."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from structlog.testing import capture_logs

from pipeline.dev.stub_api import StubConfig, StubServer
from tests.plugins.broker import Topic, new_dlq
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually

pytestmark = pytest.mark.integration

DLQ = {"on_reject": "dead-letter", "dead_letter_idempotence": False}


def progress_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "stage.progress"]


async def test_the_first_progress_line_comes_with_the_first_delivery(new_topic) -> None:
    """With the default 30 s interval a person would stare at nothing for 30 s: the first line
    comes as soon as a record is done, and says so."""
    topic = await new_topic(1)
    await topic.produce(5)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, progress_interval_s=30)
        with capture_logs() as logs:
            async with running_stage(settings):
                await eventually(lambda: api.stats().unique == 5, what="all 5")
                started = time.monotonic()
                await eventually(lambda: bool(progress_lines(logs)), timeout=10, what="a line")
                waited = time.monotonic() - started
    first = progress_lines(logs)[0]
    assert waited < 10
    assert first["delivered"] >= 1


async def test_the_rate_is_over_the_time_records_flowed_not_the_whole_interval(new_topic) -> None:
    """400 records done in well under a second of a 4 s interval: the rate is theirs over the
    time they took (``active_s``), not 400 / 4."""
    topic = await new_topic(4)
    await topic.produce(400)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, progress_interval_s=4)
        with capture_logs() as logs:
            async with running_stage(settings):
                await eventually(lambda: api.stats().unique == 400, what="all 400")
                await eventually(
                    lambda: any(line["total"] == 400 for line in progress_lines(logs)),
                    timeout=10,
                    what="the line with all 400",
                )
    line = next(line for line in progress_lines(logs) if line["total"] == 400)
    assert line["delivered"] > 100, progress_lines(logs)
    assert line["active_s"] < 4
    interval_average = line["delivered"] / 4
    assert line["rate_per_s"] > 1.5 * interval_average, line


async def test_dead_lettered_and_skipped_records_are_in_the_line(new_topic) -> None:
    """40 records: 2 rejected and dead-lettered, 1 on the skip list, 37 delivered. The lines
    count each kind, and their total is every record done."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    await topic.produce(40)
    poison = frozenset({f"{topic.name}/0/3", f"{topic.name}/1/4"})
    skip = f"{topic.name}/1/7"
    async with StubServer(StubConfig(latency_ms=1, reject_keys=poison)) as api:
        settings = topic.settings(
            api.url,
            dead_letter_topic=dlq,
            skip_records=frozenset({skip}),
            progress_interval_s=0.5,
            **DLQ,
        )
        with capture_logs() as logs:
            async with running_stage(settings):
                await eventually(
                    lambda: any(line["total"] == 40 for line in progress_lines(logs)),
                    what="a line with all 40 done",
                )
    lines = progress_lines(logs)
    assert 37 == sum(line["delivered"] for line in lines)
    assert 2 == sum(line["dead_lettered"] for line in lines)
    assert 1 == sum(line["skipped"] for line in lines)
    assert 0 == sum(line["expired"] for line in lines)
    assert 0 == lines[-1]["pending"]


# Where each assigned partition starts (issue 18: "delivered=0 lag_records=0 with no hint")


async def commit(topic: Topic, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` (partition: offset) for the topic's group, as an earlier run would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=topic.bootstrap, group_id=topic.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        points = {TopicPartition(topic.name, p): offset for p, offset in offsets.items()}
        consumer.assign(list(points))
        await consumer.commit(points)
    finally:
        await consumer.stop()


async def test_the_assignment_line_says_where_each_partition_starts_and_its_lag(new_topic) -> None:
    """A group that already committed everything delivers nothing: the assignment line says so,
    naming each partition's starting offset (its committed one, or where the reset policy
    starts), whence, and the records after it."""
    topic = await new_topic(2)
    # Five on each partition, a batch each: tansu answers a log-end request with the last
    # batch's first offset + 1, which is the end only for a batch of one.
    for i in range(10):
        await topic.send({"value": b'{"seq": %d}' % i, "partition": i % 2})
    await commit(topic, {0: 5})  # partition 0 done by an earlier run; partition 1 never read
    async with StubServer(StubConfig(latency_ms=1)) as api:
        with capture_logs() as logs:
            async with running_stage(topic.settings(api.url)):
                await eventually(lambda: api.stats().unique == 5, what="partition 1's five")
    line = next(line for line in logs if line["event"] == "stage.partitions_assigned")
    assert {
        f"{topic.name}/0": {"from": "committed", "offset": 5, "lag": 0},
        f"{topic.name}/1": {"from": "earliest", "offset": 0, "lag": 5},
    } == line["starting"]
