"""The broker goes away and comes back: nothing lost, nothing reordered, committed to the end.

A rolling broker restart is the fault a Kafka client meets most in production. The durable broker
(tansu keeping its log in a local S3 bucket) is SIGKILLed and started again on the same port, with
its topics, records and committed offsets, while real ``space-pipeline run`` processes in one
group deliver to the stub API: every connection drops, commits in flight fail, the coordinator
forgets the group's members, and the stages must ride it out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.dev.broker import DurableBroker, create_topic, produce_numbered
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import BrokerError
from tests.plugins.broker import DurableKafka, Topic, kafka_answers, new_dlq
from tests.plugins.processes import StageProcess
from tests.plugins.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

PARTITIONS = 4


def rejected_keys(topic: Topic, count: int, every: int) -> frozenset[str]:
    """The Idempotency-Keys of every ``every``-th offset of each partition among ``count``
    records, which the stub API answers 422 (so they go to the dead-letter topic)."""
    ends = topic.expected_end(count)
    return frozenset(
        f"{topic.name}/{p}/{offset}"
        for p in range(topic.partitions)
        for offset in range(every // 2, ends[p], every)
    )


async def dead_lettered(bootstrap: str, dlq: str) -> set[str]:
    """``topic/partition/offset`` of every record in the dead-letter topic (a redelivered
    rejection may be there twice: at least once)."""
    consumer = AIOKafkaConsumer(
        dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: set[str] = set()
    try:
        while batch := await consumer.getmany(timeout_ms=1000):
            for records in batch.values():
                for record in records:
                    headers = {k: v.decode() for k, v in record.headers}
                    found.add(
                        f"{headers['x-original-topic']}/{headers['x-original-partition']}/"
                        f"{headers['x-original-offset']}"
                    )
    finally:
        await consumer.stop()
    return found


def assignments(proc: StageProcess) -> int:
    """How many times the stage logged an assignment with at least one partition."""
    count = 0
    for line in proc.logs().splitlines():
        if '"stage.partitions_assigned"' in line and json.loads(line).get("partitions"):
            count += 1
    return count


async def stop_both(*procs: StageProcess) -> list[int]:
    """SIGTERM each stage and return the exit codes."""
    for proc in procs:
        assert proc.process is not None
        proc.process.send_signal(signal.SIGTERM)
    return [await asyncio.to_thread(proc.wait, 30) for proc in procs]


async def committed_to(topic: Topic, ends: dict[int, int]) -> None:
    """Wait until the group has committed ``ends``."""
    committed: dict[int, int | None] = {}

    async def settled() -> bool:
        committed.update(await topic.committed())
        return committed == ends

    await eventually_async(settled, timeout=60, what=f"commits to the end, at {committed}")


async def test_three_broker_restarts_mid_stream_lose_and_reorder_nothing(
    durable_kafka: DurableKafka, stage_process
):
    """Two members in a group deliver 4000 records, some rejected to a dead-letter topic, while
    the broker is SIGKILLed and restarted three times (down 1 s each, commits in flight every
    200 ms); 1000 more records arrive after the last restart. Every record is delivered or
    dead-lettered, first deliveries are in offset order, the group commits to the end, and both
    stages exit 0 on SIGTERM."""
    topic = await durable_kafka.new_topic(PARTITIONS)
    dlq = await new_dlq(topic)
    total = 5000
    rejected = rejected_keys(topic, total, every=97)
    await topic.produce(4000)
    config = StubConfig(latency_ms=10, reject_keys=rejected)
    settings = {
        "on_reject": "dead-letter",
        "dead_letter_topic": dlq,
        "dead_letter_max_per_minute": 1000,
        # tansu on S3 answers InitProducerId with UnknownError: no idempotent producer there.
        "dead_letter_idempotence": False,
    }
    async with StubServer(config) as api:
        members = [stage_process(topic.env(api.url, **settings)) for _ in range(2)]
        for delivered in (400, 1200, 2000):
            await eventually(
                lambda n=delivered: api.stats().unique >= n, timeout=60, what=f"{delivered} in"
            )
            await durable_kafka.restart(down=1.0)
        await topic.produce(total - 4000, start=4000)
        await eventually(
            lambda: api.stats().unique == total - len(rejected), timeout=120, what="all delivered"
        )
        await committed_to(topic, topic.expected_end(total))
        codes = await stop_both(*members)
        stats = api.stats()
    assert [0, 0] == codes, [m.logs()[-3000:] for m in members]
    assert 0 == stats.order_violations
    assert 0 == stats.header_mismatches
    assert stats.accepted == stats.unique + stats.duplicates, "a redelivery kept its key"
    assert rejected == await dead_lettered(durable_kafka.bootstrap, dlq)


async def test_a_broker_down_longer_than_the_session_timeout_re_forms_the_group(
    durable_kafka: DurableKafka, stage_process
):
    """The broker is down for 6 s, twice the 3 s session timeout: the coordinator that comes
    back has no live member, the two stages join again and are given partitions, and every
    record is delivered (first deliveries in offset order) and committed."""
    topic = await durable_kafka.new_topic(PARTITIONS)
    await topic.produce(3000)
    async with StubServer(StubConfig(latency_ms=10)) as api:
        members = [stage_process(topic.env(api.url)) for _ in range(2)]
        await eventually(lambda: api.stats().unique >= 500, timeout=60, what="delivery under way")
        await eventually(lambda: all(assignments(m) for m in members), what="both assigned")
        before = [assignments(m) for m in members]
        await durable_kafka.restart(down=6.0)
        await topic.produce(1000, start=3000)
        await eventually(lambda: api.stats().unique == 4000, timeout=120, what="all 4000")
        await committed_to(topic, topic.expected_end(4000))
        codes = await stop_both(*members)
        stats = api.stats()
    after = [assignments(m) for m in members]
    assert [0, 0] == codes, [m.logs()[-3000:] for m in members]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert 0 == stats.order_violations
    assert stats.accepted == stats.unique + stats.duplicates, "a redelivery kept its key"


def tool_process(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``space-pipeline ARGS`` in the foreground, its output a pipe to read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


async def test_broker_durable_starts_tansu_again_after_a_kill_with_its_records(tmp_path):
    """``space-pipeline broker --durable`` names the tansu pid; ``kill -9`` of it is a broker
    crash: the command starts tansu again on the same port, and the records written before are
    there to read. Ctrl-C then stops it, exit 0."""
    tool = tool_process(tmp_path, "broker", "--durable", "--port", "0")
    assert tool.stdout is not None
    readline = tool.stdout.readline
    try:
        first = await asyncio.to_thread(readline)
        address = re.search(r"on (\S+:\d+) \(durable", first)
        assert address is not None, first + tool.stdout.read(2000)
        bootstrap = address.group(1)
        pid = re.search(r"tansu pid (\d+)", await asyncio.to_thread(readline))
        assert pid is not None
        await kafka_answers(bootstrap)
        await create_topic(bootstrap, "kept", 2)
        await produce_numbered(bootstrap, "kept", 2, 30)

        os.kill(int(pid.group(1)), signal.SIGKILL)

        assert "starting it again" in await asyncio.to_thread(readline)
        again = re.search(r"tansu pid (\d+)", await asyncio.to_thread(readline))
        assert again is not None
        assert again.group(1) != pid.group(1)
        await kafka_answers(bootstrap)
        consumer = AIOKafkaConsumer(
            "kept", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            records = []
            async with asyncio.timeout(30):
                while len(records) < 30:
                    for batch in (await consumer.getmany(timeout_ms=1000)).values():
                        records.extend(batch)
        finally:
            await consumer.stop()
        tool.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(tool.wait, 15)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        tool.stdout.close()
    assert 0 == code
    assert 30 == len(records)


async def test_a_restart_without_the_s3_server_fails_naming_it_not_a_silent_deaf_broker():
    """tansu restarted without its S3 server listens but answers no Metadata (a client's
    "Unable to bootstrap") and no OffsetFetch: the case of the broker that "stopped answering".
    The restart says so at once, naming the S3 server and tansu's own log line."""
    async with DurableBroker() as broker:
        broker.s3.kill()

        with pytest.raises(BrokerError) as raised:
            await broker.restart()

    assert "S3 server" in str(raised.value)
