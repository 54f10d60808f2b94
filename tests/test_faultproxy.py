"""The fault proxy itself: what tests behind it may rely on.

An echo server stands in for the upstream, so each spec runs in well under two seconds; only the
last ones start a broker or the stub.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.faultproxy import FaultProxy, kafka_request
from tests.plugins.waiting import eventually


class EchoServer:
    """Writes back whatever it reads; counts the resets it sees; leaves no task behind."""

    def __init__(self) -> None:
        self.port = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._echo(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            self.resets += 1
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        yield proxy


@pytest.fixture
async def kafka_proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port, kafka=True) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def client(
    proxy: FaultProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the proxy, closed (or found reset) at the end of the block."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    """Send ``data``, check it comes back unchanged, and give the seconds that took."""
    started = time.monotonic()
    writer.write(data)
    assert data == await reader.readexactly(len(data))
    return time.monotonic() - started


@pytest.mark.parametrize("kafka", [False, True], ids=["plain", "kafka-mode"])
async def test_bytes_pass_unchanged_both_ways(echo, kafka):
    """A 1 MiB payload goes up and comes back byte for byte, even when kafka mode parses it."""
    payload = random.Random(1).randbytes(1024 * 1024)
    async with FaultProxy("127.0.0.1", echo.port, kafka=kafka) as proxy, client(proxy) as conn:
        await round_trip(*conn, payload)
        await round_trip(*conn, b"and a small one after it")
    assert 1 == proxy.connections_accepted


async def test_latency_each_way_adds_to_a_round_trip(proxy):
    """Latencies set on an open connection delay the next round trip by about their sum."""
    async with client(proxy) as conn:
        assert 0.05 > await round_trip(*conn, b"ping")
        proxy.latency_up, proxy.latency_down = 0.08, 0.04
        elapsed = await round_trip(*conn, b"ping")
    assert 0.12 <= elapsed < 0.12 + 0.15


async def test_latency_is_not_paid_once_per_chunk(proxy):
    """Twenty chunks written 5 ms apart all come back about one latency after they were sent:
    latency is a delay line, so chunks in flight wait together, not one after another."""
    proxy.latency_up = 0.1
    chunks = [b"chunk-%02d;" % i for i in range(20)]
    async with client(proxy) as (reader, writer):
        started = time.monotonic()
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.005)
        assert b"".join(chunks) == await reader.readexactly(sum(map(len, chunks)))
        elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 0.1 + 20 * 0.005 + 0.2  # one chunk after another would take 2 s


async def test_cut_resets_open_connections_and_refuses_new_ones(proxy, echo):
    """After cut() the client's read fails with a reset, the upstream sees a reset too, and
    connecting to the proxy's port is refused."""
    async with client(proxy) as (reader, writer):
        await round_trip(reader, writer, b"before the cut")
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)
    await eventually(lambda: echo.resets == 1, timeout=1, what="the upstream to see a reset")
    assert 1 == proxy.connections_cut


async def test_restore_listens_again_on_the_same_port(proxy):
    """restore() after cut() accepts new connections on the port the proxy had."""
    port = proxy.port
    proxy.cut()
    await proxy.restore()
    async with client(proxy) as conn:
        await round_trip(*conn, b"after the restore")
    assert port == proxy.port
    assert 1 == proxy.connections_accepted


async def test_cut_for_is_an_outage_of_that_long(proxy):
    """cut_for(seconds) refuses connections during the outage and accepts them after it."""
    outage = asyncio.create_task(proxy.cut_for(0.2))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)
    await outage
    async with client(proxy) as conn:
        await round_trip(*conn, b"after the outage")


async def test_close_is_idempotent_and_drops_open_connections(echo):
    """close() ends open connections and their tasks; a second close() does nothing."""
    proxy = await FaultProxy("127.0.0.1", echo.port).start()
    async with client(proxy) as (reader, writer):
        await round_trip(reader, writer, b"hello")
        await proxy.close()
        await proxy.close()
        with contextlib.suppress(ConnectionResetError):
            assert b"" == await reader.read(1)
    assert 0 == proxy.connections_cut


async def test_kafka_frames_pass_intact_split_at_every_byte(kafka_proxy):
    """Three requests arrive as two chunks split at every possible position; every byte comes
    through in order and each request is counted once per send, so the parser never loses the
    frame boundaries."""
    frames = [
        kafka_request(9, 8, 1, b"offset-fetch"),
        kafka_request(1, 13, 2),
        kafka_request(18, 3, 3, b"x" * 20),
    ]
    data = b"".join(frames)
    async with client(kafka_proxy) as (reader, writer):
        for split in range(1, len(data)):
            writer.write(data[:split])
            await writer.drain()
            await asyncio.sleep(0.001)
            writer.write(data[split:])
            assert data == await reader.readexactly(len(data))
    sends = len(data) - 1
    assert collections.Counter({9: sends, 1: sends, 18: sends}) == kafka_proxy.kafka_requests


async def test_kafka_delay_slows_only_requests_of_that_api_key(kafka_proxy):
    """With JoinGroup (11) delayed 0.2 s, a JoinGroup waits that long while a Fetch (1) on
    another connection goes straight through; both are counted."""
    kafka_proxy.kafka_request_delays[11] = 0.2
    async with client(kafka_proxy) as join, client(kafka_proxy) as fetch:
        join_time, fetch_time = await asyncio.gather(
            round_trip(*join, kafka_request(11, 5, 1, b"group")),
            round_trip(*fetch, kafka_request(1, 13, 1, b"topic")),
        )
    assert 0.2 <= join_time < 0.2 + 0.15
    assert fetch_time < 0.1
    assert collections.Counter({11: 1, 1: 1}) == kafka_proxy.kafka_requests


async def test_a_delayed_kafka_request_holds_what_follows_it(kafka_proxy):
    """A Fetch sent right behind a delayed JoinGroup on the same connection waits for it: the
    proxy never reorders a connection's bytes."""
    kafka_proxy.kafka_request_delays[11] = 0.2
    join, fetch = kafka_request(11, 5, 1, b"group"), kafka_request(1, 13, 2, b"topic")
    async with client(kafka_proxy) as (reader, writer):
        started = time.monotonic()
        writer.write(join + fetch)
        assert join + fetch == await reader.readexactly(len(join + fetch))
        assert 0.2 <= time.monotonic() - started


async def test_the_proxied_stub_answers_through_its_proxy(proxied_stub):
    """``proxied_stub`` serves the stub API through the proxy, and a cut makes it unreachable."""
    async with httpx.AsyncClient() as http:
        assert 200 == (await http.get(f"{proxied_stub.base_url}/healthz")).status_code
        assert 1 <= proxied_stub.proxy.connections_accepted
        proxied_stub.proxy.cut()
        with pytest.raises(httpx.TransportError):
            await http.get(f"{proxied_stub.base_url}/healthz")


@pytest.mark.integration
async def test_proxied_kafka_end_to_end(proxied_kafka, proxied_topic):
    """aiokafka produces, consumes and commits through the proxy with 5 ms each way, and an
    OffsetFetch (9) delay of 50 ms shows in the consumer's ``committed()``."""
    proxy = proxied_kafka.proxy
    proxy.latency_up = proxy.latency_down = 0.005
    topic = await proxied_topic(2)
    await topic.produce(6)
    consumer = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=proxied_kafka.bootstrap,
        group_id=topic.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # tansu answers a first JoinGroup after about half the session timeout (5 s by default)
        session_timeout_ms=1000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(values) < 6 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            values += [record.value for batch in batches.values() for record in batch]
        assert 6 == len(values)
        await consumer.commit()
        proxy.kafka_request_delays[9] = 0.05
        started = time.monotonic()
        committed = await consumer.committed(TopicPartition(topic.name, 0))
        assert 0.05 <= time.monotonic() - started
    finally:
        await consumer.stop()
    assert topic.expected_end(6)[0] == committed
    assert 1 <= proxy.kafka_requests[9]  # OffsetFetch
    assert 1 <= proxy.kafka_requests[0]  # Produce: the producer went through the proxy too
