"""Starting before Kafka: the stage waits for its brokers, says so, and can be stopped meanwhile.

In a cluster the pipeline's pods and the brokers restart independently: a stage that gave up
within a second of not reaching Kafka would crash-loop into ever longer back-offs, and come back
long after the brokers did. These run ``space-pipeline run`` as a process against brokers that
are not there yet (a cut fault proxy, a port nobody listens at) or that hold the join.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from pipeline.dev.broker import create_topic, free_port
from pipeline.dev.stub_api import StubConfig, StubServer
from tests.plugins.environment import VALID, clean_env
from tests.plugins.processes import run_once
from tests.plugins.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

JOIN_GROUP = 11


def events(logs: str, name: str) -> list[dict[str, object]]:
    """Every JSON log line of event ``name``."""
    found = []
    for line in logs.splitlines():
        if f'"event":"{name}"' in line:
            found.append(json.loads(line))
    return found


async def probe(url: str) -> tuple[int, str]:
    """A probe's status and reason, or ``(0, "")`` while nothing answers yet."""
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            answer = await client.get(url)
    except httpx.HTTPError:
        return 0, ""
    return answer.status_code, answer.json()["reason"]


async def test_a_stage_started_while_kafka_is_down_waits_then_joins_and_delivers(
    proxied_kafka, stage_process
):
    """Kafka is unreachable for the first 20 s: the stage logs that it started and that it
    waits (a line for each of the first attempts, then fewer), keeps /healthz 200 and /readyz
    503 naming the brokers, then joins, delivers everything and exits 0 on SIGTERM."""
    topic = await proxied_kafka.new_topic(2)
    await topic.produce(200)
    proxy = proxied_kafka.proxy
    async with StubServer(StubConfig(latency_ms=2)) as api:
        proxy.cut()
        proc = stage_process(topic.env(api.url, log_format="json"))
        live, ready = set(), set()
        reasons = []
        outage_ends = time.monotonic() + 20
        while time.monotonic() < outage_ends:
            assert proc.process.poll() is None, proc.logs()[-2000:]
            live.add((await probe(f"{proc.ops_url}/healthz"))[0])
            status, reason = await probe(f"{proc.ops_url}/readyz")
            ready.add(status)
            reasons.append(reason)
            await asyncio.sleep(0.5)
        await proxy.restore()
        await eventually(lambda: api.stats().unique == 200, timeout=60, what="all 200")

        async def ready_now() -> bool:
            return 200 == (await probe(f"{proc.ops_url}/readyz"))[0]

        await eventually_async(ready_now, timeout=10, what="/readyz 200 once joined")
        proc.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        stats = api.stats()
    logs = proc.logs()
    assert 0 == code, logs[-3000:]
    assert live - {0} == {200}, live
    assert ready - {0} == {503}, ready
    assert any(proxy.address in reason for reason in reasons), reasons[-3:]
    assert 0 == stats.order_violations
    assert topic.expected_end(200) == await topic.committed()
    started_at = logs.index('"event":"stage.started"')
    unreachable = events(logs, "consumer.kafka_unreachable")
    assert started_at < logs.index('"event":"consumer.kafka_unreachable"'), "started is first"
    assert all(line["brokers"] == topic.bootstrap for line in unreachable)
    reached = events(logs, "consumer.kafka_reached")
    assert 1 == len(reached), logs[-3000:]
    assert len(unreachable) < reached[0]["attempts"], "every attempt logged: not summarised"
    assert len(unreachable) <= 5, [line["attempt"] for line in unreachable]


def test_the_stage_exits_1_when_kafka_stays_unreachable_past_the_startup_timeout(
    tmp_path: Path,
) -> None:
    """Nobody listens at the brokers' address: after PIPELINE_KAFKA_STARTUP_TIMEOUT_S (here 3 s)
    of attempts the stage exits 1, with one line naming the setting and what it waited for."""
    brokers = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    env = VALID | {
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": brokers,
        "PIPELINE_KAFKA_STARTUP_TIMEOUT_S": "3",
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_LOG_FORMAT": "json",
    }
    done = run_once(tmp_path, **env)
    took = time.monotonic() - started
    assert 1 == done.returncode, done.stdout[-2000:] + done.stderr[-2000:]
    assert took >= 3, f"gave up after {took:.1f}s"
    failed = events(done.stdout, "stage.failed")
    assert 1 == len(failed), done.stdout[-2000:]
    assert "PIPELINE_KAFKA_STARTUP_TIMEOUT_S" in str(failed[0]["error"])
    assert brokers in str(failed[0]["error"])
    assert events(done.stdout, "consumer.kafka_unreachable"), "no line said it was waiting"
    assert "Unable connect" in str(failed[0]["error"]), "the reason is in the stage's line"
    own = [line for line in done.stdout.splitlines() if '"logger":"aiokafka"' in line]
    assert not [line for line in own if "Unable connect" in line], "aiokafka's lines escaped"


async def test_sigterm_while_waiting_for_kafka_stops_at_once(stage_process) -> None:
    """The brokers are away (and the start-up timeout has its default, 5 minutes): SIGTERM ends
    the wait and the process exits 0 within a second or two."""
    env = {
        **VALID,
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(free_port()),
        "PIPELINE_LOG_FORMAT": "json",
    }
    proc = stage_process(clean_env() | env)
    await eventually(
        lambda: '"consumer.kafka_unreachable"' in proc.logs() or proc.process.poll() is not None,
        timeout=30,
        what="a line saying it waits for Kafka",
    )
    assert proc.process.poll() is None, proc.logs()[-2000:]
    proc.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await asyncio.to_thread(proc.wait, 30)
    took = time.monotonic() - started
    assert 0 == code, proc.logs()[-2000:]
    assert took < 2.5, f"exit took {took:.1f}s"


async def test_the_start_is_logged_before_a_slow_join_which_says_it_waits_and_sigterm_ends_it(
    proxied_kafka, stage_process
):
    """Every JoinGroup takes 30 s: ``stage.started`` (brokers, topics, URL) comes at once anyway,
    a line says the join still waits, /readyz names it, and SIGTERM during the join exits 0 at
    once."""
    topic = await proxied_kafka.new_topic(2)
    proxied_kafka.proxy.kafka_request_delays[JOIN_GROUP] = 30.0
    proc = stage_process(topic.env("http://127.0.0.1:1/items", log_format="json"))
    await eventually(
        lambda: '"consumer.waiting"' in proc.logs() or proc.process.poll() is not None,
        timeout=30,
        what="a line saying the join waits",
    )
    status, reason = await probe(f"{proc.ops_url}/readyz")
    proc.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await asyncio.to_thread(proc.wait, 30)
    took = time.monotonic() - started
    logs = proc.logs()
    assert 0 == code, logs[-3000:]
    assert took < 2.5, f"exit took {took:.1f}s"
    (line,) = events(logs, "stage.started")
    assert topic.bootstrap == line["brokers"]
    assert [topic.name] == line["topics"]
    assert "http://127.0.0.1:1/items" == line["api_url"]
    assert logs.index('"event":"stage.started"') < logs.index('"event":"consumer.waiting"')
    assert "group join" == events(logs, "consumer.waiting")[0]["on"]
    assert "stage.partitions_assigned" not in logs
    assert 503 == status
    assert topic.group in reason


async def test_with_a_dead_letter_topic_the_stage_waits_for_kafka_too(proxied_kafka, stage_process):
    """The dead-letter producer needs Kafka as well: it starts once the consumer has reached the
    brokers, so a stage with a dead-letter topic waits out an outage at start like any other."""
    topic = await proxied_kafka.new_topic(1)
    dlq = f"{topic.name}-dlq"
    await create_topic(topic.bootstrap, dlq, 1)
    await topic.produce(10)
    proxy = proxied_kafka.proxy
    async with StubServer(StubConfig(latency_ms=2)) as api:
        proxy.cut()
        env = topic.env(
            api.url,
            log_format="json",
            on_reject="dead-letter",
            dead_letter_topic=dlq,
            dead_letter_idempotence="false",  # tansu has no InitProducerId
        )
        proc = stage_process(env)
        await asyncio.sleep(5)
        assert proc.process.poll() is None, proc.logs()[-2000:]
        await proxy.restore()
        await eventually(lambda: api.stats().unique == 10, timeout=60, what="all 10")
        proc.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert 0 == code, proc.logs()[-3000:]
