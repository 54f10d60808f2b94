"""`make bench`: the stage against its physical limit and against the folk way, side by side.

Everything runs in one go on this machine: the embedded broker, the stub Space API in its own
process (20 ms per call), and each contender in its own process so its CPU time and peak RSS are
its own. Rows:

- the stage, strict per-partition order, 8 partitions: target >= 0.9 x (8 / 20 ms = 400/s);
- the folk way on the same records (`await asyncio.create_task(send(record))`, one at a time);
  target: the stage >= 25x faster;
- the stage with per-key order (same records, distinct keys): what lanes beyond partitions buy;
- `OrderedSender` alone with a no-op async send: overhead per item, target <= 30 us, next to a
  bare `await send(item)` loop as the floor.

    python bench/bench.py [--records 4000] [--partitions 8] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.dev.broker import EmbeddedBroker, create_topic, free_port, produce_numbered
from pipeline.logging import configure_logging
from pipeline.sender import OrderedSender

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    name: str
    records: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    target: str = ""
    verdict: str = ""

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def stub_stats(client: httpx.AsyncClient, base: str) -> dict:
    return (await client.get(f"{base}/stats")).json()


async def run_stage(
    name: str, bootstrap: str, stub_base: str, records: int, partitions: int, ordering: str
) -> Row:
    topic = f"bench-{ordering}-{time.monotonic_ns()}"
    await create_topic(bootstrap, topic, partitions)
    await produce_numbered(bootstrap, topic, partitions, records)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")} | {
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_KAFKA_TOPICS": topic,
        "PIPELINE_KAFKA_GROUP_ID": topic,
        "PIPELINE_SPACE_API_URL": f"{stub_base}/items",
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(free_port()),
        "PIPELINE_ORDERING": ordering,
        "PIPELINE_LOG_LEVEL": "WARNING",
    }
    async with httpx.AsyncClient() as client:
        await client.post(f"{stub_base}/reset")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"], env=env, stdin=subprocess.DEVNULL
        )
        cpu0 = None
        try:
            while True:
                stats = await stub_stats(client, stub_base)
                if cpu0 is None and stats["first_request_at"] is not None:
                    cpu0 = proc_cpu(proc.pid)
                if stats["unique"] >= records:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"{name}: the stage exited with {proc.returncode}")
                await asyncio.sleep(0.02)
            cpu1, rss = proc_cpu(proc.pid), proc_peak_rss(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    if stats["order_violations"]:
        raise SystemExit(f"{name}: {stats['order_violations']} order violations")
    seconds = stats["last_accept_at"] - stats["first_request_at"]
    return Row(name, records, seconds, cpu1 - (cpu0 or cpu1), rss)


FOLK = """
import asyncio, json, resource, sys, time
from aiokafka import AIOKafkaConsumer, TopicPartition
from pipeline.http_client import AiohttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig

async def main(bootstrap, topic, partitions, records, url):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    async with HttpSink(HttpSinkConfig(url=url), AiohttpClient(Timeouts(), 1)) as api:
        sent, started, cpu0 = 0, None, None
        while sent < records:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                for record in part:
                    if started is None:
                        started, cpu0 = time.perf_counter(), time.process_time()
                    await asyncio.create_task(api.send(record))  # the folk answer
                    sent += 1
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    await consumer.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss": rss}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


async def run_folk(bootstrap: str, stub_base: str, records: int, partitions: int) -> Row:
    topic = f"bench-folk-{time.monotonic_ns()}"
    await create_topic(bootstrap, topic, partitions)
    await produce_numbered(bootstrap, topic, partitions, records)
    async with httpx.AsyncClient() as client:
        await client.post(f"{stub_base}/reset")
    args = [bootstrap, topic, str(partitions), str(records), f"{stub_base}/items"]
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", FOLK, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    name = "folk way: await create_task(send(r)), one at a time"
    return Row(name, records, result["seconds"], result["cpu"], result["rss"])


async def sender_overhead(items: int) -> tuple[Row, Row]:
    async def noop(_: int) -> None:
        return None

    started, cpu0 = time.perf_counter(), time.process_time()
    for i in range(items):
        await noop(i)
    bare = Row(
        "floor: bare `await send(item)` loop",
        items,
        time.perf_counter() - started,
        time.process_time() - cpu0,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    async with OrderedSender(noop, lane_capacity=items) as sender:
        started, cpu0 = time.perf_counter(), time.process_time()
        receipts = [sender.try_submit(i, i % 8) for i in range(items)]
        await sender.drain()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        assert all(r.done() and r.exception() is None for r in receipts)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return bare, Row("OrderedSender alone, no-op async send, 8 lanes", items, seconds, cpu, rss)


async def main(args: argparse.Namespace) -> None:
    limit = args.partitions / (args.latency_ms / 1000)
    stub_port = free_port()
    stub_base = f"http://127.0.0.1:{stub_port}"
    stub = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "stub-api", "--port", str(stub_port),
         "--latency-ms", str(args.latency_ms)],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with EmbeddedBroker() as broker, httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    await client.get(f"{stub_base}/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            bs = broker.bootstrap_servers
            strict = await run_stage(
                f"stage, strict order per partition ({args.partitions} partitions)",
                bs, stub_base, args.records, args.partitions, "partition",
            )  # fmt: skip
            folk = await run_folk(bs, stub_base, args.records, args.partitions)
            keyed = await run_stage(
                "stage, order per key (distinct keys)",
                bs, stub_base, args.records, args.partitions, "key",
            )  # fmt: skip
    finally:
        stub.terminate()
        stub.wait()
    bare, sender = await sender_overhead(args.sender_items)

    strict.target = f">= 0.9 x limit {limit:.0f}/s"
    strict.verdict = f"{strict.rate / limit:.2f} x limit " + (
        "MET" if strict.rate >= 0.9 * limit else "MISSED"
    )
    speedup = strict.rate / folk.rate
    folk.target = "stage >= 25x this"
    folk.verdict = f"stage {speedup:.1f}x " + ("MET" if speedup >= 25 else "MISSED")
    keyed.verdict = f"{keyed.rate / folk.rate:.1f}x folk"
    per_item = sender.seconds / sender.records * 1e6
    sender.target = "<= 30 us/item"
    sender.verdict = f"{per_item:.1f} us/item " + ("MET" if per_item <= 30 else "MISSED")
    bare.verdict = f"{bare.seconds / bare.records * 1e6:.2f} us/item"

    header = (
        f"{'scenario':<62} {'records':>8} {'seconds':>8} {'records/s':>10} {'CPU s/1k':>9} "
        f"{'peak RSS':>9}  {'target':<24} result"
    )
    print(header)
    print("-" * len(header))
    for row in (strict, folk, keyed, sender, bare):
        cpu_k = row.cpu_seconds / row.records * 1000
        print(
            f"{row.name:<62} {row.records:>8} {row.seconds:>8.2f} {row.rate:>10,.0f} "
            f"{cpu_k:>9.3f} {row.peak_rss_bytes / 2**20:>7.1f}Mi  {row.target:<24} {row.verdict}"
        )
    print(
        f"\nphysical limit, strict: {args.partitions} partitions / {args.latency_ms:g} ms = "
        f"{limit:.0f} records/s; strict order cannot beat the folk way by more than the "
        f"partition count ({args.partitions}x)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--sender-items", type=int, default=200_000)
    configure_logging("WARNING")
    asyncio.run(main(parser.parse_args()))
