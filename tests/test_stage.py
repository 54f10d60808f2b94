"""The stage end to end: a real Kafka-protocol broker, real HTTP over loopback, the stub API."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from pipeline.dev.broker import free_port
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.health import Verdict
from tests.plugins.environment import VALID
from tests.plugins.metrics import metric_value
from tests.plugins.processes import run_once
from tests.plugins.stage import consumer_class, healthz_answers, running_stage
from tests.plugins.waiting import eventually

pytestmark = pytest.mark.integration


async def test_every_record_is_delivered_in_order_and_committed_to_the_end(new_topic, stub):
    """All records reach the API once, in order per partition, one request at a time per
    partition, and the group's committed offsets reach the end of every partition."""
    topic = await new_topic(4)
    await topic.produce(400)
    async with running_stage(topic.settings(stub.url)):
        await eventually(lambda: stub.stats().unique == 400, what="400 deliveries")
    stats = stub.stats()
    assert 0 == stats.order_violations
    assert 0 == stats.duplicates
    assert 0 == stats.header_mismatches
    assert {1} == {p.max_concurrent for p in stats.partitions.values()}
    assert topic.expected_end(400) == await topic.committed()


async def test_partitions_proceed_concurrently(new_topic):
    """With 20 ms per call, 4 partitions are in flight together and finish well before one
    request at a time could."""
    topic = await new_topic(4)
    await topic.produce(80)
    async with StubServer(StubConfig(latency_ms=20)) as slow:
        async with running_stage(topic.settings(slow.url)):
            await eventually(lambda: slow.stats().unique == 80, what="80 deliveries")
        stats = slow.stats()
    assert stats.first_request_at is not None
    assert stats.last_accept_at is not None
    elapsed = stats.last_accept_at - stats.first_request_at
    assert elapsed < 80 * 0.020 * 0.75, f"took {elapsed:.2f}s: partitions did not overlap"
    assert 4 == stats.max_concurrent_total


async def test_outage_and_429_storm_keep_order_honour_retry_after_and_deliver_all(new_topic):
    """500s then 429s with Retry-After: the order is kept, the wait honoured, nothing lost."""
    topic = await new_topic(3)
    await topic.produce(150)
    faults = StubConfig(latency_ms=1, error_burst=30, throttle_burst=6, retry_after_s=1)
    async with StubServer(faults) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: api.stats().unique == 150, what="all 150 after faults")
            assert Verdict(ok=True) == stage.ready(), "ready, and nothing degraded"
        stats = api.stats()
    assert 0 == stats.order_violations
    assert 30 <= stats.statuses.get(500, 0)
    assert 6 == stats.statuses.get(429, 0)
    assert stats.min_retry_after_gap_s is not None
    assert stats.min_retry_after_gap_s >= 0.95, "a 429's Retry-After: 1 was not honoured"
    assert topic.expected_end(150) == await topic.committed()


async def test_a_rejected_record_halts_only_its_partition(new_topic):
    """A 4xx halts its partition at that record (nothing later sent or committed past it), is
    counted and shown by /readyz, which stays 200 (a halt must not block a rollout or a drain);
    the other partitions deliver everything."""
    topic = await new_topic(3)
    await topic.produce(90)
    bad = f"{topic.name}/1/10"  # partition 1, offset 10
    async with StubServer(StubConfig(latency_ms=1, reject_keys=frozenset({bad}))) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(
                lambda: api.stats().unique == 60 + 10, what="partitions 0, 2 and 1 up to 10"
            )
            await eventually(lambda: stage.ready().degraded, what="/readyz to report the halt")
            await asyncio.sleep(0.5)  # a commit round, and time to (wrongly) send more
            ops = f"http://127.0.0.1:{stage.ops_port}"
            async with httpx.AsyncClient() as client:
                readyz = await client.get(f"{ops}/readyz")
            labels = {"topic": topic.name, "partition": "1"}
            rejections = await metric_value(
                f"{ops}/metrics", "space_pipeline_rejections_total", **labels
            )
            halted = await metric_value(
                f"{ops}/metrics", "space_pipeline_partition_halted", **labels
            )
        stats = api.stats(offsets=True)
    assert 200 == readyz.status_code
    assert readyz.json()["ok"] is True
    (degraded,) = readyz.json()["degraded"]
    assert f"{topic.name}/1/10" in degraded  # as PIPELINE_SKIP_RECORDS names it
    assert f"{topic.name}/1/10" in readyz.json()["reason"]
    assert 1.0 == rejections
    assert 1.0 == halted
    assert tuple(range(10)) == stats.partitions[f"{topic.name}/1"].offsets
    assert {0: 30, 1: 10, 2: 30} == await topic.committed()


async def test_a_member_with_no_partition_is_ready_and_a_stop_makes_it_unready(new_topic):
    """Readiness is "running and in the group": the second member of a one-partition topic gets
    nothing and is Ready all the same (a rollout waits for Ready pods); once a stop begins
    /readyz is 503 at once, so no new traffic or disruption budget counts on a leaving pod."""
    topic = await new_topic(1)
    async with (
        StubServer(StubConfig(latency_ms=1)) as api,
        running_stage(topic.settings(api.url)) as one,
    ):
        await eventually(lambda: one.ready().ok, what="the first member joined")
        async with running_stage(topic.settings(api.url)) as two:
            await eventually(lambda: two.ready().ok, what="the second member joined")
            await eventually(
                lambda: len(two.status().partitions) + len(one.status().partitions) == 1,
                what="the partition owned by one member only",
            )
            idle = min((one, two), key=lambda stage: len(stage.status().partitions))
            assert Verdict(ok=True) == idle.ready()
            idle.stop()
            stopping = idle.ready()
    assert not stopping.ok
    assert "stopping" in stopping.reason


async def test_sigterm_drains_commits_and_exits_zero(new_topic, stage_process):
    """SIGTERM mid-stream: the process stops fetching, finishes in-flight sends, commits what
    was accepted, leaves the group and exits 0 well within the shutdown timeout."""
    topic = await new_topic(4)
    await topic.produce(2000)
    async with StubServer(StubConfig(latency_ms=10)) as api:
        proc = stage_process(topic.env(api.url))
        await eventually(lambda: api.stats().unique >= 100, what="delivery under way")
        proc.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 15)
        stopped_in = time.monotonic() - started
        stats = api.stats()
    assert 0 == code, proc.logs()[-2000:]
    assert stopped_in < 10
    assert stats.unique < 2000, "it should have stopped before the end"
    assert 0 == stats.in_flight
    committed = await topic.committed()
    assert stats.unique == sum(v or 0 for v in committed.values()), (
        "every accepted record, and only those, is committed"
    )
    assert '"event":"stage.stopped"' in proc.logs()


async def test_sigkill_then_restart_loses_nothing_and_duplicates_keep_their_key(
    new_topic, stage_process
):
    """SIGKILL at an arbitrary instant, then a restart: every record is delivered, first
    deliveries stay in order, and any redelivery carries the same Idempotency-Key."""
    topic = await new_topic(4)
    await topic.produce(1200)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        first = stage_process(topic.env(api.url))
        await eventually(lambda: api.stats().unique >= 300, what="delivery under way")
        first.process.kill()
        await asyncio.to_thread(first.wait, 10)
        killed_at = api.stats().unique
        second = stage_process(topic.env(api.url))
        await eventually(lambda: api.stats().unique == 1200, timeout=60, what="all 1200")
        second.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(second.wait, 15)
        stats = api.stats(offsets=True)
    assert killed_at < 1200
    assert 0 == stats.order_violations, "first deliveries must stay in order"
    assert 0 == stats.header_mismatches
    assert 1200 == stats.unique
    # The stub counts a duplicate only when the same Idempotency-Key comes again.
    assert stats.accepted == stats.unique + stats.duplicates
    assert topic.expected_end(1200) == await topic.committed()


async def test_two_processes_share_the_partitions_and_one_takes_over(new_topic, stage_process):
    """Two processes in one group split the partitions; when one stops, the other takes its
    partitions over and nothing is lost."""
    topic = await new_topic(4)
    await topic.produce(3000)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        a = stage_process(topic.env(api.url))
        b = stage_process(topic.env(api.url))
        await eventually(lambda: api.stats().unique >= 600, what="delivery under way")

        async def assigned(proc) -> float | None:
            try:
                return await metric_value(
                    f"{proc.ops_url}/metrics", "space_pipeline_assigned_partitions"
                )
            except httpx.HTTPError:
                return None

        shares: list[float | None] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shares = [await assigned(a), await assigned(b)]
            if shares == [2.0, 2.0]:
                break
            await asyncio.sleep(0.2)
        assert [2.0, 2.0] == shares
        a.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(a.wait, 20)
        await eventually(lambda: api.stats().unique == 3000, timeout=90, what="all 3000")
        assert 4.0 == await assigned(b)
        b.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(b.wait, 20)
        stats = api.stats()
    assert 0 == stats.order_violations
    assert topic.expected_end(3000) == await topic.committed()


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"PIPELINE_SPACE_API_URL": ""}, "PIPELINE_SPACE_API_URL"),
        ({"PIPELINE_METRICS_PORT": "70000"}, "PIPELINE_METRICS_PORT"),
        ({"PIPELINE_ORDERING": "random"}, "PIPELINE_ORDERING"),
        ({"PIPELINE_KAFKA_TOPICS": " , "}, "PIPELINE_KAFKA_TOPICS"),
        ({"PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS": "60000"}, "PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_setting(env, setting, tmp_path):
    """A wrong setting fails at start: exit code 2 and one line that names it."""
    result = run_once(tmp_path, **(VALID | env))
    assert 2 == result.returncode
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert setting in lines[0]
    assert "" == result.stdout


async def test_healthz_stays_green_while_the_api_fails(new_topic):
    """An API that only answers 503 for three times the stall timeout is not the stage's fault:
    /healthz stays 200 all along (restarting every pod would only add rebalances), and
    everything is delivered in order once the API recovers."""
    topic = await new_topic(2)
    await topic.produce(20)
    async with StubServer(StubConfig(latency_ms=1, error_rate=1.0)) as api:
        settings = topic.settings(api.url, stall_timeout_s=1.0)
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().requests >= 4, what="failing attempts")
            answers = await healthz_answers(stage)
            api.set_config(StubConfig(latency_ms=1))
            await eventually(lambda: api.stats().unique == 20, what="recovery")
        stats = api.stats()
    assert {200} == set(answers)
    assert 0 == stats.order_violations
    assert topic.expected_end(20) == await topic.committed()


async def test_healthz_fails_when_records_wait_in_kafka_and_nothing_is_held_for_them(new_topic):
    """A consumer that has stopped fetching one partition (as aiokafka has been seen to do)
    leaves its records in Kafka while the stage holds nothing of it: after the stall timeout
    /healthz answers 503 naming that partition, since a restart is what cures it."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    class StuckOnPartitionZero(AIOKafkaConsumer):
        async def getmany(self, *partitions, **kwargs):
            wanted = [tp for tp in self.assignment() if tp.partition != 0]
            if not wanted:
                await asyncio.sleep(kwargs.get("timeout_ms", 0) / 1000)
                return {}
            return await super().getmany(*wanted, **kwargs)

    topic = await new_topic(2)
    await topic.produce(20)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, stall_timeout_s=1.0)
        stuck = consumer_class(StuckOnPartitionZero)
        async with running_stage(settings, source=stuck) as stage:
            await eventually(lambda: api.stats().unique == 10, what="partition 1 delivered")
            await eventually(lambda: not stage.live().ok, timeout=10, what="a verdict")
            verdict = stage.live()
    assert f"{topic.name}/0" in verdict.reason
    assert f"{topic.name}/1" not in verdict.reason


async def test_key_ordering_keeps_each_key_in_order_while_keys_overlap(new_topic):
    """``ordering=key``: records of one key arrive in offset order, keys of one partition are
    in flight together, and the committed offset still waits for every earlier record."""
    topic = await new_topic(1)
    await topic.send(
        *({"value": b"%d" % i, "key": b"k%d" % (i % 6), "partition": 0} for i in range(120))
    )
    async with StubServer(StubConfig(latency_ms=10, jitter_ms=8)) as api:
        async with running_stage(topic.settings(api.url, ordering="key")):
            await eventually(lambda: api.stats().unique == 120, what="all 120")
        stats = api.stats(offsets=True)
    arrivals = stats.partitions[f"{topic.name}/0"].offsets
    assert arrivals is not None
    for key in range(6):
        of_key = [offset for offset in arrivals if offset % 6 == key]
        assert sorted(of_key) == of_key, f"key k{key} arrived out of order"
    assert stats.partitions[f"{topic.name}/0"].max_concurrent > 1, "keys did not overlap"
    assert {0: 120} == await topic.committed()


def test_a_broker_unreachable_past_the_startup_timeout_is_fatal_with_one_clear_line(tmp_path):
    """No broker at the bootstrap address for the whole start-up timeout: exit code 1 and one
    ``stage.failed`` line naming the setting and the error (no traceback, no ExceptionGroup
    wrapper). tests/test_startup.py has the waiting itself."""
    result = run_once(
        tmp_path,
        PIPELINE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        PIPELINE_KAFKA_TOPICS="t",
        PIPELINE_SPACE_API_URL="http://127.0.0.1:1/items",
        PIPELINE_METRICS_PORT="0",
        PIPELINE_KAFKA_STARTUP_TIMEOUT_S="0.5",
    )
    assert 1 == result.returncode
    events = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "stage.failed"]
    assert 1 == len(failed)
    assert failed[0]["error"].startswith("KafkaStartupError")
    assert "PIPELINE_KAFKA_STARTUP_TIMEOUT_S" in failed[0]["error"]
    assert "Connect call failed" in failed[0]["error"]
    assert "Traceback" not in result.stdout + result.stderr


async def test_a_full_partition_buffer_pauses_fetching_and_loses_nothing(new_topic):
    """With room for 5 records per partition, partitions are paused (seeking back to the first
    record that did not fit) and resumed, and every record still arrives once, in order."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    topic = await new_topic(2)
    await topic.produce(300)
    paused_seen: set[str] = set()

    def paused() -> bool:
        for partition in ("0", "1"):
            labels = {"topic": topic.name, "partition": partition}
            if REGISTRY.get_sample_value("space_pipeline_partition_paused", labels) == 1:
                paused_seen.add(partition)
        return paused_seen == {"0", "1"}

    async with StubServer(StubConfig(latency_ms=3)) as api:
        settings = topic.settings(api.url, partition_buffer_records=5)
        async with running_stage(settings):
            await eventually(paused, what="both partitions paused on a full buffer")
            await eventually(lambda: api.stats().unique == 300, what="all 300")
        stats = api.stats()
    assert 0 == stats.order_violations
    assert 0 == stats.duplicates
    assert topic.expected_end(300) == await topic.committed()


async def test_a_second_signal_exits_at_once_with_a_non_zero_code(new_topic, stage_process):
    """SIGTERM starts a drain that cannot finish (the API hangs); a second SIGTERM exits
    immediately with 128 + 15."""
    topic = await new_topic(1)
    await topic.produce(10)
    async with StubServer(StubConfig(latency_ms=60_000)) as api:
        proc = stage_process(topic.env(api.url, shutdown_timeout_s="60"))
        await eventually(lambda: api.stats().in_flight == 1, what="a hanging request")
        proc.process.send_signal(signal.SIGTERM)
        await eventually(lambda: "stage.stopping" in proc.logs(), what="the drain to start")
        proc.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 5)
    assert 128 + signal.SIGTERM == code
    assert '"event":"stage.forced_exit"' in proc.logs()


async def test_a_rebalance_bounds_the_drain_of_a_hanging_send_and_loses_nothing(new_topic):
    """A send hangs when a second member joins: the revoke waits only the drain timeout,
    commits nothing past the unanswered record, counts and logs the abandoned request (with
    its offset), and the new owner sends it again with the same Idempotency-Key; everything is
    delivered and committed."""
    from prometheus_client import REGISTRY  # noqa: PLC0415
    from structlog.testing import capture_logs  # noqa: PLC0415

    topic = await new_topic(2)
    await topic.produce(20)
    async with StubServer(StubConfig(latency_ms=30_000)) as api:
        settings = topic.settings(api.url, rebalance_drain_timeout_ms=1000)
        with capture_logs() as logs:
            async with running_stage(settings):
                await eventually(lambda: api.stats().in_flight == 2, what="two hanging sends")
                api.set_config(StubConfig(latency_ms=2))  # new requests are fast again
                async with running_stage(settings):
                    # Unbounded, the revoke would wait out the 30 s hang before anything moved.
                    await eventually(lambda: api.stats().unique == 20, timeout=20, what="all 20")
        stats = api.stats()
    abandoned = [e for e in logs if e["event"] == "stage.request_abandoned"]
    assert {(0, 0), (1, 0)} == {(e["partition"], e["offset"]) for e in abandoned}
    assert "warning" == abandoned[0]["log_level"]
    assert 2.0 == sum(
        REGISTRY.get_sample_value(
            "space_pipeline_abandoned_requests_total", {"topic": topic.name, "partition": p}
        )
        or 0.0
        for p in ("0", "1")
    )
    assert 0 == stats.order_violations
    assert stats.duplicates >= 1, "the unanswered records were sent again"
    assert stats.accepted == stats.unique + stats.duplicates
    assert topic.expected_end(20) == await topic.committed()


async def test_sigterm_while_the_api_is_down_does_not_wait_out_retries(new_topic, stage_process):
    """Every partition sleeps before its next retry when SIGTERM comes: nothing is on the wire,
    so the stage commits and leaves at once instead of spending its shutdown deadline."""
    topic = await new_topic(4)
    await topic.produce(40)
    async with StubServer(StubConfig(latency_ms=1, error_rate=1.0)) as api:
        env = topic.env(api.url, retry_initial_backoff_s="3", retry_max_backoff_s="5")
        proc = stage_process(env)
        await eventually(lambda: api.stats().requests >= 8, what="failing attempts")
        await asyncio.sleep(0.3)
        proc.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 20)
        took = time.monotonic() - started
    assert 0 == code, proc.logs()[-2000:]
    assert took < 3.0, f"took {took:.1f}s of a 10 s shutdown timeout"
    assert {p: 0 for p in range(4)} == await topic.committed(), "nothing accepted, nothing past"
