"""The stub Space API, over real HTTP on loopback: the referee must be right before it judges."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from pipeline.dev.stub_api import (
    StubConfig,
    StubServer,
    StubStats,
    add_arguments,
    config_from_args,
    serve,
)

FAST = StubConfig(latency_ms=0)


def kafka_headers(topic: str, partition: int, offset: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": f"{topic}/{partition}/{offset}",
        "X-Kafka-Topic": topic,
        "X-Kafka-Partition": str(partition),
        "X-Kafka-Offset": str(offset),
    }


async def send(client: httpx.AsyncClient, url: str, topic: str, partition: int, offset: int) -> int:
    response = await client.post(
        url, content=b'{"n": 1}', headers=kafka_headers(topic, partition, offset)
    )
    return response.status_code


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as c:
        yield c


async def test_records_accepted_per_partition_in_arrival_order(client: httpx.AsyncClient) -> None:
    """Each partition keeps its own offsets in the order they arrived."""
    async with StubServer(FAST) as stub:
        for offset in range(3):
            assert await send(client, stub.url, "orders", 0, offset) == 204
            assert await send(client, stub.url, "orders", 1, 10 + offset) == 204
        stats = stub.stats(offsets=True)
    assert (stats.accepted, stats.unique, stats.duplicates, stats.order_violations) == (6, 6, 0, 0)
    assert stats.partitions["orders/0"].offsets == (0, 1, 2)
    assert stats.partitions["orders/1"].offsets == (10, 11, 12)
    assert stats.partitions["orders/1"].last_offset == 12
    assert stats.statuses == {204: 6}
    assert stats.keys is not None
    assert stats.keys[:2] == ("orders/0/0", "orders/1/10")


async def test_redeliveries_count_as_duplicates_not_order_violations(
    client: httpx.AsyncClient,
) -> None:
    """A restart re-sends from the last commit: legal, and counted only as duplicates."""
    async with StubServer(FAST) as stub:
        for offset in [0, 1, 2, 3, 1, 2, 3, 4]:
            assert await send(client, stub.url, "t", 0, offset) == 204
        stats = stub.stats()
    assert (stats.accepted, stats.unique, stats.duplicates, stats.order_violations) == (8, 5, 3, 0)
    part = stats.partitions["t/0"]
    assert (part.count, part.unique, part.max_offset, part.offsets) == (8, 5, 4, None)


async def test_lower_first_delivery_offset_is_an_order_violation(client: httpx.AsyncClient) -> None:
    """Offset 1 first seen after offset 2 means the stage reordered the partition."""
    async with StubServer(FAST) as stub:
        for offset in [0, 2, 1, 3]:
            await send(client, stub.url, "t", 0, offset)
        await send(client, stub.url, "t", 1, 5)  # other partitions are judged on their own
        stats = stub.stats()
    assert stats.order_violations == 1
    assert stats.partitions["t/0"].order_violations == 1
    assert stats.partitions["t/1"].order_violations == 0


async def test_error_burst_answers_500_then_accepts(client: httpx.AsyncClient) -> None:
    """The first N requests fail whatever their partition, and none of them is recorded."""
    async with StubServer(StubConfig(latency_ms=0, error_burst=2)) as stub:
        codes = [await send(client, stub.url, "t", p, 0) for p in (0, 1, 0, 1)]
        stats = stub.stats()
    assert codes == [500, 500, 204, 204]
    assert (stats.accepted, stats.statuses) == (2, {500: 2, 204: 2})


async def test_throttle_burst_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    """Throttles follow the error burst and say how long to wait, in whole seconds (RFC 9110)."""
    config = StubConfig(latency_ms=0, error_burst=1, throttle_burst=2, retry_after_s=1.5)
    async with StubServer(config) as stub:
        responses = [
            await client.post(stub.url, headers=kafka_headers("t", 0, 0)) for _ in range(4)
        ]
        stats = stub.stats()
    assert [r.status_code for r in responses] == [500, 429, 429, 204]
    assert [r.headers.get("Retry-After") for r in responses] == [None, "2", "2", None]
    assert "throttle burst" in responses[1].json()["reason"]
    assert stats.partitions["t/0"].throttled == 2
    assert stats.accepted == 1


async def test_reject_keys_answer_422_with_reason_and_are_not_recorded(
    client: httpx.AsyncClient,
) -> None:
    """A poison record is refused every time, with a body saying why."""
    async with StubServer(StubConfig(latency_ms=0, reject_keys=frozenset({"t/0/1"}))) as stub:
        codes = [await send(client, stub.url, "t", 0, offset) for offset in (0, 1, 1, 2)]
        rejected = await client.post(stub.url, headers=kafka_headers("t", 0, 1))
        stats = stub.stats(offsets=True)
    assert codes == [204, 422, 422, 204]
    assert rejected.status_code == 422
    assert "reject list" in rejected.json()["reason"]
    assert stats.partitions["t/0"].offsets == (0, 2)
    assert stats.keys is not None
    assert "t/0/1" not in stats.keys


async def test_max_concurrent_per_partition_counts_overlapping_requests(
    client: httpx.AsyncClient,
) -> None:
    """Requests of one partition in flight together are visible, faulted ones included."""
    async with StubServer(StubConfig(latency_ms=100, error_burst=1)) as stub:
        await asyncio.gather(
            *(send(client, stub.url, "t", 0, offset) for offset in range(4)),
            *(send(client, stub.url, "t", 1, offset) for offset in range(2)),
        )
        await send(client, stub.url, "t", 2, 0)
        stats = stub.stats()
    assert stats.partitions["t/0"].max_concurrent == 4
    assert stats.partitions["t/1"].max_concurrent == 2
    assert stats.partitions["t/2"].max_concurrent == 1
    assert stats.max_concurrent_total == 6
    assert stats.in_flight == 0


async def test_reset_clears_state_and_restarts_bursts(client: httpx.AsyncClient) -> None:
    """Both the method and POST /reset give the next scenario a clean slate."""
    async with StubServer(StubConfig(latency_ms=0, error_burst=1)) as stub:
        assert [await send(client, stub.url, "t", 0, n) for n in (0, 0)] == [500, 204]
        stub.reset()
        assert stub.stats().requests == 0
        assert [await send(client, stub.url, "t", 0, n) for n in (0, 0)] == [500, 204]
        assert (await client.post(f"{stub.base_url}/reset")).status_code == 204
        stats = stub.stats()
    assert (stats.requests, stats.accepted, stats.unique, stats.partitions) == (0, 0, 0, {})
    assert stats.first_request_at is None


async def test_header_mismatch_is_counted_and_answered_400(client: httpx.AsyncClient) -> None:
    """A key that disagrees with the X-Kafka-* headers, or a missing header, is a stage bug."""
    async with StubServer(FAST) as stub:
        wrong_key = {**kafka_headers("t", 0, 5), "Idempotency-Key": "t/0/6"}
        missing = kafka_headers("t", 0, 5)
        del missing["X-Kafka-Offset"]
        bad_offset = {**kafka_headers("t", 0, 5), "X-Kafka-Offset": "x", "Idempotency-Key": "t/0/x"}
        codes = [
            (await client.post(stub.url, headers=h)).status_code
            for h in (wrong_key, missing, bad_offset, {})
        ]
        stats = stub.stats()
    assert codes == [400, 400, 400, 400]
    assert (stats.header_mismatches, stats.accepted, stats.partitions) == (4, 0, {})


async def test_min_retry_after_gap_is_measured_per_partition(client: httpx.AsyncClient) -> None:
    """The gap from a 429 to that partition's next request shows whether Retry-After was kept."""
    config = StubConfig(latency_ms=0, throttle_burst=2, retry_after_s=0)
    async with StubServer(config) as stub:
        assert await send(client, stub.url, "t", 0, 0) == 429
        assert await send(client, stub.url, "t", 1, 0) == 429
        await asyncio.sleep(0.15)
        assert await send(client, stub.url, "t", 0, 0) == 204
        assert await send(client, stub.url, "t", 1, 0) == 204
        stats = stub.stats()
    gap = stats.partitions["t/0"].min_retry_after_gap_s
    assert gap is not None
    assert 0.15 <= gap < 1.0
    assert stats.min_retry_after_gap_s is not None
    assert stats.min_retry_after_gap_s <= gap


async def test_retry_that_ignores_retry_after_shows_a_short_gap(client: httpx.AsyncClient) -> None:
    """An immediate retry is caught, and requests of other partitions do not close the gap."""
    async with StubServer(StubConfig(latency_ms=0, throttle_burst=1, retry_after_s=5)) as stub:
        assert await send(client, stub.url, "t", 0, 0) == 429
        await asyncio.sleep(0.05)
        assert await send(client, stub.url, "t", 1, 0) == 204
        assert await send(client, stub.url, "t", 0, 0) == 204
        stats = stub.stats()
    gap = stats.partitions["t/0"].min_retry_after_gap_s
    assert gap is not None
    assert 0.05 <= gap < 5
    assert stats.partitions["t/1"].min_retry_after_gap_s is None


async def test_stats_endpoint_matches_in_process_snapshot(client: httpx.AsyncClient) -> None:
    """GET /stats round-trips to the same StubStats, offsets and keys only when asked."""
    async with StubServer(FAST) as stub:
        for offset in (0, 1, 1):
            await send(client, stub.url, "t", 3, offset)
        plain = (await client.get(f"{stub.base_url}/stats")).json()
        full = (await client.get(f"{stub.base_url}/stats", params={"offsets": "1"})).json()
        assert StubStats.from_dict(full) == stub.stats(offsets=True)
        assert StubStats.from_dict(plain) == stub.stats()
    assert "offsets" not in plain["partitions"]["t/3"]
    assert "keys" not in plain
    assert full["partitions"]["t/3"]["offsets"] == [0, 1, 1]
    assert full["keys"] == ["t/3/0", "t/3/1"]
    assert plain["statuses"] == {"204": 3}
    assert plain["partitions"]["t/3"]["count"] == 3
    assert plain["partitions"]["t/3"]["unique"] == 2


async def test_healthz_answers_200(client: httpx.AsyncClient) -> None:
    """Scripts wait on /healthz before starting the stage."""
    async with StubServer() as stub:
        response = await client.get(f"{stub.base_url}/healthz")
    assert response.status_code == 200


async def test_timestamps_allow_throughput_to_be_computed(client: httpx.AsyncClient) -> None:
    """first_request_at and last_accept_at bracket the run on the monotonic clock."""
    before = time.monotonic()
    async with StubServer(FAST) as stub:
        for offset in range(5):
            await send(client, stub.url, "t", 0, offset)
        stats = stub.stats()
    assert stats.first_request_at is not None
    assert stats.last_accept_at is not None
    assert before <= stats.first_request_at <= stats.last_accept_at <= time.monotonic()
    assert stats.first_request_unix is not None
    assert abs(stats.first_request_unix - time.time()) < 60


async def test_latency_and_jitter_delay_every_answer(client: httpx.AsyncClient) -> None:
    """The stage's concurrency only matters if each answer takes time."""
    async with StubServer(StubConfig(latency_ms=60, jitter_ms=20, seed=1)) as stub:
        started = time.monotonic()
        assert await send(client, stub.url, "t", 0, 0) == 204
        elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 1.0


async def test_set_config_starts_and_stops_an_outage(client: httpx.AsyncClient) -> None:
    """Faults change at run time without losing what was already recorded."""
    async with StubServer(FAST) as stub:
        assert await send(client, stub.url, "t", 0, 0) == 204
        stub.set_config(StubConfig(latency_ms=0, error_rate=1.0))
        outage = {await send(client, stub.url, "t", 0, 1) for _ in range(20)}
        stub.set_config(FAST)
        assert await send(client, stub.url, "t", 0, 1) == 204
        stats = stub.stats(offsets=True)
    assert outage <= {500, 503}
    assert stats.partitions["t/0"].offsets == (0, 1)
    assert stub.config == FAST


async def test_seeded_rates_are_repeatable_and_proportional(client: httpx.AsyncClient) -> None:
    """A seed fixes which requests fail, so a flaky benchmark can be replayed."""
    config = StubConfig(latency_ms=0, error_rate=0.2, throttle_rate=0.1, reject_rate=0.1, seed=7)
    runs = []
    async with StubServer(config) as stub:
        for _ in range(2):
            runs.append([await send(client, stub.url, "t", 0, n) for n in range(400)])
            stub.reset()
    assert runs[0] == runs[1]
    codes = runs[0]
    assert 40 <= sum(c in (500, 503) for c in codes) <= 120
    assert 15 <= codes.count(429) <= 70
    assert 15 <= codes.count(422) <= 70
    assert 180 <= codes.count(204) <= 300


async def test_close_is_idempotent() -> None:
    """Closing twice is harmless, so a fixture and a test body may both close."""
    stub = await StubServer(FAST).start()
    await stub.close()
    await stub.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"throttle_rate": -0.1}, "throttle_rate must be between 0 and 1"),
        ({"error_rate": 0.6, "reject_rate": 0.6}, "must be <= 1"),
        ({"latency_ms": -1}, "latency_ms must not be negative"),
    ],
)
def test_config_rejects_impossible_settings(kwargs: dict[str, float], message: str) -> None:
    """Bad fault settings fail at once, naming the setting."""
    with pytest.raises(ValueError, match=message):
        StubConfig(**kwargs)  # type: ignore[arg-type]


def test_cli_arguments_build_the_config() -> None:
    """The flags map one to one onto StubConfig, with --reject-key repeatable."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--latency-ms",
            "5",
            "--error-rate",
            "0.1",
            "--reject-key",
            "a/0/1",
            "--reject-key",
            "a/0/2",
            "--throttle-burst",
            "3",
            "--seed",
            "9",
            "--port",
            "0",
        ]
    )
    config = config_from_args(ns)
    assert config == StubConfig(
        latency_ms=5,
        error_rate=0.1,
        throttle_burst=3,
        seed=9,
        reject_keys=frozenset({"a/0/1", "a/0/2"}),
    )
    assert (ns.host, ns.port) == ("127.0.0.1", 0)
    assert parser.parse_args([]).port == 8080
    assert config_from_args(parser.parse_args([])) == StubConfig()


def test_cli_rejects_a_rate_outside_0_to_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Argparse reports the bad flag instead of a traceback."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--throttle-rate", "2"])
    assert "between 0 and 1" in capsys.readouterr().err


async def test_serve_prints_its_url_and_runs_until_cancelled(
    capsys: pytest.CaptureFixture[str], client: httpx.AsyncClient
) -> None:
    """The printed line is how a script finds a stub started on port 0."""
    task = asyncio.create_task(serve(FAST, "127.0.0.1", 0))
    out = ""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if out := capsys.readouterr().out:
            break
    url = next(word for word in out.split() if word.startswith("http://"))
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/items")
    assert await send(client, url, "t", 0, 0) == 204
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
