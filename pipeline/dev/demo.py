"""``space-pipeline demo``: the whole stage on one machine, checked by the receiver, in a minute.

An embedded broker, the stub Space API with a realistic latency, a topic of numbered records, and
the real stage delivering them. The stub verifies order per partition and counts duplicates; the
same stub then times the folk way (``await asyncio.create_task(send(item))`` one by one) on a
sample, so the two can be compared side by side.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import Settings
from pipeline.dev.broker import EmbeddedBroker, committed_offsets, create_topic, produce_numbered
from pipeline.dev.stub_api import FaultWindow, StubConfig, StubServer
from pipeline.http_client import AiohttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.stage import Stage

TOPIC = "space-demo"
GROUP = "space-pipeline-demo"
FOLK_SAMPLE = 100


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo sends."""

    partitions: int = 8
    records: int = 4000
    latency_ms: float = 20.0
    # One fault to ride out: the API answers 503 to everything for a while.
    fault: FaultWindow | None = field(default_factory=lambda: FaultWindow("outage", 3.0, 3.0))


async def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo and print its summary; returns 0 when every check passed."""
    console = console or Console()
    faults = (options.fault,) if options.fault is not None else ()
    async with (
        EmbeddedBroker() as broker,
        StubServer(StubConfig(latency_ms=options.latency_ms, faults=faults)) as stub,
    ):
        console.print(
            f"[bold]broker[/] tansu on {broker.bootstrap_servers}   "
            f"[bold]stub Space API[/] {stub.url}"
        )
        await create_topic(broker.bootstrap_servers, TOPIC, options.partitions)
        await produce_numbered(broker.bootstrap_servers, TOPIC, options.partitions, options.records)
        console.print(f"produced {options.records} records over {options.partitions} partitions")

        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_topics=(TOPIC,),
            kafka_group_id=GROUP,
            space_api_url=stub.url,
            metrics_host="127.0.0.1",
            metrics_port=0,
            commit_interval_ms=200,
            retry_max_backoff_s=1.0,
            # The embedded broker holds a join for half the session: keep it short.
            kafka_session_timeout_ms=3_000,
            kafka_heartbeat_interval_ms=1_000,
            log_level="WARNING",
        )
        stage = Stage(settings)
        elapsed = await _run_stage(stage, stub, options.records, console)
        committed = await committed_offsets(
            broker.bootstrap_servers, TOPIC, options.partitions, GROUP
        )
        stats = stub.stats()
        folk_rate = await _folk_way(stub, broker.bootstrap_servers, options)

    expected = {
        p: len(range(p, options.records, options.partitions)) for p in range(options.partitions)
    }
    stage_rate = stats.unique / elapsed if elapsed else 0.0
    ok = (
        stats.unique == options.records
        and stats.order_violations == 0
        and committed == expected
        and all(part.max_concurrent <= 1 for part in stats.partitions.values())
    )
    table = Table(title="space-pipeline demo", show_header=False)
    table.add_row("delivered (unique)", f"{stats.unique} / {options.records}")
    table.add_row("order violations (checked by the receiver)", str(stats.order_violations))
    table.add_row("duplicates", str(stats.duplicates))
    table.add_row(
        "max concurrent requests per partition",
        str(max((p.max_concurrent for p in stats.partitions.values()), default=0)),
    )
    table.add_row(
        "offsets committed to the end", "yes" if committed == expected else f"no: {committed}"
    )
    # A run that ends before the fault's window (its clock starts at the first request) never
    # met it, and must not claim to have ridden it out.
    fault = options.fault
    failed = sum(n for status, n in stats.statuses.items() if status >= 500)
    if fault is not None:
        window = f"{fault.kind} from {fault.start_s:g} s for {fault.duration_s:g} s"
        if failed:
            table.add_row(
                f"fault ridden out: {window}",
                f"{failed} attempts answered 5xx, all retried in order"
                + ("" if ok else " [red](not all delivered)[/]"),
            )
        else:
            table.add_row(
                f"fault not met: {window}",
                f"no request came during it (the run took {elapsed:.2f} s; more --records)",
            )
    table.add_row(
        "stage throughput",
        f"{stage_rate:,.0f} records/s ({elapsed:.2f} s"
        + (", the fault included)" if fault is not None and failed else ")"),
    )
    table.add_row(
        "physical limit (partitions / latency)",
        f"{options.partitions / (options.latency_ms / 1000):,.0f} records/s",
    )
    table.add_row(
        f"folk way (the first {min(FOLK_SAMPLE, options.records)} records, one by one)",
        f"{folk_rate:,.0f} records/s",
    )
    table.add_row(
        "speed-up over the folk way", f"{stage_rate / folk_rate:,.1f}x" if folk_rate else "-"
    )
    table.add_row("verdict", "[green]all checks passed[/]" if ok else "[red]CHECK FAILED[/]")
    console.print(table)
    return 0 if ok else 1


async def _run_stage(stage: Stage, stub: StubServer, records: int, console: Console) -> float:
    """Run the stage until the stub has every record, showing progress; returns seconds taken."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started: float | None = None
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(stage.run())
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("delivered to the Space API", total=records)
            while (stats := stub.stats()).unique < records:
                if started is None and stats.first_request_at is not None:
                    started = stats.first_request_at
                progress.update(bar, completed=stats.unique)
                await asyncio.sleep(0.1)
            progress.update(bar, completed=records)
        stats = stub.stats()
        await asyncio.sleep(0.5)  # let a commit round pass before stopping
        stage.stop()
    first = stats.first_request_at or started or time.monotonic()
    return (stats.last_accept_at or time.monotonic()) - first


async def _folk_way(stub: StubServer, bootstrap_servers: str, options: DemoOptions) -> float:
    """Send the topic's first records the way the folk answer does; return its records/s."""
    stub.reset()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in range(options.partitions)])
        for p in range(options.partitions):
            consumer.seek(TopicPartition(TOPIC, p), 0)
        records: list[ConsumerRecord[bytes, bytes]] = []
        sample = min(FOLK_SAMPLE, options.records)  # a short demo has fewer: wait for no more
        while len(records) < sample:
            batch = await consumer.getmany(timeout_ms=500, max_records=sample - len(records))
            records.extend(record for part in batch.values() for record in part)
    finally:
        await consumer.stop()
    async with HttpSink(HttpSinkConfig(url=stub.url), AiohttpClient(Timeouts(), 1)) as api:
        started = time.perf_counter()
        for record in records:
            await asyncio.create_task(api.send(record))  # the folk answer: serial
        return len(records) / (time.perf_counter() - started)
