"""Nothing lost, nothing reordered, on a network that is not loopback-perfect.

Each test puts a fault proxy between the stage and the broker or the API: slow requests, cuts,
refused connections. Loopback without latency keeps the consumer and its rebalance callbacks in
step, and so hides exactly the races these tests exist to catch.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY

from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.stage import Stage
from tests.plugins.stage import consumer_class, healthz_answers, running_stage
from tests.plugins.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

JOIN_GROUP = 11


class SlowLookups(AIOKafkaConsumer):
    """A consumer whose explicit committed-offset lookups take 50 ms more than its own.

    aiokafka finds a new assignment's positions with lookups of its own; what the stage looks up
    on top (per request) is what this slows, like a coordinator far away. With one broker on
    loopback the two otherwise keep step, which hid the race.
    """

    async def start(self) -> None:
        await super().start()
        lookup = self._coordinator.fetch_committed_offsets

        async def slow_lookup(partitions):
            await asyncio.sleep(0.05)
            return await lookup(partitions)

        self._coordinator.fetch_committed_offsets = slow_lookup


async def test_a_slow_coordinator_loses_no_record_of_a_new_assignment(proxied_kafka, stub):
    """16 partitions, records produced before and after the stage joins, 2 ms each way to the
    broker and committed-offset lookups 50 ms slower: the consumer finds its positions and
    fetches long before one lookup per partition would have registered them all. Every offset
    of every partition is still delivered once, in order, and committed to the end."""
    topic = await proxied_kafka.new_topic(16)
    await topic.produce(16 * 50)
    proxied_kafka.proxy.latency_up = proxied_kafka.proxy.latency_down = 0.002
    settings = topic.settings(stub.url)
    async with running_stage(settings, source=consumer_class(SlowLookups)):
        await eventually(lambda: stub.stats().unique >= 16 * 25, what="delivery under way")
        await topic.produce(16 * 50, start=16 * 50)
        await eventually(lambda: stub.stats().unique >= 1600, timeout=60, what="all 1600")
    stats = stub.stats(offsets=True)
    assert 1600 == stats.unique
    assert 0 == stats.order_violations
    assert 0 == stats.duplicates
    for p in range(16):
        assert list(range(100)) == list(stats.partitions[f"{topic.name}/{p}"].offsets)
    assert topic.expected_end(1600) == await topic.committed()


async def test_a_broker_cut_for_20s_mid_stream_is_ridden_out(proxied_kafka, stage_process):
    """The broker is unreachable for 20 s while records flow: the stage keeps delivering what it
    holds, rides out failing commits and a rebalance, loses nothing, commits to the end and
    exits 0 on SIGTERM."""
    topic = await proxied_kafka.new_topic(4)
    await topic.produce(3000)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        proc = stage_process(topic.env(api.url))
        await eventually(lambda: api.stats().unique >= 300, timeout=60, what="delivery under way")
        await proxied_kafka.proxy.cut_for(20)
        await eventually(lambda: api.stats().unique == 3000, timeout=90, what="all 3000")
        committed: dict[int, int | None] = {}

        async def settled() -> bool:
            committed.update(await topic.committed())
            return committed == topic.expected_end(3000)

        await eventually_async(settled, what="commits to the end")
        proc.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        stats = api.stats()
    assert 0 == code, proc.logs()[-3000:]
    assert topic.expected_end(3000) == committed
    assert 0 == stats.order_violations
    assert 0 == stats.header_mismatches
    assert stats.accepted == stats.unique + stats.duplicates, "a redelivery kept its key"


async def test_an_unreachable_api_keeps_healthz_green_and_loses_nothing(new_topic, proxied_stub):
    """The API refuses connections for three times the stall timeout: that is not the stage's
    fault, so /healthz answers 200 throughout; afterwards everything arrives, in order."""
    api = proxied_stub
    topic = await new_topic(2)
    await topic.produce(200)
    settings = topic.settings(api.url, stall_timeout_s=1.0)
    async with running_stage(settings) as stage:
        await eventually(lambda: api.stub.stats().unique >= 20, what="delivery under way")
        api.proxy.cut()
        answers = await healthz_answers(stage)
        await api.proxy.restore()
        await eventually(lambda: api.stub.stats().unique == 200, what="all 200")
    stats = api.stub.stats()
    assert {200} == set(answers)
    assert 0 == stats.order_violations
    assert topic.expected_end(200) == await topic.committed()


async def test_sigterm_during_a_rebalance_exits_within_the_shutdown_timeout(
    proxied_kafka, stage_process
):
    """A second member joins while every JoinGroup takes 8 s: the first member revokes, rejoins
    and waits in its poll for the new assignment. SIGTERM then ends the poll at once: the
    process exits 0 within its 3 s shutdown timeout, takes no new assignment, and nothing is
    lost (the second member delivers the rest)."""
    topic = await proxied_kafka.new_topic(4)
    await topic.produce(2000)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        first = stage_process(topic.env(api.url, shutdown_timeout_s="3"))
        await eventually(lambda: api.stats().unique >= 200, timeout=60, what="delivery under way")
        proxied_kafka.proxy.kafka_request_delays[JOIN_GROUP] = 8.0
        second = stage_process(topic.env(api.url))
        await eventually(lambda: revoked_some(first.logs()), timeout=30, what="a rebalance")
        await asyncio.sleep(1.0)  # the first member now waits in its poll for an assignment
        first.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(first.wait, 30)
        took = time.monotonic() - started
        proxied_kafka.proxy.kafka_request_delays.clear()
        await eventually(lambda: api.stats().unique == 2000, timeout=90, what="all 2000")
        second.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(second.wait, 30)
        stats = api.stats()
    logs = first.logs()
    assert 0 == code, logs[-3000:]
    assert took < 3.5, f"exit took {took:.1f}s"
    stop_at = logs.index('"event":"stage.stopping"')
    assert "stage.partitions_assigned" not in logs[stop_at:], "took an assignment after the stop"
    assert 0 == stats.order_violations
    assert topic.expected_end(2000) == await topic.committed()


def revoked_some(logs: str) -> bool:
    """Whether the stage logged a revoke of at least one partition (not the empty first one)."""
    for line in logs.splitlines():
        if '"stage.partitions_revoked"' in line and json.loads(line).get("partitions"):
            return True
    return False


async def test_key_mode_with_a_record_failing_for_ever_holds_a_bounded_span(new_topic):
    """Key lanes: one record answered 503 for ever holds the watermark, so everything after it
    stays tracked though accepted. The partition pauses once that span is full: it never holds
    more than its buffer, however many records wait."""
    topic = await new_topic(1)
    await topic.produce(3000)
    stuck = frozenset({f"{topic.name}/0/3"})
    labels = {"topic": topic.name, "partition": "0"}
    async with StubServer(StubConfig(latency_ms=1, unavailable_keys=stuck)) as api:
        settings = topic.settings(api.url, ordering="key", partition_buffer_records=50)
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique >= 49, what="the span's other records")
            await asyncio.sleep(1.5)  # time to (wrongly) take more
            consumed = REGISTRY.get_sample_value("space_pipeline_records_consumed_total", labels)
            paused = REGISTRY.get_sample_value("space_pipeline_partition_paused", labels)
            unique = api.stats().unique
    assert consumed is not None
    assert consumed <= 50
    assert unique <= 49
    assert 1.0 == paused
    assert {0: 3} == await topic.committed()


async def test_a_record_that_cannot_become_a_request_is_a_rejection_not_a_retry_loop(new_topic):
    """A header whose value is None, or a content type holding CR/LF, cannot be sent: such a
    record is rejected at once (its partition halts there, counted), never retried, and the
    other partition delivers everything."""
    topic = await new_topic(3)
    bad_headers = {
        (0, 2): [("content-type", None)],
        (1, 4): [("content-type", b"text/plain\r\nX-Evil: 1")],
    }
    await topic.send(
        *(
            {
                "value": b'{"n": %d}' % offset,
                "partition": partition,
                "headers": bad_headers.get((partition, offset), []),
            }
            for offset in range(6)
            for partition in range(3)
        )
    )
    async with StubServer(StubConfig(latency_ms=1)) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: api.stats().unique == 2 + 4 + 6, what="all but the bad")
            await eventually(lambda: stage.ready().degraded, what="both halts reported")
            await asyncio.sleep(0.5)  # time to (wrongly) retry
            reason = stage.ready().reason
        stats = api.stats(offsets=True)
    assert f"{topic.name}/0/2" in reason
    assert f"{topic.name}/1/4" in reason
    assert (0, 1) == stats.partitions[f"{topic.name}/0"].offsets
    assert (0, 1, 2, 3) == stats.partitions[f"{topic.name}/1"].offsets
    assert 12 == stats.requests, "the unsendable records never reached the API, nor retried"
    for partition in ("0", "1"):
        labels = {"topic": topic.name, "partition": partition}
        assert 1.0 == REGISTRY.get_sample_value("space_pipeline_rejections_total", labels)
    assert {0: 2, 1: 4, 2: 6} == await topic.committed()


class RevokeCommitFails(AIOKafkaConsumer):
    """A consumer whose commits raise an unexpected error while the group rebalances."""

    async def commit(self, offsets=None):
        if self._subscription.reassignment_in_progress:
            raise RuntimeError("boom: commit during revoke")
        return await super().commit(offsets)


async def test_a_revoke_that_fails_midway_leaves_no_stale_partition_state(new_topic):
    """The revoke callback raises in its commit: its partitions are still forgotten (no stale
    pause, no gauge or probe of a partition no longer assigned), the stage keeps running and
    healthy beside the new member, and everything is delivered and committed in the end."""
    topic = await new_topic(4)
    await topic.produce(2000)
    async with StubServer(StubConfig(latency_ms=3)) as api:
        # No periodic commit: the revoke always has progress to commit, and so always fails.
        failing = topic.settings(api.url, partition_buffer_records=5, commit_interval_ms=600_000)
        first = Stage(failing, source=consumer_class(RevokeCommitFails))
        async with asyncio.TaskGroup() as tasks:
            running = tasks.create_task(first.run())
            try:
                await eventually(lambda: api.stats().unique >= 100, what="delivery under way")
                async with running_stage(topic.settings(api.url)) as second:
                    await eventually(lambda: second.ready().ok, what="the second member in")
                    await eventually(lambda: api.stats().unique == 2000, timeout=60, what="all")
                    await asyncio.sleep(1.5)  # a housekeeping round over the new assignment
                    assert not running.done()
                    assert first.live().ok, first.live().reason
            finally:
                first.stop()
        stats = api.stats()
    assert 0 == stats.order_violations
    assert topic.expected_end(2000) == await topic.committed()


class HidesMarkers(AIOKafkaConsumer):
    """Hands out no record whose value is ``b"marker"``: what aiokafka does with a transaction's
    control batch, skipped while its position moves past it (tansu has no transactions)."""

    async def getmany(self, *partitions, **kwargs):
        batch = await super().getmany(*partitions, **kwargs)
        shown = {tp: [r for r in rs if r.value != b"marker"] for tp, rs in batch.items()}
        return {tp: rs for tp, rs in shown.items() if rs}


async def test_a_partition_whose_only_lag_is_markers_is_fully_delivered(new_topic):
    """Records Kafka never hands out (transaction markers) do not hold the commit back: once
    everything handed over is accepted, the commit reaches the end of the partition, the lag
    reads 0, and the partition is not taken for stalled."""
    topic = await new_topic(1)
    await topic.send(
        *({"value": value, "partition": 0} for value in [b'{"n": 1}'] * 10 + [b"marker"])
    )
    labels = {"topic": topic.name, "partition": "0"}
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, stall_timeout_s=1.0)
        async with running_stage(settings, source=consumer_class(HidesMarkers)) as stage:
            await eventually(lambda: api.stats().unique == 10, what="the ten records")
            await eventually_async(
                lambda: _committed_is(topic, {0: 11}), what="a commit past the marker"
            )
            await eventually(
                lambda: (
                    REGISTRY.get_sample_value("space_pipeline_consumer_lag_records", labels) == 0
                ),
                what="no lag",
            )
            await asyncio.sleep(1.5)  # longer than the stall timeout
            live = stage.live()
    assert live.ok, live.reason


async def _committed_is(topic, expected) -> bool:
    return expected == await topic.committed()
