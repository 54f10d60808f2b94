"""`make chaos`: a soak under random faults that checks "nothing lost, nothing reordered".

The integration tests stage one fault at a time on a few thousand records. This runs the stage the
way it lives in production, for minutes: records keep arriving, two or three ``space-pipeline run``
processes share a consumer group, and faults drawn at random (seeded, so a failing run can be
replayed) follow one another with quiet gaps:

- broker latency (2-20 ms each way), a broker cut (every connection reset, connects refused), slow
  Kafka requests (OffsetFetch, JoinGroup, OffsetCommit held back, sometimes while a member joins);
- an API cut (connection refused), 5xx (a burst, a flaky spell or an outage window), 429
  throttling with ``Retry-After``;
- SIGKILL of a member and a restart, SIGTERM of a member (a graceful leave) and a restart, an extra
  member that joins and leaves (rebalances);
- SIGKILL of the broker and a restart on the same port after 1-12 s (sometimes longer than the
  members' 6 s session timeout, so the group re-forms): a rolling broker restart. The broker is a
  durable tansu (its log in a bucket of moto's local S3 server), so records and committed offsets
  survive it.

The RSS of every member process is sampled every 10 s and reported as a curve (``make soak`` runs
this for 30 minutes to show the stage does not grow).

Everything runs here: a durable tansu behind a :class:`~tests.faultproxy.FaultProxy` (it advertises
the proxy's port, so every Kafka connection goes through it), the stub Space API behind a second
proxy, and a producer writing numbered records (record ``i`` to partition ``i % P``) for the whole
chaos phase. Then the faults are lifted, the producer finishes, and once the stub has every record
the members get SIGTERM. The run fails (exit 1) unless: every offset in the log reached the API,
first deliveries came in offset order per partition, headers matched, every redelivery kept its
Idempotency-Key (``accepted == unique + duplicates``), the group committed to the end of every
partition, and every stop that was meant to be graceful exited 0 within its deadline. Duplicates
are allowed (at-least-once: after a crash or a rebalance) and only reported.

    python bench/chaos.py [--minutes 3] [--partitions 8] [--seed S] [--members 2] [--rate 200]
                          [--no-broker-restarts]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.faultproxy

from pipeline.dev.broker import DurableBroker, create_topic, free_port, numbered_record
from pipeline.dev.stub_api import FaultWindow, StubConfig, StubServer, StubStats
from pipeline.errors import BrokerError
from pipeline.logging import configure_logging
from tests.faultproxy import FaultProxy

# Kafka api_keys whose requests the "slow Kafka" fault holds back.
OFFSET_COMMIT, OFFSET_FETCH, JOIN_GROUP = 8, 9, 11
_SLOW_NAMES = (
    ("OffsetFetch", OFFSET_FETCH),
    ("JoinGroup", JOIN_GROUP),
    ("OffsetCommit", OFFSET_COMMIT),
)
SHUTDOWN_TIMEOUT_S = 10
# How long past its own shutdown deadline a SIGTERMed member may take to be gone (interpreter
# teardown, a loaded 2-core machine) before it counts as hung and is SIGKILLed.
EXIT_GRACE_S = 10
API_LATENCY_MS = 5.0
LOG_TAIL_LINES = 25
PROGRESS_EVERY_S = 15.0
RSS_EVERY_S = 10.0
MAX_RESTARTS_AFTER_CRASH = 3

NOTABLE_EVENTS = (
    "commit.failed",
    "stage.committed_unknown",
    "stage.request_abandoned",
    "consumer.leave_timeout",
    "consumer.leave_failed",
    "partition.halted",
    "policy.record_skipped",
    "policy.dead_lettered",
    "gate.opened",
    "stage.failed",
    "stage.forced_exit",
)

STAGE_SETTINGS = {
    "PIPELINE_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS": "2000",
    "PIPELINE_COMMIT_INTERVAL_MS": "500",
    "PIPELINE_RETRY_MAX_BACKOFF_S": "2",
    "PIPELINE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
    "PIPELINE_METRICS_HOST": "127.0.0.1",
    # INFO, not WARNING: stage.partitions_assigned (how rebalances are counted) is an INFO line.
    # The stage logs no line per record at INFO, and keeps aiokafka and httpx at WARNING.
    "PIPELINE_LOG_LEVEL": "INFO",
}


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a member's log, indented, for a report that must show the evidence."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def count_in_logs(log_dir: Path, event: str) -> int:
    """How many times ``event`` was logged by any member incarnation."""
    needle = f'"event":"{event}"'
    return sum(p.read_text(errors="replace").count(needle) for p in log_dir.glob("*.log"))


def notable_events(log_dir: Path) -> str:
    """Counts of the members' log events that a fault explains but a quiet run would not have."""
    counts = {event: count_in_logs(log_dir, event) for event in NOTABLE_EVENTS}
    return ", ".join(f"{event} {n}" for event, n in counts.items() if n) or "none"


@dataclass
class Member:
    """One slot in the consumer group, run as ``space-pipeline run``; restarts keep the slot.

    Each incarnation logs to its own file, so the tail shown for a misbehaving process is its own.
    ``stopping`` marks an exit we asked for, so the watchdog tells it from a crash.
    """

    name: str
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0
    started_at: float = 0.0
    crashes: int = 0
    stopping: bool = False

    def start(self) -> None:
        """Start a new incarnation (fresh metrics port, own log file)."""
        self.starts += 1
        self.started_at = time.monotonic()
        self.stopping = False
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        env = self.env | {
            "PIPELINE_METRICS_PORT": str(free_port()),
            "PIPELINE_KAFKA_CLIENT_ID": f"chaos-{self.name}",
        }
        with self.log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.log_dir,  # no stray .env from the caller's directory
            )

    @property
    def running(self) -> bool:
        """Whether the current incarnation is alive."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash: no drain, no commit, no leave) and reap."""
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait; ``None`` (and a SIGKILL) if it is still there after ``timeout``."""
        assert self.process is not None
        self.stopping = True
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self) -> str:
        """The end of this incarnation's log."""
        return log_tail(self.log_path) if self.log_path else ""


@dataclass
class Run:
    """What happened: faults, SIGKILLs, graceful stops and every problem with its evidence."""

    seed: int
    log_dir: Path
    started: float = field(default_factory=time.monotonic)
    faults: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, details)
    problems: list[str] = field(default_factory=list)
    sigkills: int = 0
    bad_stops: int = 0  # SIGTERMs not followed by exit 0 in time
    crashes: int = 0  # members that exited when nobody asked them to
    stop_times: list[float] = field(default_factory=list)  # seconds each SIGTERM took
    broker_restarts: int = 0
    # (t, MiB) every RSS_EVERY_S per member incarnation ("a-1", "a-2", ...)
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        """One timestamped line (UTC, like the members' JSON logs, and seconds into the run)."""
        clock = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"[{clock}Z t=+{self.elapsed:6.1f}s] {message}", flush=True)

    def fault(self, kind: str, details: str) -> None:
        """Log a fault as it starts."""
        self.faults.append((self.elapsed, kind, details))
        self.say(f"FAULT {kind}: {details}")

    def problem(self, message: str, member: Member | None = None) -> None:
        """Record an invariant breach at once, with the log tail that explains it."""
        text = message
        if member is not None:
            text += f"\n  tail of {member.log_path}:\n{member.tail()}"
        self.problems.append(text)
        self.say(f"PROBLEM {text}")


class Producer:
    """Numbered records at a steady rate until stopped; record ``i`` goes to partition ``i % P``.

    Pacing follows the clock, not the acks: what a broker cut holds back goes out in a burst
    afterwards, like an upstream catching up. Acks are counted per partition, but the truth about
    what was produced is the log's end offsets (a retried batch may be written twice), or one
    past the highest acked offset where that is further: tansu on S3 reports an end offset that
    lags the last acked writes until the partition's next write.
    """

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, rate: float, linger_ms: int = 5
    ) -> None:
        self.bootstrap, self.topic, self.partitions, self.rate = bootstrap, topic, partitions, rate
        self.linger_ms = linger_ms
        self.sent = 0
        self.acked = [0] * partitions
        self.acked_end = [0] * partitions  # one past the highest acked offset
        self.acked_offsets: list[set[int]] = [set() for _ in range(partitions)]
        self.failed = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stop producing new records; :meth:`run` then flushes what is pending and returns."""
        self._stop.set()

    def _settled(self, partition: int, future: asyncio.Future[RecordMetadata]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
        else:
            self.acked[partition] += 1
            offset = future.result().offset
            self.acked_offsets[partition].add(offset)
            self.acked_end[partition] = max(self.acked_end[partition], offset + 1)

    def log_ends(self, listed: dict[int, int]) -> dict[int, int]:
        """The end of each partition's log: the broker's word, or past the last acked write."""
        return {p: max(end, self.acked_end[p]) for p, end in listed.items()}

    async def run(self) -> None:
        """Produce until stopped, then wait for every pending record's fate."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=self.linger_ms)
        await producer.start()
        loop = asyncio.get_running_loop()
        begun = loop.time()
        try:
            while not self._stop.is_set():
                due = int((loop.time() - begun) * self.rate)
                while self.sent < due and not self._stop.is_set():
                    i, partition = self.sent, self.sent % self.partitions
                    self.sent += 1
                    try:
                        key, value = numbered_record(i)
                        sent = await producer.send(self.topic, value, key=key, partition=partition)
                    except Exception:  # a batch that timed out during a cut: the log decides
                        self.failed += 1
                        continue
                    sent.add_done_callback(functools.partial(self._settled, partition))
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()  # flushes: every pending record is acked or failed


class Chaos:
    """The fault repertoire, each fault a coroutine that injects, holds and lifts its fault."""

    def __init__(
        self,
        run: Run,
        rng: random.Random,
        broker: DurableBroker | None,
        kafka: FaultProxy,
        api: FaultProxy,
        stub: StubServer,
        members: dict[str, Member],
        make_member: Callable[[str], Member],
        ends_at: float,
    ) -> None:
        self.run, self.rng, self.ends_at = run, rng, ends_at
        self.broker, self.kafka, self.api, self.stub = broker, kafka, api, stub
        self.members, self.make_member = members, make_member
        self.baseline = stub.config
        self.extras = 0
        self.repertoire: dict[str, Callable[[], Awaitable[None]]] = {
            "broker latency": self.broker_latency,
            "broker cut": self.broker_cut,
            "slow kafka": self.slow_kafka,
            "api cut": self.api_cut,
            "api 5xx": self.api_errors,
            "api 429": self.api_throttle,
            "sigkill": self.sigkill,
            "sigterm": self.sigterm,
            "extra member": self.extra_member,
        }
        if broker is not None:
            self.repertoire["broker restart"] = self.broker_restart
        self._deck: list[str] = []

    def _hold(self, shortest: float, longest: float) -> float:
        """A fault's duration, cut short at the end of the chaos phase (never below
        ``shortest``), so the phase lasts about as long as asked."""
        left = self.ends_at - time.monotonic()
        return min(self.rng.uniform(shortest, longest), max(left, shortest))

    def draw(self) -> str:
        """The next fault kind: a shuffled deck, so a few minutes cover the whole repertoire."""
        if not self._deck:
            self._deck = sorted(self.repertoire)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    async def inject(self, kind: str) -> None:
        """Run one fault to its end."""
        await self.repertoire[kind]()

    async def lift_all(self) -> None:
        """No latency, no cuts, no slow requests, a healthy API."""
        self.kafka.latency_up = self.kafka.latency_down = 0.0
        self.kafka.kafka_request_delays.clear()
        await self.kafka.restore()
        await self.api.restore()
        self.stub.set_config(self.baseline)

    # The network to the broker

    async def broker_latency(self) -> None:
        ms, hold = self.rng.uniform(2, 20), self._hold(10, 20)
        self.run.fault("broker latency", f"{ms:.0f} ms each way for {hold:.0f} s")
        self.kafka.latency_up = self.kafka.latency_down = ms / 1000
        await asyncio.sleep(hold)
        self.kafka.latency_up = self.kafka.latency_down = 0.0

    async def broker_cut(self) -> None:
        hold = self._hold(5, 20)
        self.run.fault("broker cut", f"every connection reset, connects refused, for {hold:.0f} s")
        await self.kafka.cut_for(hold)

    async def broker_restart(self) -> None:
        """SIGKILL the broker and start it again on the same port and bucket, as a rolling
        restart (or a crash) does; a long one outlasts the members' session timeout."""
        assert self.broker is not None
        down = self.rng.uniform(1, 12)
        self.run.fault("broker restart", f"SIGKILL the broker, restart it after {down:.1f} s")
        self.run.broker_restarts += 1
        await self.broker.restart(down)

    async def slow_kafka(self) -> None:
        """Slow coordinator requests; half the time a member joins meanwhile, so the slow
        JoinGroup and OffsetFetch are on the path of a real rebalance, and leaves before the
        requests are fast again."""
        delays = {
            OFFSET_FETCH: self.rng.uniform(0.2, 2.0),
            JOIN_GROUP: self.rng.uniform(1.0, 5.0),
            OFFSET_COMMIT: self.rng.uniform(0.2, 1.5),
        }
        hold = self._hold(12, 25)
        with_member = self.rng.random() < 0.5
        shown = ", ".join(f"{name} +{delays[key]:.1f} s" for name, key in _SLOW_NAMES)
        joined = ", an extra member joins and leaves meanwhile" if with_member else ""
        self.run.fault("slow kafka", f"{shown} for {hold:.0f} s{joined}")
        self.kafka.kafka_request_delays.update(delays)
        try:
            if with_member:
                await asyncio.sleep(hold / 3)
                member = self._start_extra()
                await asyncio.sleep(hold * 2 / 3)
                await self.stop_gracefully(member, "extra member leaving a slow coordinator")
                del self.members[member.name]
            else:
                await asyncio.sleep(hold)
        finally:
            self.kafka.kafka_request_delays.clear()

    # The API

    async def api_cut(self) -> None:
        hold = self._hold(5, 20)
        self.run.fault("api cut", f"connections reset and refused for {hold:.0f} s")
        await self.api.cut_for(hold)

    async def api_errors(self) -> None:
        mode, hold = self.rng.choice(("burst", "flaky", "outage")), self._hold(5, 20)
        if mode == "burst":
            burst = self.rng.randint(100, 600)
            config = dataclasses.replace(self.baseline, error_burst=burst)
            details = f"the next {burst} requests answer 500 (lifted after {hold:.0f} s)"
        elif mode == "flaky":
            rate = self.rng.uniform(0.2, 0.6)
            config = dataclasses.replace(self.baseline, error_rate=rate)
            details = f"{rate:.0%} of requests answer 500/503 for {hold:.0f} s"
        else:
            config = dataclasses.replace(self.baseline, faults=(FaultWindow("outage", 0, hold),))
            details = f"outage window, every request answers 503, for {hold:.0f} s"
        self.run.fault("api 5xx", details)
        await self._stub_for(config, hold)

    async def api_throttle(self) -> None:
        retry_after, hold = self.rng.randint(1, 3), self._hold(5, 20)
        if self.rng.random() < 0.5:
            window = (FaultWindow("throttle", 0, hold),)
            config = dataclasses.replace(self.baseline, faults=window, retry_after_s=retry_after)
            details = f"every request answers 429, Retry-After {retry_after} s, for {hold:.0f} s"
        else:
            rate = self.rng.uniform(0.2, 0.6)
            config = dataclasses.replace(
                self.baseline, throttle_rate=rate, retry_after_s=retry_after
            )
            details = f"{rate:.0%} answer 429, Retry-After {retry_after} s, for {hold:.0f} s"
        self.run.fault("api 429", details)
        await self._stub_for(config, hold)

    async def _stub_for(self, config: StubConfig, hold: float) -> None:
        self.stub.set_config(config)
        try:
            await asyncio.sleep(hold)
        finally:
            self.stub.set_config(self.baseline)

    # The members

    def _victim(self) -> Member:
        return self.members[self.rng.choice(sorted(n for n in self.members if n[0] != "x"))]

    async def sigkill(self) -> None:
        member, down = self._victim(), self.rng.uniform(1, 8)
        self.run.fault("sigkill", f"SIGKILL {member.name}, restart after {down:.1f} s")
        member.kill()
        self.run.sigkills += 1
        await asyncio.sleep(down)
        member.start()

    async def sigterm(self) -> None:
        member, down = self._victim(), self.rng.uniform(1, 5)
        self.run.fault(
            "sigterm",
            f"SIGTERM {member.name} (graceful leave), restart {down:.1f} s after its exit",
        )
        await self.stop_gracefully(member, "SIGTERM fault")
        await asyncio.sleep(down)
        member.start()

    async def extra_member(self) -> None:
        hold = self._hold(12, 25)
        member = self._start_extra()
        self.run.fault("extra member", f"{member.name} joins, leaves (SIGTERM) after {hold:.0f} s")
        await asyncio.sleep(hold)
        await self.stop_gracefully(member, "extra member leaving")
        del self.members[member.name]

    def _start_extra(self) -> Member:
        self.extras += 1
        member = self.make_member(f"x{self.extras}")
        self.members[member.name] = member
        member.start()
        return member

    async def stop_gracefully(self, member: Member, why: str) -> None:
        """SIGTERM: the stage promises exit 0 within its shutdown timeout; anything else is kept
        as a problem with the log tail."""
        began = time.monotonic()
        code = await member.terminate(SHUTDOWN_TIMEOUT_S + EXIT_GRACE_S)
        took = time.monotonic() - began
        self.run.stop_times.append(took)
        if code != 0:
            self.run.bad_stops += 1
        if code is None:
            self.run.problem(
                f"{member.name} still running {took:.0f} s after SIGTERM ({why}): hung at "
                "shutdown, SIGKILLed",
                member,
            )
        elif code != 0:
            self.run.problem(f"{member.name} exited {code} after SIGTERM ({why})", member)


async def watch_broker(run: Run, broker: DurableBroker) -> None:
    """A broker that exits when nobody killed it is a broker failure, not the stage's: keep its
    log tail as evidence and start it again, so the run can still show what the stage did."""
    s3_reported = False
    while True:
        await asyncio.sleep(0.5)
        if not broker.s3.running and not s3_reported:
            s3_reported = True
            run.problem(f"the S3 server exited: tansu cannot read its log:\n{broker.s3.tail()}")
        if (code := broker.exited) is not None:
            run.problem(f"the broker exited on its own with code {code}:\n{broker.tail()}")
            broker.start()
            try:
                await broker.wait_ready()
            except BrokerError as error:
                run.problem(f"the broker does not start again: {error}")


async def watch_members(run: Run, members: dict[str, Member]) -> None:
    """A member that exits when nobody asked it to is a stage failure: keep the evidence, then
    restart it so the run can still show whether anything was lost (a few times: a member that
    cannot start at all would otherwise be restarted, and reported, twice a second)."""
    while True:
        await asyncio.sleep(0.5)
        for member in list(members.values()):
            if member.stopping or member.running or member.process is None:
                continue
            code = member.process.returncode
            run.crashes += 1
            member.crashes += 1
            run.problem(f"{member.name} exited on its own with code {code}", member)
            if member.crashes <= MAX_RESTARTS_AFTER_CRASH:
                member.start()
            else:
                member.stopping = True  # left down: the other members must carry the load
                run.say(f"{member.name} left down after {member.crashes} crashes")


async def report_progress(run: Run, producer: Producer, stub: StubServer) -> None:
    """A heartbeat line, so a long run shows it is moving (or where it got stuck)."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        stats = stub.stats()
        run.say(
            f"produced {producer.sent} (acked {sum(producer.acked)}), "
            f"delivered {stats.unique}, duplicates {stats.duplicates}"
        )


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, from /proc (None once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def sample_rss(run: Run, members: dict[str, Member]) -> None:
    """Every RSS_EVERY_S, each running member incarnation's RSS: a leak shows as a rising curve
    within one incarnation, which a restart would otherwise hide."""
    while True:
        for member in list(members.values()):
            settled = time.monotonic() - member.started_at >= RSS_EVERY_S / 2  # past its imports
            if member.running and member.process is not None and settled:
                mib = rss_mib(member.process.pid)
                if mib is not None:
                    incarnation = f"{member.name}-{member.starts}"
                    run.rss.setdefault(incarnation, []).append((run.elapsed, mib))
        await asyncio.sleep(RSS_EVERY_S)


def rss_report(run: Run, every_s: float = 60.0) -> list[str]:
    """One line per member incarnation sampled at least twice: min/max/first/last MiB and the
    curve, one value per ``every_s``."""
    lines = []
    for incarnation, samples in sorted(run.rss.items()):
        if len(samples) < 2:
            continue
        values = [mib for _, mib in samples]
        step = max(1, round(every_s / RSS_EVERY_S))
        curve = " ".join(f"{mib:.0f}" for mib in values[::step])
        lines.append(
            f"{incarnation}: {len(values)} samples over {samples[-1][0] - samples[0][0]:.0f} s, "
            f"first {values[0]:.1f}, min {min(values):.1f}, max {max(values):.1f}, "
            f"last {values[-1]:.1f} MiB; per {every_s:.0f} s: {curve}"
        )
    return lines


async def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def create_topic_when_ready(bootstrap: str, topic: str, partitions: int) -> None:
    """tansu listens a moment before it answers admin requests: retry for a while."""
    for attempt in range(40):
        try:
            await create_topic(bootstrap, topic, partitions)
        except Exception:
            if attempt == 39:
                raise
            await asyncio.sleep(0.25)
        else:
            return


async def log_offsets(
    bootstrap: str, topic: str, partitions: int, group: str
) -> tuple[dict[int, int], dict[int, int | None]]:
    """The end offset of every partition and the group's committed offsets, from the broker."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}, committed


def delivered_offsets(stats: StubStats, topic: str, partitions: int) -> list[set[int]]:
    """The offsets the API accepted, per partition (``stats`` taken with ``offsets=True``)."""
    seen = [stats.partitions.get(f"{topic}/{p}") for p in range(partitions)]
    return [set(part.offsets or ()) if part is not None else set() for part in seen]


def unacked_gaps(producer: Producer, delivered: list[set[int]]) -> dict[int, int]:
    """Per partition, how many acked offsets the API has not seen (only those lacking)."""
    gaps = {p: len(acked - delivered[p]) for p, acked in enumerate(producer.acked_offsets)}
    return {p: n for p, n in gaps.items() if n}


async def log_holes(bootstrap: str, topic: str, gaps: dict[int, set[int]]) -> set[tuple[int, int]]:
    """Which of the undelivered offsets hold no record at all: a broker SIGKILLed mid-produce
    may have moved its watermark past a batch it never wrote (tansu on S3 does), and a consumer
    then skips those offsets as it would compacted ones. Each gap is read back from the broker:
    a fetch from it that starts further on proves the offsets between empty."""
    holes: set[tuple[int, int]] = set()
    for partition, offsets in gaps.items():
        # One consumer per partition, assigned once: aiokafka's group-less consumer fails its
        # stop() after a second assign().
        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            for offset in sorted(offsets):
                if (partition, offset) in holes:
                    continue
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
                records = batch.get(tp, [])
                if records and records[0].offset > offset:
                    holes.update((partition, o) for o in range(offset, records[0].offset))
        finally:
            await consumer.stop()
    return holes


def missing(stats: StubStats, topic: str, ends: dict[int, int]) -> dict[int, int]:
    """Per partition, how many offsets of the log the API has not seen (only those lacking)."""
    seen = {p: stats.partitions.get(f"{topic}/{p}") for p in ends}
    counts = {p: (part.unique if part is not None else 0) for p, part in seen.items()}
    return {p: ends[p] - n for p, n in counts.items() if n != ends[p]}


@dataclass
class Check:
    """One line of the verdict: ``ok`` is None for what is only reported."""

    name: str
    seen: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "-" if self.ok is None else ("pass" if self.ok else "**FAIL**")


def fault_summary(run: Run) -> str:
    """``9 (api 5xx x2, broker cut, ...)``: how many faults of which kinds."""
    kinds = collections.Counter(kind for _, kind, _ in run.faults)
    parts = [f"{kind} x{n}" if n > 1 else kind for kind, n in sorted(kinds.items())]
    return f"{len(run.faults)} ({', '.join(parts)})"


def print_report(run: Run, args: argparse.Namespace, checks: list[Check], summary: dict) -> None:
    """The invariants as a markdown table, then one summary row to paste into the README."""
    print("\nFaults injected (t = seconds into the run):")
    for at, kind, details in run.faults:
        print(f"  t=+{at:6.1f}s  {kind:<14} {details}")
    if run.problems:
        print("\nProblems:")
        for problem in run.problems:
            print(f"  - {problem}")
    print(f"\nRSS of each member incarnation (sampled every {RSS_EVERY_S:.0f} s):")
    for line in rss_report(run):
        print(f"  {line}")
    print("\n| check | seen | verdict |\n|---|---|---|")
    for check in checks:
        print(f"| {check.name} | {check.seen} | {check.verdict} |")
    print("\n| " + " | ".join(summary) + " |")
    print("|" + "---|" * len(summary))
    print("| " + " | ".join(str(v) for v in summary.values()) + " |")
    print(
        f"\nseed {args.seed}: rerun with `python bench/chaos.py --minutes {args.minutes:g} "
        f"--partitions {args.partitions} --members {args.members} --rate {args.rate:g} "
        f"--seed {args.seed}`"
    )


async def chaos(args: argparse.Namespace, log_dir: Path) -> bool:
    """The whole run: set up, chaos phase, drain, stop, check, report. True when all held."""
    run, rng = Run(args.seed, log_dir), random.Random(args.seed)
    suffix = uuid.uuid4().hex[:6]
    topic, group = f"chaos-{args.seed}-{suffix}", f"chaos-{suffix}"
    kafka_port = free_port()
    async with (
        DurableBroker(advertised_port=kafka_port) as broker,
        FaultProxy(broker.host, broker.port, port=kafka_port, kafka=True) as kafka,
        StubServer(StubConfig(latency_ms=API_LATENCY_MS, jitter_ms=2, seed=args.seed)) as stub,
        FaultProxy("127.0.0.1", int(stub.base_url.rsplit(":", 1)[1])) as api,
    ):
        await create_topic_when_ready(kafka.address, topic, args.partitions)
        run.say(
            f"seed {args.seed}: topic {topic} ({args.partitions} partitions) behind {kafka.address}"
            f", API behind {api.address}, {args.members} members, {args.rate:g} records/s, "
            f"logs in {log_dir}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env |= STAGE_SETTINGS | {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": kafka.address,
            "PIPELINE_KAFKA_TOPICS": topic,
            "PIPELINE_KAFKA_GROUP_ID": group,
            "PIPELINE_SPACE_API_URL": f"http://{api.address}{stub.config.path}",
        }

        def make_member(name: str) -> Member:
            return Member(name, env, log_dir)

        members = {name: make_member(name) for name in "abc"[: args.members]}
        producer = Producer(kafka.address, topic, args.partitions, args.rate, args.linger_ms)
        chaos_ends = run.started + args.minutes * 60
        restarts = None if args.no_broker_restarts else broker
        faults = Chaos(run, rng, restarts, kafka, api, stub, members, make_member, chaos_ends)
        try:
            async with asyncio.TaskGroup() as tasks:
                producing = tasks.create_task(producer.run())
                for member in members.values():
                    member.start()
                watchdog = tasks.create_task(watch_members(run, members))
                broker_watch = tasks.create_task(watch_broker(run, broker))
                progress = tasks.create_task(report_progress(run, producer, stub))
                sampler = tasks.create_task(sample_rss(run, members))
                if not await wait_for(lambda: stub.stats().unique > 0, timeout=60):
                    run.problem("nothing delivered within 60 s of the start", members["a"])
                while chaos_ends - time.monotonic() > 10:
                    await asyncio.sleep(rng.uniform(3, 8))
                    await faults.inject(faults.draw())
                await asyncio.sleep(max(chaos_ends - time.monotonic(), 0))

                run.say("chaos over: faults lifted, producer finishing")
                await faults.lift_all()
                producer.stop()
                await producing
                listed, _ = await log_offsets(kafka.address, topic, args.partitions, group)
                ends = producer.log_ends(listed)
                produced = sum(ends.values())
                run.say(f"produced {produced} records; waiting for the API to see them all")
                drain_timeout = max(180.0, args.minutes * 60)
                drained = await wait_for(
                    lambda: (
                        not unacked_gaps(
                            producer,
                            delivered_offsets(stub.stats(offsets=True), topic, args.partitions),
                        )
                    ),
                    drain_timeout,
                    step=2.0,
                )
                # Records written but never acked arrive too; a hole never does.
                await wait_for(lambda: stub.stats().unique >= produced, 20.0)
                if not drained:
                    lacking = unacked_gaps(
                        producer,
                        delivered_offsets(stub.stats(offsets=True), topic, args.partitions),
                    )
                    run.problem(
                        f"the API still lacks acked records {drain_timeout:.0f} s after the end, "
                        f"missing per partition: {lacking}"
                    )
                    for member in members.values():
                        run.say(f"tail of {member.log_path}:\n{member.tail()}")
                watchdog.cancel()
                broker_watch.cancel()
                progress.cancel()
                sampler.cancel()
                run.say("SIGTERM to every member")
                await asyncio.gather(
                    *(faults.stop_gracefully(m, "end of run") for m in members.values())
                )
        finally:
            for member in members.values():
                member.kill()
        listed, committed = await log_offsets(kafka.address, topic, args.partitions, group)
        ends = producer.log_ends(listed)
        stats = stub.stats(offsets=True)
        delivered = delivered_offsets(stats, topic, args.partitions)
        gaps = {p: set(range(ends[p])) - delivered[p] for p in range(args.partitions)}
        holes = await log_holes(kafka.address, topic, {p: g for p, g in gaps.items() if g})
    return judge(run, args, topic, producer, stats, ends, committed, holes)


def judge(
    run: Run,
    args: argparse.Namespace,
    topic: str,
    producer: Producer,
    stats: StubStats,
    ends: dict[int, int],
    committed: dict[int, int | None],
    holes: set[tuple[int, int]],
) -> bool:
    """Check the invariants against what the API saw and what the broker holds; print the report.

    True when every invariant held and nothing misbehaved along the way."""
    produced = sum(ends.values())
    lacking = missing(stats, topic, ends)
    for partition, _ in holes:
        lacking[partition] -= 1
    lacking = {p: n for p, n in lacking.items() if n}
    delivered = delivered_offsets(stats, topic, args.partitions)
    unacked = unacked_gaps(producer, delivered)
    behind = {p: (c, ends[p]) for p, c in committed.items() if c != ends[p]}
    short_acked = [p for p in range(args.partitions) if producer.acked[p] > ends[p]]
    rebalances = count_in_logs(run.log_dir, "stage.partitions_assigned")
    graceful = len(run.stop_times)
    slowest = max(run.stop_times, default=0.0)
    checks = [
        Check(
            "records produced (log end offsets)",
            f"{produced:,} ({producer.failed} sends failed, {sum(producer.acked):,} acked)",
            None,
        ),
        Check("log holds every acked record", f"short: {short_acked or 'none'}", not short_acked),
        Check(
            "every acked record delivered",
            "all" if not unacked else f"missing per partition {unacked}",
            not unacked,
        ),
        Check(
            "every record in the log delivered (unique == produced - holes)",
            f"{stats.unique:,}" + (f", missing per partition {lacking}" if lacking else ""),
            not lacking,
        ),
        Check(
            "holes: offsets with no record (a produce cut by a broker SIGKILL)",
            str(len(holes)),
            None,
        ),
        Check(
            "order violations (first deliveries per partition)",
            str(stats.order_violations),
            stats.order_violations == 0,
        ),
        Check("header mismatches", str(stats.header_mismatches), stats.header_mismatches == 0),
        Check(
            "accepted == unique + duplicates (same Idempotency-Key)",
            f"{stats.accepted:,} == {stats.unique:,} + {stats.duplicates:,}",
            stats.accepted == stats.unique + stats.duplicates,
        ),
        Check(
            "committed == end of every partition",
            "all" if not behind else f"(committed, end) {behind}",
            not behind,
        ),
        Check(
            "graceful stops exited 0 in time",
            f"{graceful - run.bad_stops}/{graceful}, slowest {slowest:.1f} s",
            run.bad_stops == 0,
        ),
        Check("no member exited on its own", str(run.crashes), run.crashes == 0),
        Check("duplicates (allowed after a crash or rebalance)", f"{stats.duplicates:,}", None),
        Check("API answers by status", str(dict(sorted(stats.statuses.items()))), None),
        Check("faults injected", fault_summary(run), None),
        Check("SIGKILLs", str(run.sigkills), None),
        Check("broker restarts (SIGKILL + restart)", str(run.broker_restarts), None),
        Check("rebalances seen (stage.partitions_assigned)", str(rebalances), None),
        Check("stage warnings worth a look", notable_events(run.log_dir), None),
        Check("wall time", f"{run.elapsed:.0f} s", None),
    ]
    ok = not run.problems and all(c.ok is not False for c in checks)
    summary = {
        "seed": args.seed,
        "minutes": f"{args.minutes:g}",
        "partitions": args.partitions,
        "members": args.members,
        "faults": len(run.faults),
        "records": f"{produced - len(holes):,}",
        "duplicates": f"{stats.duplicates:,}",
        "SIGKILLs": run.sigkills,
        "broker restarts": run.broker_restarts,
        "rebalances": rebalances,
        "wall time": f"{run.elapsed:.0f} s",
        "result": "**pass**" if ok else "**FAIL**",
    }
    print_report(run, args, checks, summary)
    return ok


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="chaos phase (default 3)")
    parser.add_argument("--partitions", type=int, default=8, help="topic partitions (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--members", type=int, choices=(2, 3), default=2, help="group members")
    parser.add_argument("--rate", type=float, default=200.0, help="records/s produced (200)")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=5,
        help="the producer's linger (5); tansu on S3 keeps a batch an object and lists them all"
        " on every fetch, so a long run wants fewer, larger batches",
    )
    parser.add_argument(
        "--no-broker-restarts", action="store_true", help="leave broker restarts out of the menu"
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 100_000)
    return args


def main() -> int:
    args = parse_args()
    configure_logging("WARNING")
    # The producer and the checks' own clients ride the faults too: their reconnect warnings are
    # expected noise here, the members' logs are what matters.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    log_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    ok = asyncio.run(chaos(args, log_dir))
    if ok:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"member logs kept in {log_dir}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
