"""Every outcome has a rule, seen end to end: a real broker, real HTTP, the stub API's faults."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from pipeline.dev.stub_api import REDIRECT_LOCATION, FaultWindow, StubConfig, StubServer
from pipeline.health import Verdict
from pipeline.records import Record
from tests.plugins.broker import new_dlq
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

# tansu has no idempotent producer (InitProducerId): dead letters go with acks=all only here.
DLQ = {"on_reject": "dead-letter", "dead_letter_idempotence": False}


async def dead_letters(bootstrap: str, topic: str) -> list:
    """Every record on the dead-letter topic, read from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        records = []
        while len(records) < end:
            batch = await consumer.getmany(timeout_ms=1000)
            records += [r for part in batch.values() for r in part]
        return records
    finally:
        await consumer.stop()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def echoing_api(reject: str) -> AsyncIterator[str]:
    """An API that accepts every record but ``reject`` (an Idempotency-Key), which it answers
    422 echoing what it got: our Authorization, our API key header and the URL we called."""
    from aiohttp import web  # noqa: PLC0415

    async def answer(request: web.Request) -> web.Response:
        if request.headers.get("Idempotency-Key") != reject:
            return web.Response(status=204)
        seen = {name: request.headers.get(name) for name in ("Authorization", "X-Api-Key")}
        return web.json_response({"refused": str(request.url), "headers": seen}, status=422)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_rejected_records_are_dead_lettered_and_everything_else_flows(new_topic):
    """Two poisoned records go to the dead-letter topic with their key, value and headers plus
    where they came from and why; every other record is delivered in order; offsets reach the
    end; nothing halts, so /readyz stays green."""
    topic = await new_topic(3)
    dlq = await new_dlq(topic)
    await topic.produce(90)
    poison = frozenset({f"{topic.name}/1/10", f"{topic.name}/2/20"})
    async with StubServer(StubConfig(latency_ms=1, reject_keys=poison)) as api:
        settings = topic.settings(api.url, dead_letter_topic=dlq, **DLQ)
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().unique == 88, what="all but the two")
            await eventually(lambda: Verdict(ok=True) == stage.ready(), what="nothing degraded")
        stats = api.stats()
    letters = await dead_letters(topic.bootstrap, dlq)
    assert 0 == stats.order_violations
    assert topic.expected_end(90) == await topic.committed()
    assert 2 == len(letters)
    by_offset = {int(dict(r.headers)["x-original-offset"]): r for r in letters}
    letter = by_offset[10]
    headers = dict(letter.headers)
    assert b"item-31" == letter.key  # record 31 is partition 1's offset 10
    assert b'{"seq": 31' in letter.value
    assert topic.name.encode() == headers["x-original-topic"]
    assert b"1" == headers["x-original-partition"]
    assert b"422" == headers["x-error-status"]
    assert b"4xx" == headers["x-error-reason"]
    assert b"reject list" in headers["x-error-body"]
    assert b"1" == headers["x-error-attempts"]
    assert 1.0 == sample("space_pipeline_dead_letters_total", topic=topic.name, partition="1")


async def test_an_auth_window_is_an_outage_not_bad_records(new_topic):
    """The API answers 401 to everything for 10 s: nothing is dead-lettered or lost, at most a
    few requests a second reach it meanwhile (one probe at a time), /readyz says why, and
    everything continues in order afterwards, without a restart."""
    topic = await new_topic(4)
    dlq = await new_dlq(topic)
    await topic.produce(400)
    async with StubServer(StubConfig(latency_ms=2, token="t0k")) as api:
        settings = topic.settings(api.url, space_api_token="t0k", dead_letter_topic=dlq, **DLQ)
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().unique >= 40, what="delivery under way")
            before = api.stats()
            api.set_config(
                StubConfig(latency_ms=2, token="t0k", faults=(FaultWindow("auth", 0, 10),))
            )
            await eventually(
                lambda: "credentials" in stage.ready().reason, what="/readyz to show the outage"
            )
            reason = stage.ready().reason
            await asyncio.sleep(9.5)
            during = api.stats()
            await eventually(lambda: api.stats().unique == 400, timeout=60, what="all 400")
        stats = api.stats()
    window_requests = during.requests - before.requests
    assert "credentials" in reason
    assert window_requests <= 3 * 10, f"{window_requests} requests in a 10 s auth outage"
    assert 0 == stats.order_violations
    assert [] == await dead_letters(topic.bootstrap, dlq)
    assert topic.expected_end(400) == await topic.committed()
    assert sample("space_pipeline_auth_failures_total") >= 1


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_a_redirect_window_is_an_outage_of_the_url_not_bad_records(new_topic, client):
    """The API answers 307 to everything for 4 s: the redirect is never followed, nothing is
    dead-lettered or halted, at most a probe at a time reaches the API, /readyz names the
    status and the Location (the fix is the URL setting), it is counted, and everything is
    delivered in order once the API answers again."""
    topic = await new_topic(4)
    dlq = await new_dlq(topic)
    await topic.produce(200)
    faults = "space_pipeline_endpoint_faults_total"
    counted = sample(faults, reason="redirect")
    async with StubServer(StubConfig(latency_ms=2)) as api:
        settings = topic.settings(api.url, http_client=client, dead_letter_topic=dlq, **DLQ)
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().unique >= 20, what="delivery under way")
            before = api.stats()
            api.set_config(StubConfig(latency_ms=2, faults=(FaultWindow("redirect", 0, 4),)))
            await eventually(lambda: "307" in stage.ready().reason, what="/readyz to say 307")
            reason = stage.ready().reason
            await asyncio.sleep(3)
            during = api.stats()
            await eventually(lambda: api.stats().unique == 200, timeout=60, what="all 200")
            await eventually(lambda: Verdict(ok=True) == stage.ready(), what="/readyz clear again")
        stats = api.stats()
    window_requests = during.requests - before.requests
    assert REDIRECT_LOCATION in reason
    assert "URL" in reason
    assert window_requests <= 3 * 4, f"{window_requests} requests in a 4 s redirect window"
    assert 0 == stats.not_found, "a redirect was followed"
    assert 0 == stats.order_violations
    assert [] == await dead_letters(topic.bootstrap, dlq)
    assert topic.expected_end(200) == await topic.committed()
    assert sample(faults, reason="redirect") > counted


async def test_a_retry_after_holds_back_every_partition(new_topic):
    """The first answer is a 429 with ``Retry-After: 2``: no request of any partition reaches
    the API before it has elapsed, and then everything is delivered."""
    topic = await new_topic(4)
    await topic.produce(80)
    config = StubConfig(latency_ms=1, throttle_burst=1, retry_after_s=2)
    async with StubServer(config) as api:
        async with running_stage(topic.settings(api.url)):
            await eventually(lambda: api.stats().unique == 80, what="all 80")
        stats = api.stats()
    assert 1 == stats.statuses.get(429)
    assert 0 == stats.retry_after_violations
    assert 0 == stats.order_violations


async def test_the_rate_limit_holds_across_partitions(new_topic):
    """100 requests/s with a burst of 10, over 4 partitions: no second sees more than 110."""
    topic = await new_topic(4)
    await topic.produce(400)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, rate_limit_per_s=100, rate_limit_burst=10)
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 400, timeout=30, what="all 400")
        stats = api.stats()
    assert stats.max_requests_in_any_1s_window <= 110
    assert 0 == stats.order_violations


async def test_an_outage_opens_the_circuit_and_everything_arrives_after(new_topic):
    """15 s of 503s: after a few failures the circuit opens and only a probe at a time goes
    (a few requests a second), /healthz stays green, and all records arrive in order after."""
    topic = await new_topic(4)
    await topic.produce(200)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: api.stats().unique >= 20, what="delivery under way")
            api.set_config(StubConfig(latency_ms=1, faults=(FaultWindow("outage", 0, 15),)))
            await eventually(
                lambda: sample("space_pipeline_circuit_state") == 1, what="the circuit to open"
            )
            before = api.stats()
            await asyncio.sleep(12)
            during = api.stats()
            live = stage.live()
            await eventually(lambda: api.stats().unique == 200, timeout=30, what="all 200")
        stats = api.stats()
    rate = (during.requests - before.requests) / 12
    assert rate <= 4, f"{rate:.1f} requests/s while the circuit was open"
    assert live.ok
    assert 0 == stats.order_violations
    assert topic.expected_end(200) == await topic.committed()


async def test_the_skip_list_lets_a_halted_record_past(new_topic):
    """A rejected record halts its partition; with that exact record on the skip list (and a
    dead-letter topic), a restart lets it past: dead-lettered as skipped, counted, and the
    rest of the partition delivered and committed."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    await topic.produce(40)
    bad = f"{topic.name}/0/5"
    async with StubServer(StubConfig(latency_ms=1, reject_keys=frozenset({bad}))) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: "halted" in stage.ready().reason, what="the halt")
            await eventually(lambda: api.stats().unique == 25, what="all but the halted part")
        assert {0: 5, 1: 20} == await topic.committed()
        settings = topic.settings(
            api.url,
            skip_records=bad,
            dead_letter_topic=dlq,
            dead_letter_idempotence=False,
        )
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().unique == 39, what="all but the skipped")
            await eventually(lambda: Verdict(ok=True) == stage.ready(), what="no halt")
    letters = await dead_letters(topic.bootstrap, dlq)
    assert [b"skipped"] == [dict(r.headers)["x-error-reason"] for r in letters]
    assert topic.expected_end(40) == await topic.committed()
    assert 1.0 == sample("space_pipeline_skipped_records_total", topic=topic.name, partition="0")


async def test_the_dead_letter_guard_halts_a_partition_that_rejects_too_much(new_topic):
    """With at most 3 dead letters a minute, the fourth rejection of a partition halts it
    instead: a misconfigured API cannot drain a topic into the DLQ."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    await topic.produce(40)
    poison = frozenset(f"{topic.name}/0/{offset}" for offset in range(10))
    async with StubServer(StubConfig(latency_ms=1, reject_keys=poison)) as api:
        settings = topic.settings(
            api.url, dead_letter_topic=dlq, dead_letter_max_per_minute=3, **DLQ
        )
        async with running_stage(settings) as stage:
            await eventually(lambda: "halted" in stage.ready().reason, what="the guard's halt")
            await eventually(lambda: api.stats().unique == 20, what="partition 1 in full")
            reason = stage.ready().reason
    assert f"{topic.name}/0/3" in reason
    assert 3 == len(await dead_letters(topic.bootstrap, dlq))
    assert {0: 3, 1: 20} == await topic.committed()
    guard = "space_pipeline_dead_letter_guard_trips_total"
    assert 1.0 == sample(guard, topic=topic.name, partition="0")


async def test_a_halt_stays_reported_across_rebalances_until_the_record_passes(new_topic):
    """A halt is kept with the committed offset: the next owner reports the partition halted
    from the start (the alert does not reset), tries the record again, and clears the halt
    once the API takes it."""
    topic = await new_topic(1)
    await topic.produce(10)
    bad = frozenset({f"{topic.name}/0/4"})
    labels = {"topic": topic.name, "partition": "0"}
    async with StubServer(StubConfig(latency_ms=1, reject_keys=bad)) as api:
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: "halted" in stage.ready().reason, what="the halt")
            await asyncio.sleep(0.5)  # a commit round writes the note
        api.set_config(StubConfig(latency_ms=300, reject_keys=bad))  # still refused, slowly
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: stage._joined, what="assigned")
            await eventually(
                lambda: sample("space_pipeline_partition_halted", **labels) == 1.0,
                what="the halt reported from the start",
            )
            first_reason = stage.ready().reason
        api.set_config(StubConfig(latency_ms=1))  # the API now takes it
        async with running_stage(topic.settings(api.url)) as stage:
            await eventually(lambda: api.stats().unique == 10, what="all 10")
            await eventually(lambda: Verdict(ok=True) == stage.ready(), what="the halt cleared")
    assert f"{topic.name}/0/4" in first_reason
    assert {0: 10} == await topic.committed()


async def test_readyz_stays_200_and_names_the_auth_outage_over_http(new_topic):
    """While credentials are refused the probe endpoint names the outage but answers 200: an
    outage of the API is every pod's, and a NotReady pod would only block rollouts and drains
    (the outage has its metric, alert and /admin/status)."""
    topic = await new_topic(1)
    await topic.produce(3)
    async with StubServer(StubConfig(latency_ms=1, token="right")) as api:
        settings = topic.settings(api.url, space_api_token="wrong")
        async with running_stage(settings) as stage, httpx.AsyncClient() as client:
            await eventually(lambda: "credentials" in stage.ready().reason, what="the auth outage")
            readyz = await client.get(f"http://127.0.0.1:{stage.ops_port}/readyz")
    assert 200 == readyz.status_code
    assert readyz.json()["ok"] is True
    (degraded,) = readyz.json()["degraded"]
    assert "credentials" in degraded
    assert "credentials" in readyz.json()["reason"]


class Refused(Exception):
    """A refusal with a long explanation, as some APIs give (the sink's body is its repr)."""

    retryable = False


async def refuse(record: object) -> None:
    """A sink function that refuses every record, at length."""
    raise Refused("no: " + "because " * 1000)


delivered_by_sink: list[int] = []


async def refuse_the_first(record: Record) -> None:
    """A sink function that refuses offset 0 at length and takes every other record."""
    if record.offset == 0:
        raise Refused("no: " + "because " * 1000)
    delivered_by_sink.append(record.offset)


async def send_big(topic, value_size: int, then: int = 0) -> None:
    """Offset 0 of partition 0: a record of ``value_size`` bytes; then ``then`` small ones."""
    producer = AIOKafkaProducer(bootstrap_servers=topic.bootstrap, max_request_size=4 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic.name, b"v" * value_size, key=b"big", partition=0)
        for i in range(then):
            await producer.send_and_wait(topic.name, b"small %d" % i, key=b"s", partition=0)
    finally:
        await producer.stop()


async def test_a_record_the_topic_could_hold_is_dead_lettered_whole_with_a_shorter_error_body(
    new_topic,
):
    """A refused record just under Kafka's 1 MiB default, with a long refusal: the dead letter
    fits (the producer allows a full-size record plus headers), the error body is cut to make
    room, and the record's own bytes arrive intact."""
    topic = await new_topic(1)
    dlq = await new_dlq(topic)
    size = 1_047_900
    await send_big(topic, size)
    settings = topic.settings(
        None, sink_function="tests.test_outcomes:refuse", dead_letter_topic=dlq, **DLQ
    )
    async with running_stage(settings):
        await eventually_async(
            lambda: letters_at_least(topic.bootstrap, dlq, 1), timeout=20, what="the dead letter"
        )
    [letter] = await dead_letters(topic.bootstrap, dlq)
    headers = dict(letter.headers)
    assert b"v" * size == letter.value
    assert b"big" == letter.key
    assert 0 < len(headers["x-error-body"]) < 1024
    assert headers["x-error-body"].startswith(b"Refused('no: because")
    assert {0: 1} == await topic.committed()


async def test_a_dead_letter_that_can_never_be_written_halts_its_partition_naming_why(new_topic):
    """A refused record too large for any dead letter (2 MiB): no retry can help, so instead
    of retrying for ever behind a green /readyz, the partition halts at it, visibly (log line,
    halted gauge, /readyz naming it), and nothing after it is delivered or committed."""
    delivered_by_sink.clear()
    topic = await new_topic(1)
    dlq = await new_dlq(topic)
    await send_big(topic, 2 << 20, then=3)
    settings = topic.settings(
        None,
        sink_function="tests.test_outcomes:refuse_the_first",
        sink_argument="record",
        dead_letter_topic=dlq,
        kafka_fetch_max_bytes=8 << 20,
        kafka_max_partition_fetch_bytes=8 << 20,
        **DLQ,
    )
    async with running_stage(settings) as stage:
        await eventually(lambda: "halted" in stage.ready().reason, timeout=20, what="the halt")
        reason = stage.ready().reason
        await asyncio.sleep(0.5)
        halted = sample("space_pipeline_partition_halted", topic=topic.name, partition="0")
    assert f"{topic.name}/0/0" in reason
    assert 1.0 == halted
    assert [] == delivered_by_sink
    assert [] == await dead_letters(topic.bootstrap, dlq)
    assert (await topic.committed())[0] in (None, 0)


async def letters_at_least(bootstrap: str, topic: str, count: int) -> bool:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp] >= count
    finally:
        await consumer.stop()


async def test_a_skipped_record_whose_dead_letter_can_never_be_written_halts_instead(new_topic):
    """A record named in the skip list goes to the dead-letter topic before it is let past; when
    that can never work the partition halts at it (the stage does not fail), since letting
    it past would lose it."""
    topic = await new_topic(1)
    dlq = await new_dlq(topic)
    await send_big(topic, 2 << 20, then=3)
    settings = topic.settings(
        None,
        sink_function="tests.test_outcomes:refuse_the_first",
        skip_records=f"{topic.name}/0/0",
        dead_letter_topic=dlq,
        dead_letter_idempotence=False,
        kafka_fetch_max_bytes=8 << 20,
        kafka_max_partition_fetch_bytes=8 << 20,
    )
    async with running_stage(settings) as stage:
        await eventually(lambda: "halted" in stage.ready().reason, timeout=20, what="the halt")
        reason = stage.ready().reason
    assert f"{topic.name}/0/0" in reason
    assert [] == await dead_letters(topic.bootstrap, dlq)
    assert (await topic.committed())[0] in (None, 0)


async def test_no_secret_reaches_the_logs_or_the_dead_letter_topic(new_topic, stage_process):
    """The API URL carries a password and an ``api_key``, a static header an API key, the
    token is a bearer; the API echoes them all in its 422. Nothing the stage logs (start-up,
    dead letters, stop) and nothing it writes to the dead-letter topic holds any of them."""
    topic = await new_topic(1)
    dlq = await new_dlq(topic)
    await topic.produce(5)
    secrets = ("pa55w0rd", "qk-4567", "hk-8901", "t0k-2345")
    async with echoing_api(reject=f"{topic.name}/0/2") as base:
        url = base.replace("http://", "http://user:pa55w0rd@") + "/items?api_key=qk-4567&v=2"
        env = topic.env(
            url,
            space_api_token="t0k-2345",
            space_api_headers='{"X-Api-Key": "hk-8901"}',
            on_reject="dead-letter",
            dead_letter_topic=dlq,
            dead_letter_idempotence="false",
        )
        proc = stage_process(env)
        await eventually(lambda: '"policy.dead_lettered"' in proc.logs(), what="the dead letter")
        proc.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(proc.wait, 20)
    letters = await dead_letters(topic.bootstrap, dlq)
    body = dict(letters[0].headers)["x-error-body"].decode()
    logs = proc.logs()
    assert '"stage.started"' in logs
    assert "refused" in body
    for secret in secrets:
        assert secret not in logs
        assert secret not in body
