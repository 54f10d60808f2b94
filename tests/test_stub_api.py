"""The stub Space API, over real HTTP on loopback: the referee must be right before it judges."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from pipeline.dev.stub_api import (
    REDIRECT_LOCATION,
    FaultWindow,
    PartitionStats,
    StubConfig,
    StubServer,
    StubStats,
    add_arguments,
    config_from_args,
    serve,
)

FAST = StubConfig(latency_ms=0)
TOKEN = "s3cret"


def kafka_headers(topic: str, partition: int, offset: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": f"{topic}/{partition}/{offset}",
        "X-Kafka-Topic": topic,
        "X-Kafka-Partition": str(partition),
        "X-Kafka-Offset": str(offset),
    }


async def send(
    client: httpx.AsyncClient,
    url: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    headers: dict[str, str] | None = None,
) -> int:
    response = await client.post(
        url,
        content=b'{"n": 1}',
        headers={**kafka_headers(topic, partition, offset), **(headers or {})},
    )
    return response.status_code


def batch_headers(batch: str, size: int, content_type: str = "application/json") -> dict[str, str]:
    """The headers of the batch ``<topic>/<partition>/<first>-<last>`` (its Idempotency-Key)."""
    topic, partition, offsets = batch.split("/")
    first, last = offsets.split("-")
    return {
        "Content-Type": content_type,
        "Idempotency-Key": batch,
        "X-Kafka-Topic": topic,
        "X-Kafka-Partition": partition,
        "X-Kafka-Offset": first,
        "X-Kafka-Last-Offset": last,
        "X-Batch-Size": str(size),
    }


async def send_batch(
    client: httpx.AsyncClient,
    url: str,
    batch: str,
    values: list[object],
    *,
    ndjson: bool = False,
    headers: dict[str, str] | None = None,
) -> int:
    """POST ``values`` as the batch ``batch`` (see batch_headers), a JSON array or NDJSON."""
    if ndjson:
        content = b"".join(json.dumps(value).encode() + b"\n" for value in values)
        content_type = "application/x-ndjson"
    else:
        content, content_type = json.dumps(values).encode(), "application/json"
    headers = {**batch_headers(batch, len(values), content_type), **(headers or {})}
    return (await client.post(url, content=content, headers=headers)).status_code


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


async def test_unavailable_keys_answer_503_every_time(client: httpx.AsyncClient) -> None:
    """A record the API never takes gets a retryable 503 on every attempt; others pass."""
    config = StubConfig(latency_ms=0, unavailable_keys=frozenset({"t/0/1"}))
    async with StubServer(config) as stub:
        codes = [await send(client, stub.url, "t", 0, offset) for offset in (0, 1, 1, 2)]
    assert codes == [204, 503, 503, 204]


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
        ({"path": "items"}, "path must start with '/'"),
        ({"path": "/items/"}, "path must start with '/'"),
        ({"path": "/stats"}, "overlap the stub's own /stats"),
        ({"path": "/oauth2"}, "overlap the stub's own /oauth2/token"),
        ({"auth_status": 402}, "auth_status must be 401, 403 or 407"),
        ({"token": ""}, "token must not be empty"),
        ({"oauth2_client_id": "a"}, "must both be set"),
        ({"token": "t", "oauth2_client_id": "a", "oauth2_client_secret": "b"}, "alternatives"),
        ({"oauth2_expires_in_s": 0}, "oauth2_expires_in_s must be positive"),
        ({"token_latency_ms": -1}, "token_latency_ms must not be negative"),
    ],
)
def test_config_rejects_impossible_settings(kwargs: dict[str, object], message: str) -> None:
    """Bad fault, path and auth settings fail at construction, naming the setting."""
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


# --- paths and methods ---------------------------------------------------------------------------


async def test_the_api_is_its_path_and_below_and_other_paths_answer_404(
    client: httpx.AsyncClient,
) -> None:
    """Templated URLs under the API path are the API; any other path is not found."""
    async with StubServer(FAST) as stub:
        below = f"{stub.url}/orders/0"
        codes = [
            await send(client, url, "t", 0, offset)
            for offset, url in enumerate(
                [
                    stub.url,
                    below,
                    f"{stub.base_url}/other",
                    f"{stub.url}x",
                    f"{stub.base_url}/stats",
                ]
            )
        ]
        full = stub.stats(offsets=True)
        plain = stub.stats()
    assert [204, 204, 404, 404, 404] == codes
    assert (2, 3, 2) == (full.requests, full.not_found, full.accepted)
    assert {"/items": 1, "/items/orders/0": 1} == full.paths
    assert None is plain.paths
    assert {204: 2} == full.statuses


async def test_the_api_path_is_configurable_and_url_follows_it(client: httpx.AsyncClient) -> None:
    """StubConfig.path moves the API; the old default path is then just another 404."""
    async with StubServer(StubConfig(latency_ms=0, path="/v1/records")) as stub:
        assert f"{stub.base_url}/v1/records" == stub.url
        assert 204 == await send(client, f"{stub.url}/t/0", "t", 0, 0)
        assert 404 == await send(client, f"{stub.base_url}/items", "t", 0, 1)
        stats = stub.stats(offsets=True)
    assert {"/v1/records/t/0": 1} == stats.paths
    assert 1 == stats.not_found


async def test_put_patch_and_delete_are_records_and_counted_per_method(
    client: httpx.AsyncClient,
) -> None:
    """Every write method is the API; DELETE carries no body and is a tombstone of its record."""
    async with StubServer(FAST) as stub:
        codes = [
            (await client.request(method, stub.url, content=body, headers=kafka_headers("t", 0, n)))
            for n, (method, body) in enumerate(
                [("POST", b"{}"), ("PUT", b"{}"), ("PATCH", b"{}"), ("DELETE", None)]
            )
        ]
        stats = stub.stats(offsets=True)
    assert [204, 204, 204, 204] == [r.status_code for r in codes]
    assert {"POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 1} == stats.methods
    assert (0, 1, 2, 3) == stats.partitions["t/0"].offsets
    assert (4, 4, 4) == (stats.accepted, stats.records, stats.unique)


async def test_other_methods_on_the_api_path_answer_405(client: httpx.AsyncClient) -> None:
    """A GET on the API is a request the API refuses, naming the methods it allows."""
    async with StubServer(FAST) as stub:
        response = await client.get(stub.url, headers=kafka_headers("t", 0, 0))
        stats = stub.stats()
    assert 405 == response.status_code
    assert "DELETE, PATCH, POST, PUT" == response.headers["Allow"]
    assert (1, 0, {"GET": 1}, {405: 1}) == (
        stats.requests,
        stats.accepted,
        stats.methods,
        stats.statuses,
    )


# --- static token ----------------------------------------------------------------------------


async def test_a_static_token_is_required_and_judged_before_anything_else(
    client: httpx.AsyncClient,
) -> None:
    """Without the right bearer token the answer is 401, before header checks and bursts."""
    config = StubConfig(latency_ms=0, token=TOKEN, error_burst=1)
    async with StubServer(config) as stub:
        missing = await client.post(stub.url, headers=kafka_headers("t", 0, 0))
        wrong_token_bad_headers = await client.post(
            stub.url, headers={"Authorization": "Bearer nope"}
        )
        good = {"Authorization": f"Bearer {TOKEN}"}
        codes = [await send(client, stub.url, "t", 0, 0, headers=good) for _ in range(2)]
        stats = stub.stats()
    assert (401, 401) == (missing.status_code, wrong_token_bad_headers.status_code)
    assert "Bearer" == missing.headers["WWW-Authenticate"]
    assert [500, 204] == codes  # the burst was not spent on the refused requests
    assert (2, 0, 1, 4) == (
        stats.auth_failures,
        stats.header_mismatches,
        stats.accepted,
        stats.requests,
    )


@pytest.mark.parametrize(("status", "challenge"), [(403, None), (407, "Bearer")])
async def test_auth_status_may_be_403_or_407(
    client: httpx.AsyncClient, status: int, challenge: str | None
) -> None:
    """The refusal status is configurable; 407 challenges like a proxy would."""
    async with StubServer(StubConfig(latency_ms=0, token=TOKEN, auth_status=status)) as stub:
        response = await client.post(stub.url, headers=kafka_headers("t", 0, 0))
    assert status == response.status_code
    assert challenge == response.headers.get("Proxy-Authenticate")


# --- OAuth2 client credentials -----------------------------------------------------------------

SECRET = "pw"
OAUTH = StubConfig(latency_ms=0, oauth2_client_id="app", oauth2_client_secret=SECRET)


async def request_token(
    client: httpx.AsyncClient, stub: StubServer, **params: str
) -> httpx.Response:
    form = {"grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET}
    return await client.post(stub.token_url, data={**form, **params})


def bearer(response: httpx.Response) -> dict[str, str]:
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_token_endpoint_issues_bearer_tokens_for_form_or_basic_credentials(
    client: httpx.AsyncClient,
) -> None:
    """Client credentials work as form fields or as HTTP Basic, and the token opens the API."""
    config = dataclasses.replace(OAUTH, oauth2_expires_in_s=60)
    async with StubServer(config) as stub:
        by_form = await request_token(client, stub)
        by_basic = await client.post(
            stub.token_url, data={"grant_type": "client_credentials"}, auth=("app", SECRET)
        )
        codes = [
            await send(client, stub.url, "t", 0, n, headers=bearer(r))
            for n, r in enumerate([by_form, by_basic])
        ]
        stats = stub.stats()
    assert (200, 200) == (by_form.status_code, by_basic.status_code)
    body = by_form.json()
    assert ("Bearer", 60) == (body["token_type"], body["expires_in"])
    assert by_form.json()["access_token"] != by_basic.json()["access_token"]
    assert "no-store" == by_form.headers["Cache-Control"]
    assert [204, 204] == codes
    assert 2 == stats.token_requests


async def test_token_endpoint_refuses_a_wrong_client_or_grant(client: httpx.AsyncClient) -> None:
    """Errors follow RFC 6749 5.2: invalid_client (401) and unsupported_grant_type (400)."""
    async with StubServer(OAUTH) as stub:
        wrong_secret = await request_token(client, stub, client_secret=SECRET + "x")
        wrong_basic = await client.post(
            stub.token_url, data={"grant_type": "client_credentials"}, auth=("app", "guess")
        )
        wrong_grant = await request_token(client, stub, grant_type="password")
    assert (401, {"error": "invalid_client"}) == (wrong_secret.status_code, wrong_secret.json())
    assert 401 == wrong_basic.status_code
    assert (400, {"error": "unsupported_grant_type"}) == (
        wrong_grant.status_code,
        wrong_grant.json(),
    )


async def test_the_api_requires_a_live_token_issued_by_the_endpoint(
    client: httpx.AsyncClient,
) -> None:
    """Made-up, expired and revoked tokens all get auth_status; a fresh one works again."""
    config = dataclasses.replace(OAUTH, oauth2_expires_in_s=0.3)
    async with StubServer(config) as stub:
        token = await request_token(client, stub)
        made_up = await send(client, stub.url, "t", 0, 0, headers={"Authorization": "Bearer x"})
        fresh = await send(client, stub.url, "t", 0, 0, headers=bearer(token))
        await asyncio.sleep(0.35)
        expired = await send(client, stub.url, "t", 0, 1, headers=bearer(token))
        token = await request_token(client, stub)
        stub.reset()  # forgets the counts, not the tokens
        renewed = await send(client, stub.url, "t", 0, 1, headers=bearer(token))
        stub.revoke_tokens()
        revoked = await send(client, stub.url, "t", 0, 2, headers=bearer(token))
        stats = stub.stats()
    assert 0.3 == token.json()["expires_in"]
    assert [401, 204, 401, 204, 401] == [made_up, fresh, expired, renewed, revoked]
    assert (1, 1) == (stats.auth_failures, stats.accepted)


async def test_token_requests_report_their_params_without_the_secret(
    client: httpx.AsyncClient,
) -> None:
    """Scope and extra parameters such as audience are visible to tests; the secret is not."""
    async with StubServer(OAUTH) as stub:
        await request_token(client, stub, scope="write", audience="space")
        stats = stub.stats()
    expected = {
        "grant_type": "client_credentials",
        "client_id": "app",
        "scope": "write",
        "audience": "space",
    }
    assert expected == stats.last_token_params


async def test_token_latency_makes_concurrent_token_requests_visible(
    client: httpx.AsyncClient,
) -> None:
    """With slow token answers, a client without single-flight refresh shows up at once."""
    config = dataclasses.replace(OAUTH, token_latency_ms=150)
    async with StubServer(config) as stub:
        started = time.monotonic()
        await asyncio.gather(*(request_token(client, stub) for _ in range(3)))
        elapsed = time.monotonic() - started
        await request_token(client, stub)
        stats = stub.stats()
    assert (4, 3) == (stats.token_requests, stats.max_concurrent_token_requests)
    assert 0.15 <= elapsed < 1.0


async def test_token_endpoint_is_not_found_without_oauth2(client: httpx.AsyncClient) -> None:
    """A stub without OAuth2 settings has no token endpoint."""
    async with StubServer(FAST) as stub:
        response = await request_token(client, stub)
        stats = stub.stats()
    assert (404, 1, 0) == (response.status_code, stats.not_found, stats.token_requests)


# --- fault windows -------------------------------------------------------------------------------


async def test_an_outage_window_answers_503_without_retry_after_then_recovers(
    client: httpx.AsyncClient,
) -> None:
    """Every request in the window fails, whatever its partition; afterwards all is normal."""
    config = StubConfig(latency_ms=0, faults=(FaultWindow("outage", 0, 0.3),))
    async with StubServer(config) as stub:
        during = [await client.post(stub.url, headers=kafka_headers("t", p, 0)) for p in range(3)]
        await asyncio.sleep(0.35)
        after = await send(client, stub.url, "t", 0, 0)
        stats = stub.stats()
    assert [503, 503, 503] == [r.status_code for r in during]
    assert [None, None, None] == [r.headers.get("Retry-After") for r in during]
    assert "outage fault window" == during[0].json()["reason"]
    assert 204 == after
    assert (1, {503: 3, 204: 1}) == (stats.accepted, stats.statuses)


async def test_fault_windows_count_from_the_first_api_request(client: httpx.AsyncClient) -> None:
    """A stub may wait long before traffic: the schedule starts with the first API request."""
    config = StubConfig(latency_ms=0, faults=(FaultWindow("outage", 0.3, 0.6),))
    async with StubServer(config) as stub:
        await asyncio.sleep(0.5)  # longer than the window's start: the clock has not started
        assert 200 == (await client.get(f"{stub.base_url}/healthz")).status_code
        codes = [await send(client, stub.url, "t", 0, 0)]
        await asyncio.sleep(0.45)
        codes.append(await send(client, stub.url, "t", 0, 1))
        await asyncio.sleep(0.6)
        codes.append(await send(client, stub.url, "t", 0, 1))
    assert [204, 503, 204] == codes


async def test_a_throttle_window_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    """Throttling says how long to wait, and counts as a throttle of the partition."""
    config = StubConfig(
        latency_ms=0, retry_after_s=0.2, faults=(FaultWindow("throttle", 0, math.inf),)
    )
    async with StubServer(config) as stub:
        responses = [await client.post(stub.url, headers=kafka_headers("t", p, 0)) for p in (0, 1)]
        stats = stub.stats()
    assert [429, 429] == [r.status_code for r in responses]
    assert ["1", "1"] == [r.headers["Retry-After"] for r in responses]
    assert (1, 1) == (stats.partitions["t/0"].throttled, stats.partitions["t/1"].throttled)


async def test_an_auth_window_refuses_even_a_good_token(client: httpx.AsyncClient) -> None:
    """An auth window answers auth_status to everyone and counts as auth failures."""
    config = StubConfig(
        latency_ms=0, token=TOKEN, auth_status=403, faults=(FaultWindow("auth", 0, 0.3),)
    )
    async with StubServer(config) as stub:
        good = {"Authorization": f"Bearer {TOKEN}"}
        during = await send(client, stub.url, "t", 0, 0, headers=good)
        await asyncio.sleep(0.35)
        after = await send(client, stub.url, "t", 0, 0, headers=good)
        stats = stub.stats()
    assert (403, 204) == (during, after)
    assert 1 == stats.auth_failures


async def test_a_redirect_window_answers_307_to_a_place_that_is_not_the_api(
    client: httpx.AsyncClient,
) -> None:
    """An API that moved: 307 with a Location outside the API path, nothing accepted; a client
    that followed it would meet a 404 there."""
    config = StubConfig(latency_ms=0, faults=(FaultWindow("redirect", 0, math.inf),))
    async with StubServer(config) as stub:
        response = await client.post(stub.url, headers=kafka_headers("t", 0, 0))
        followed = await client.post(f"{stub.base_url}{REDIRECT_LOCATION}")
        stats = stub.stats()
    assert (307, REDIRECT_LOCATION) == (response.status_code, response.headers["Location"])
    assert 404 == followed.status_code
    assert (0, {307: 1}) == (stats.accepted, stats.statuses)


async def test_set_config_starts_a_fault_window_at_the_next_request(
    client: httpx.AsyncClient,
) -> None:
    """Windows count again from the first request after set_config, like bursts."""
    async with StubServer(FAST) as stub:
        assert 204 == await send(client, stub.url, "t", 0, 0)
        await asyncio.sleep(0.2)
        stub.set_config(StubConfig(latency_ms=0, faults=(FaultWindow("outage", 0, 0.15),)))
        await asyncio.sleep(0.2)  # the clock starts with the request, not with set_config
        outage = await send(client, stub.url, "t", 0, 1)
        await asyncio.sleep(0.2)
        after = await send(client, stub.url, "t", 0, 1)
        stats = stub.stats(offsets=True)
    assert (503, 204) == (outage, after)
    assert (0, 1) == stats.partitions["t/0"].offsets


def test_fault_windows_parse_from_the_cli_form() -> None:
    """KIND@START+DURATION in seconds; inf keeps a window open."""
    assert FaultWindow("outage", 5, 10) == FaultWindow.parse("outage@5+10")
    assert FaultWindow("throttle", 0.5, math.inf) == FaultWindow.parse("throttle@0.5+inf")
    assert FaultWindow.parse("auth@1+2").covers(2.9)
    assert not FaultWindow.parse("auth@1+2").covers(3.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("outage5+10", "KIND@START"),
        ("outage@5", "KIND@START"),
        ("flood@0+1", "fault kind must be"),
        ("outage@-1+1", "start_s must not be negative"),
        ("outage@0+0", "duration_s must be positive"),
        ("outage@x+1", "could not convert"),
    ],
)
def test_fault_windows_reject_bad_forms(text: str, message: str) -> None:
    """A mistyped fault fails at once, saying why."""
    with pytest.raises(ValueError, match=message):
        FaultWindow.parse(text)


# --- Retry-After and request rate --------------------------------------------------------------


async def test_requests_during_a_retry_after_from_any_partition_are_violations(
    client: httpx.AsyncClient,
) -> None:
    """A 429's Retry-After holds for the whole API: every early request counts, any partition."""
    async with StubServer(StubConfig(latency_ms=0, throttle_burst=1, retry_after_s=1)) as stub:
        throttled_at = time.monotonic()
        assert 429 == await send(client, stub.url, "t", 0, 0)
        assert 204 == await send(client, stub.url, "t", 1, 0)  # accepted, yet too early
        assert 204 == await send(client, stub.url, "t", 0, 0)
        await asyncio.sleep(max(0.0, throttled_at + 1.0 - time.monotonic()))
        assert 204 == await send(client, stub.url, "t", 2, 0)
        stats = stub.stats()
    assert 2 == stats.retry_after_violations


async def test_retry_after_zero_forbids_nothing(client: httpx.AsyncClient) -> None:
    """Retry-After: 0 allows an immediate retry."""
    async with StubServer(StubConfig(latency_ms=0, throttle_burst=2, retry_after_s=0)) as stub:
        codes = [await send(client, stub.url, "t", 0, 0) for _ in range(3)]
        stats = stub.stats()
    assert ([429, 429, 204], 0) == (codes, stats.retry_after_violations)


async def test_the_busiest_second_and_arrival_times_are_reported(
    client: httpx.AsyncClient,
) -> None:
    """Rate limits can be checked exactly: the most requests in any 1 s, and every arrival."""
    async with StubServer(StubConfig(latency_ms=0, error_burst=2)) as stub:
        for offset in range(5):
            await send(client, stub.url, "t", 0, offset)
        await send(client, f"{stub.base_url}/elsewhere", "t", 0, 9)  # not the API: not counted
        await asyncio.sleep(1.05)
        for offset in range(5, 7):
            await send(client, stub.url, "t", 0, offset)
        full = stub.stats(offsets=True)
    assert 5 == full.max_requests_in_any_1s_window
    assert full.arrivals is not None
    assert 7 == len(full.arrivals)
    assert sorted(full.arrivals) == list(full.arrivals)
    assert full.arrivals[5] - full.arrivals[4] >= 1.0
    assert full.first_request_at == full.arrivals[0]
    assert None is stub.stats().arrivals


async def test_each_accepted_record_has_its_acceptance_time_on_request(
    client: httpx.AsyncClient,
) -> None:
    """End-to-end latency runs from a record's Kafka timestamp (wall clock) to its acceptance:
    one wall-clock time per key, in the order of ``keys``, the first acceptance for a duplicate,
    and only when asked for."""
    async with StubServer(FAST) as stub:
        before = time.time()
        await send(client, stub.url, "t", 0, 0)
        await asyncio.sleep(0.05)
        await send(client, stub.url, "t", 0, 1)
        await send(client, stub.url, "t", 0, 1)
        after = time.time()
        full = (await client.get(f"{stub.base_url}/stats", params={"offsets": "1"})).json()
        plain = (await client.get(f"{stub.base_url}/stats")).json()
        assert StubStats.from_dict(full) == stub.stats(offsets=True)
    assert ["t/0/0", "t/0/1"] == full["keys"]
    first, second = full["accepted_unix"]
    assert before <= first <= first + 0.05 <= second <= after
    assert "accepted_unix" not in plain


# --- batches -----------------------------------------------------------------------------------


async def test_a_json_batch_records_each_of_its_offsets(client: httpx.AsyncClient) -> None:
    """A batch of consecutive records is one request and one record per offset."""
    async with StubServer(FAST) as stub:
        values: list[object] = [{"seq": 0}, {"seq": 1}, {"seq": 2}]
        assert 204 == await send_batch(client, stub.url, "t/0/0-2", values)
        assert 204 == await send(client, stub.url, "t", 0, 3)
        stats = stub.stats(offsets=True)
    assert (0, 1, 2, 3) == stats.partitions["t/0"].offsets
    assert ("t/0/0", "t/0/1", "t/0/2", "t/0/3") == stats.keys
    assert (2, 1, 4, 4, 3, 0) == (
        stats.accepted,
        stats.batches,
        stats.records,
        stats.unique,
        stats.max_batch_size,
        stats.order_violations,
    )


async def test_an_ndjson_batch_holds_one_value_per_line(client: httpx.AsyncClient) -> None:
    """NDJSON batches count their lines, a trailing newline included."""
    async with StubServer(FAST) as stub:
        values: list[object] = [{"seq": 10}, "text", 12, None]
        assert 204 == await send_batch(client, stub.url, "t/1/10-13", values, ndjson=True)
        stats = stub.stats(offsets=True)
    assert (10, 11, 12, 13) == stats.partitions["t/1"].offsets
    assert (1, 4) == (stats.batches, stats.records)


async def test_a_batch_whose_headers_or_body_disagree_is_answered_400(
    client: httpx.AsyncClient,
) -> None:
    """Wrong count, key, offsets, body or content type: a stage bug, recorded as nothing."""
    async with StubServer(FAST) as stub:
        two = json.dumps([1, 2]).encode()
        cases = [
            (batch_headers("t/0/0-2", 3), two),  # 2 items, size 3
            (
                {**batch_headers("t/0/0-1", 2), "Idempotency-Key": "t/0/0"},
                two,
            ),
            (batch_headers("t/0/0-0", 2), two),  # 2 records in 1 offset
            (batch_headers("t/0/0-1", 2), b"[1, 2"),
            (batch_headers("t/0/0-1", 2), b'{"a": 1}'),
            (batch_headers("t/0/0-1", 2, "text/plain"), b"1\n2\n"),
        ]
        responses = [await client.post(stub.url, content=body, headers=h) for h, body in cases]
        stats = stub.stats()
    assert [400] * 6 == [r.status_code for r in responses]
    assert "holds 2 records" in responses[0].json()["reason"]
    assert (6, 0, 0, {}) == (
        stats.header_mismatches,
        stats.accepted,
        stats.batches,
        {k: p.count for k, p in stats.partitions.items() if p.count},
    )


async def test_a_batch_with_compaction_gaps_records_its_first_and_last_offset(
    client: httpx.AsyncClient,
) -> None:
    """Three records between offsets 10 and 20: the ones in between are unknown."""
    async with StubServer(FAST) as stub:
        assert 204 == await send_batch(client, stub.url, "t/0/10-20", [1, 2, 3])
        stats = stub.stats(offsets=True)
    assert (10, 20) == stats.partitions["t/0"].offsets
    assert (1, 1, 3, 2) == (stats.batches, stats.gapped_batches, stats.records, stats.unique)


async def test_order_is_checked_inside_batches_and_across_them(client: httpx.AsyncClient) -> None:
    """seq must rise inside a batch; offsets must rise across batches and single records."""
    async with StubServer(FAST) as stub:
        await send_batch(client, stub.url, "t/0/0-2", [{"seq": 1}, {"seq": 3}, {"seq": 2}])
        await send_batch(client, stub.url, "t/0/6-7", [{"seq": 6}, {"seq": 7}])
        await send(client, stub.url, "t", 0, 4)  # first seen after 7
        await send_batch(client, stub.url, "t/0/3-3", [{"seq": 3}])  # first seen after 7
        await send_batch(client, stub.url, "t/1/0-1", [{"no": "seq"}, {"seq": True}])
        stats = stub.stats()
    assert (3, 3, 0) == (
        stats.order_violations,
        stats.partitions["t/0"].order_violations,
        stats.partitions["t/1"].order_violations,
    )


async def test_a_resent_batch_counts_its_records_as_duplicates(client: httpx.AsyncClient) -> None:
    """After a lost answer the batch comes again: duplicates per record, not per request."""
    async with StubServer(FAST) as stub:
        await send_batch(client, stub.url, "t/0/0-2", [1, 2, 3])
        await send_batch(client, stub.url, "t/0/0-2", [1, 2, 3])
        await send_batch(client, stub.url, "t/0/2-3", [3, 4])
        stats = stub.stats()
    assert (3, 8, 4, 4, 0) == (
        stats.accepted,
        stats.records,
        stats.unique,
        stats.duplicates,
        stats.order_violations,
    )


async def test_a_batch_holding_a_rejected_key_is_refused_whole(client: httpx.AsyncClient) -> None:
    """reject_keys names records; any batch that spans one answers 422, gapped or not."""
    async with StubServer(StubConfig(latency_ms=0, reject_keys=frozenset({"t/0/5"}))) as stub:
        codes = [
            await send_batch(client, stub.url, "t/0/4-6", [4, 5, 6]),
            await send_batch(client, stub.url, "t/0/0-9", [0, 9]),  # 5 may be in the gap
            await send_batch(client, stub.url, "t/1/4-6", [4, 5, 6]),
            await send_batch(client, stub.url, "t/0/6-7", [6, 7]),
        ]
        stats = stub.stats(offsets=True)
    assert [422, 422, 204, 204] == codes
    assert (6, 7) == stats.partitions["t/0"].offsets


# --- stats and reset ---------------------------------------------------------------------------


async def test_new_stats_round_trip_over_http_and_reset_clears_them(
    client: httpx.AsyncClient,
) -> None:
    """Every field survives GET /stats; reset leaves the same snapshot as a new stub."""
    config = dataclasses.replace(OAUTH, throttle_burst=1)
    async with StubServer(config) as stub:
        token = await request_token(client, stub, scope="s")
        await send(client, stub.url, "t", 0, 0)  # no token
        await send(client, f"{stub.url}/a", "t", 0, 0, headers=bearer(token))  # 429
        await send_batch(client, stub.url, "t/0/0-4", [0, 4], headers=bearer(token))
        await client.request(
            "DELETE", stub.url, headers={**kafka_headers("t", 0, 5), **bearer(token)}
        )
        await client.post(f"{stub.base_url}/nowhere")
        full = (await client.get(f"{stub.base_url}/stats", params={"offsets": "1"})).json()
        plain = (await client.get(f"{stub.base_url}/stats")).json()
        assert StubStats.from_dict(full) == stub.stats(offsets=True)
        assert StubStats.from_dict(plain) == stub.stats()
        stub.reset()
        assert StubServer(config).stats(offsets=True) == stub.stats(offsets=True)
    assert {"POST": 3, "DELETE": 1} == full["methods"]
    assert {"/items": 3, "/items/a": 1} == full["paths"]
    assert "arrivals" not in plain
    assert "paths" not in plain
    assert (1, 1, 1, 1, 2) == (  # the batch and the DELETE came inside the Retry-After
        plain["not_found"],
        plain["auth_failures"],
        plain["token_requests"],
        plain["gapped_batches"],
        plain["retry_after_violations"],
    )
    assert {"grant_type": "client_credentials", "client_id": "app", "scope": "s"} == plain[
        "last_token_params"
    ]


async def test_a_snapshot_stays_as_it_was_while_the_stub_goes_on(
    client: httpx.AsyncClient,
) -> None:
    """The stub tallies into live stats; what stats() hands out must not move with them."""
    config = dataclasses.replace(OAUTH, throttle_burst=1)
    async with StubServer(config) as stub:
        token = await request_token(client, stub, scope="first")
        await send(client, stub.url, "t", 0, 0, headers=bearer(token))  # 429
        plain, full = stub.stats(), stub.stats(offsets=True)
        kept = (plain.to_dict(), full.to_dict())
        await request_token(client, stub, scope="second")
        await send(client, stub.url, "t", 0, 0, headers=bearer(token))
        await send(client, stub.url, "t", 1, 0, headers=bearer(token))
        await send(client, stub.url, "t", 1, 0, headers=bearer(token))
        assert stub.stats().partitions["t/1"].count == 2
    assert kept == (plain.to_dict(), full.to_dict())
    assert list(full.partitions) == ["t/0"]
    assert full.partitions["t/0"].offsets == ()
    assert plain.last_token_params["scope"] == "first"


async def test_stats_json_holds_every_stat_once_in_declaration_order(
    client: httpx.AsyncClient,
) -> None:
    """The JSON is the dataclass: its keys are the fields, the long lists only when asked for."""
    on_request = {"keys", "paths", "arrivals", "accepted_unix", "offsets"}
    async with StubServer(FAST) as stub:
        await send(client, stub.url, "t", 0, 0)
        plain = (await client.get(f"{stub.base_url}/stats")).json()
        full = (await client.get(f"{stub.base_url}/stats", params={"offsets": "1"})).json()
    every = [f.name for f in dataclasses.fields(StubStats)]
    every_partition = [f.name for f in dataclasses.fields(PartitionStats)]
    assert list(full) == every
    assert list(plain) == [name for name in every if name not in on_request]
    assert list(full["partitions"]["t/0"]) == every_partition
    assert list(plain["partitions"]["t/0"]) == every_partition[:-1]


# --- configuration and CLI ---------------------------------------------------------------------


def test_cli_flags_for_path_auth_oauth2_and_faults_build_the_config() -> None:
    """Each new flag maps onto its StubConfig field; --fault is repeatable."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = [
        "--path=/v1/things",
        "--auth-status=407",
        "--oauth2-client-id=app",
        "--oauth2-client-secret=pw",
        "--oauth2-expires-in-s=30",
        "--token-latency-ms=50",
        "--fault=outage@5+10",
        "--fault=throttle@20+5",
    ]
    config = config_from_args(parser.parse_args(args))
    expected = StubConfig(
        path="/v1/things",
        auth_status=407,
        oauth2_client_id="app",
        oauth2_client_secret=SECRET,
        oauth2_expires_in_s=30,
        token_latency_ms=50,
        faults=(FaultWindow("outage", 5, 10), FaultWindow("throttle", 20, 5)),
    )
    assert expected == config
    assert StubConfig(token=TOKEN) == config_from_args(parser.parse_args(["--token", TOKEN]))
    help_text = parser.format_help()
    for flag in ("--path", "--token", "--auth-status", "--oauth2-client-id", "--fault"):
        assert flag in help_text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-status", "402"], "invalid choice"),
        (["--fault", "flood@0+1"], "fault kind must be"),
    ],
)
def test_cli_rejects_bad_auth_status_and_faults(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Argparse reports the bad flag instead of a traceback."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(args)
    assert message in capsys.readouterr().err


# Each StubConfig field, the flag that sets it and a value other than the default.
FLAGS = {
    "path": ["--path", "/v2"],
    "latency_ms": ["--latency-ms", "5"],
    "jitter_ms": ["--jitter-ms", "1"],
    "error_rate": ["--error-rate", "0.1"],
    "throttle_rate": ["--throttle-rate", "0.1"],
    "retry_after_s": ["--retry-after-s", "2"],
    "error_burst": ["--error-burst", "1"],
    "throttle_burst": ["--throttle-burst", "1"],
    "reject_rate": ["--reject-rate", "0.1"],
    "reject_keys": ["--reject-key", "t/0/1"],
    "unavailable_keys": ["--unavailable-key", "t/0/2"],
    "seed": ["--seed", "7"],
    "answer_body": ["--answer-body", "id"],
    "faults": ["--fault", "outage@1+2"],
    "token": ["--token", TOKEN],
    "auth_status": ["--auth-status", "403"],
    "oauth2_client_id": ["--oauth2-client-id", "app", "--oauth2-client-secret", SECRET],
    "oauth2_client_secret": ["--oauth2-client-id", "app", "--oauth2-client-secret", SECRET],
    "oauth2_expires_in_s": ["--oauth2-expires-in-s", "60"],
    "token_latency_ms": ["--token-latency-ms", "5"],
}


@pytest.mark.parametrize(("name", "args"), FLAGS.items())
def test_every_config_field_has_a_flag_that_sets_it(name: str, args: list[str]) -> None:
    """The flags are built from the fields, so a new setting is on the command line at once."""
    assert set(FLAGS) == {f.name for f in dataclasses.fields(StubConfig)}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(args))
    assert getattr(config, name) != getattr(StubConfig(), name)
    assert args[0] in parser.format_help()


def test_cli_flags_that_are_not_numbers_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain type keeps argparse's own wording, which names the flag and the bad value."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--latency-ms", "soon"])
    assert "argument --latency-ms: invalid float value: 'soon'" in capsys.readouterr().err


async def test_with_answer_body_id_an_accepted_request_is_answered_with_its_own_id(
    client: httpx.AsyncClient,
) -> None:
    """``answer_body="id"``: each accepted record or batch is answered 201 with ``{"id": <its
    Idempotency-Key>}``, so a result can be matched to its record; the default answers 204."""
    async with StubServer(StubConfig(latency_ms=0, answer_body="id")) as stub:
        single = await client.post(
            stub.url, content=b'{"n": 1}', headers=kafka_headers("orders", 0, 5)
        )
        batch = await client.post(
            stub.url, content=b"[1, 2]", headers=batch_headers("orders/1/3-4", 2)
        )

    assert (201, {"id": "orders/0/5"}) == (single.status_code, single.json())
    assert (201, {"id": "orders/1/3-4"}) == (batch.status_code, batch.json())
    assert "application/json" == single.headers["content-type"].split(";")[0]
