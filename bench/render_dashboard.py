"""Render the main panels of the shipped Grafana dashboard from a real run, as one PNG.

No Grafana here, so this does what Grafana would: it runs the real pieces, lets the real Prometheus
scrape the stage, asks Prometheus for the PromQL of the dashboard's own panels
(``helm/space-pipeline/files/space-pipeline-dashboard.json``, read by panel title) over the run,
and draws them with matplotlib in a dark, Grafana-like grid.

The run (about 90 s): the embedded broker (tansu), the stub Space API in this process (20 ms
± 8 ms per call), a topic of 4 partitions with a backlog, records produced steadily during the
run, the stage as ``python -m pipeline run`` in its own process, and Prometheus scraping it every
second (with the ``namespace``/``pod`` labels of a Kubernetes scrape). Faults, shaded in every
panel: after 20 s an error burst then a throttle burst (429 with ``Retry-After: 2``), after 45 s a
full outage (every call answered 500/503) for 10 s, then recovery.

Needs the dev install (``pip install -e '.[dev]'``), the ``prometheus`` binary (Debian package
``prometheus``, as for ``make test``) and matplotlib, which is not a project dependency::

    .venv/bin/pip install matplotlib
    .venv/bin/python bench/render_dashboard.py [--out docs/dashboard.png] [--rate-interval 5s]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.prometheus_harness

from pipeline.dev.broker import EmbeddedBroker, create_topic, free_port, produce_numbered
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.logging import configure_logging
from tests.prometheus_harness import (
    dashboard_panels,
    expand_grafana_variables,
    running_prometheus,
)

try:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.ticker import FuncFormatter, MaxNLocator
except ImportError:  # pragma: no cover - an optional tool
    sys.exit("render_dashboard needs matplotlib: .venv/bin/pip install matplotlib")

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "telemetry"
GROUP = "space-pipeline"
PARTITIONS = 4
NAMESPACE, POD = "test", "test-0"  # what running_prometheus labels its target with

# Panels drawn, by their title in the dashboard JSON, in reading order (3 rows of 4).
PANELS = (
    "Consumed vs delivered (records/s)",
    "Consumer lag (records) per partition",
    "Consumer lag (time) per partition",
    "Oldest unaccepted record age",
    "Send latency (one HTTP attempt)",
    "End-to-end latency (Kafka timestamp to acceptance)",
    "HTTP attempts by status class",
    "Retries by reason",
    "In flight per partition",
    "Buffered per partition",
    "Commits by result",
    "Committed offset per partition",
)

# Grafana's dark theme and its classic palette.
BACKGROUND, PANEL, BORDER, GRID = "#111217", "#181b1f", "#2c3235", "#262a2e"
TEXT, MUTED = "#ccccdc", "#8e8e9e"
PALETTE = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0")
SERIES_COLOURS = {
    "2xx": "#73bf69",
    "429": "#f2cc0c",
    "5xx": "#f2495c",
    "4xx": "#ff780a",
    "timeout": "#b877d9",
    "connection": "#5794f2",
    "ok": "#73bf69",
    "failed": "#f2495c",
    "p50": "#73bf69",
    "p95": "#f2cc0c",
    "p99": "#f2495c",
    "mean": "#8ab8ff",
}
FAULT_COLOURS = {"burst": "#ff780a", "outage": "#f2495c"}


@dataclass
class Fault:
    kind: str  # "burst" or "outage"
    label: str
    start: float  # wall clock
    end: float = math.nan


@dataclass
class Run:
    started: float = 0.0  # wall clock when the stage joined the group: the time axis's zero
    ended: float = 0.0
    produced: int = 0
    faults: list[Fault] = field(default_factory=list)


# --- the run -----------------------------------------------------------------------------------


def stage_env(bootstrap: str, url: str, metrics_port: int) -> dict[str, str]:
    """The stage's settings, as ``tests/plugins/broker.py``'s ``Topic.env()`` sets them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return env | {
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PIPELINE_KAFKA_TOPICS": TOPIC,
        "PIPELINE_KAFKA_GROUP_ID": GROUP,
        "PIPELINE_SPACE_API_URL": url,
        "PIPELINE_METRICS_HOST": "127.0.0.1",
        "PIPELINE_METRICS_PORT": str(metrics_port),
        "PIPELINE_COMMIT_INTERVAL_MS": "500",
        "PIPELINE_RETRY_INITIAL_BACKOFF_S": "0.05",
        "PIPELINE_RETRY_MAX_BACKOFF_S": "1",
        "PIPELINE_SHUTDOWN_TIMEOUT_S": "10",
        "PIPELINE_LOG_LEVEL": "WARNING",
    }


async def wait_ready(ops_url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until the stage answers ``/readyz`` with 200 (it joined the group)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the stage exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{ops_url}/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stage was not ready within {timeout} s")
            await asyncio.sleep(0.1)


async def produce_steadily(bootstrap: str, run: Run, rate: float, stop: asyncio.Event) -> None:
    """Produce ``rate`` records/s in small batches until ``stop`` is set."""
    begun, sent = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - begun) * rate) - sent
        if due > 0:
            await produce_numbered(bootstrap, TOPIC, PARTITIONS, due, start=run.produced)
            run.produced += due
            sent += due
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def failures(stub: StubServer) -> int:
    return sum(n for status, n in stub.stats().statuses.items() if status >= 300)


async def stage_faults(stub: StubServer, run: Run, args: argparse.Namespace) -> None:
    """The fault schedule, relative to the stage's start; records when each fault really ended."""
    normal = stub.config

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, run.started + offset - time.time()))

    await at(args.burst_at)
    burst = args.error_burst + args.throttle_burst
    before = failures(stub)
    fault = Fault(
        "burst",
        f"{args.error_burst}x 5xx + {args.throttle_burst}x 429 (Retry-After 2 s)",
        time.time(),
    )
    run.faults.append(fault)
    print(f"t+{fault.start - run.started:4.1f}s  {fault.label}")
    stub.set_config(
        StubConfig(
            latency_ms=normal.latency_ms,
            jitter_ms=normal.jitter_ms,
            error_burst=args.error_burst,
            throttle_burst=args.throttle_burst,
            retry_after_s=2.0,
        )
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the burst ends when its requests have been answered
        if failures(stub) - before >= burst:
            break
        await asyncio.sleep(0.05)
    fault.end = time.time()
    print(f"t+{fault.end - run.started:4.1f}s  burst over")
    stub.set_config(normal)

    await at(args.outage_at)
    fault = Fault("outage", f"outage: every call 500/503 for {args.outage_s:g} s", time.time())
    run.faults.append(fault)
    print(f"t+{fault.start - run.started:4.1f}s  {fault.label}")
    stub.set_config(
        StubConfig(latency_ms=normal.latency_ms, jitter_ms=normal.jitter_ms, error_rate=1.0)
    )
    await at(args.outage_at + args.outage_s)
    fault.end = time.time()
    stub.set_config(normal)
    print(f"t+{fault.end - run.started:4.1f}s  recovered")


async def run_pipeline(args: argparse.Namespace, workdir: Path) -> tuple[Run, dict[str, Any]]:
    """Run everything for ``args.duration`` seconds; return the run and the panels' range data."""
    run = Run()
    stub_config = StubConfig(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, seed=7)
    async with EmbeddedBroker() as broker, StubServer(stub_config) as stub:
        bootstrap = broker.bootstrap_servers
        await create_topic(bootstrap, TOPIC, PARTITIONS)
        await produce_numbered(bootstrap, TOPIC, PARTITIONS, args.backlog)
        run.produced = args.backlog
        print(f"broker {bootstrap}, stub {stub.url}, backlog {args.backlog} records")

        metrics_port = free_port()
        log_path = workdir / "stage.log"
        with (
            running_prometheus([f"127.0.0.1:{metrics_port}"], workdir, "1s") as prom,
            log_path.open("ab") as log,
        ):
            launched = time.time()
            stage = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run"],
                env=stage_env(bootstrap, stub.url, metrics_port),
                cwd=workdir,  # no stray .env file gets read
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                await wait_ready(f"http://127.0.0.1:{metrics_port}", stage)
                run.started = time.time()
                print(f"stage ready after {run.started - launched:.1f} s; Prometheus {prom.url}")
                stop = asyncio.Event()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(produce_steadily(bootstrap, run, args.rate, stop))
                    tasks.create_task(stage_faults(stub, run, args))
                    await asyncio.sleep(max(0.0, run.started + args.duration - time.time()))
                    stop.set()
                await asyncio.sleep(1.5)  # one more scrape of the last second
                run.ended = time.time()
                data = query_panels(prom.url, run, args.rate_interval)
            finally:
                stage.send_signal(signal.SIGTERM)
                try:
                    code = stage.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    stage.kill()
                    code = stage.wait()
                print(f"stage stopped with exit code {code}")
        stats = stub.stats()
        print(
            f"produced {run.produced}, API accepted {stats.unique} unique "
            f"({stats.duplicates} duplicates, {stats.order_violations} order violations), "
            f"statuses {dict(sorted(stats.statuses.items()))}"
        )
    return run, data


# --- Prometheus ----------------------------------------------------------------------------------


def panel_queries(rate_interval: str) -> dict[str, tuple[dict[str, Any], list[tuple[str, str]]]]:
    """Each drawn panel by title: the panel, and its targets as (legendFormat, PromQL)."""
    variables = {"namespace": NAMESPACE, "pod": POD, "topic": TOPIC}
    found: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {}
    for panel in dashboard_panels():
        title = panel.get("title", "")
        if title in PANELS:
            targets = [
                (
                    target.get("legendFormat", ""),
                    expand_grafana_variables(target["expr"], variables, interval=rate_interval),
                )
                for target in panel.get("targets", [])
                if target.get("expr")
            ]
            found[title] = (dict(panel), targets)
    missing = [title for title in PANELS if title not in found]
    if missing:
        raise SystemExit(f"the dashboard has no panel titled {missing}: update PANELS")
    return found


def query_range(client: httpx.Client, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    response = client.get(
        "/api/v1/query_range",
        params={"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1s"},
    )
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def query_panels(url: str, run: Run, rate_interval: str) -> dict[str, Any]:
    """Range data of every drawn panel: title -> (panel, [(legend, label set, times, values)])."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for title, (panel, targets) in panel_queries(rate_interval).items():
            series = []
            for legend, expr in targets:
                for result in query_range(client, expr, run.started, run.ended):
                    times = [float(t) - run.started for t, _ in result["values"]]
                    values = [float(v) for _, v in result["values"]]
                    series.append((legend, result["metric"], times, values))
            out[title] = (panel, series)
    return out


# --- drawing -------------------------------------------------------------------------------------


def legend_text(legend: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced; ``__auto`` or empty gives the label set."""
    if legend in {"", "__auto"}:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    text = legend
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return text.replace(f"{TOPIC}/", "p")  # one topic here: "telemetry/3" reads as "p3"


def seconds(value: float, _pos: object = None) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.0f} s" if abs(value) >= 10 else f"{value:.1f} s"


def plain(value: float, _pos: object = None) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.0f}k" if abs(value) >= 10_000 else f"{value / 1000:.1f}k"
    return f"{value:g}"


UNITS: dict[str, tuple[str, Callable[[float, object], str]]] = {
    "s": ("", seconds),
    "cps": ("records/s", plain),
    "reqps": ("requests/s", plain),
    "ops": ("commits/s", plain),
    "short": ("", plain),
}


def colour_for(name: str, index: int) -> str:
    return SERIES_COLOURS.get(name, PALETTE[index % len(PALETTE)])


def draw_panel(
    ax: Axes,
    title: str,
    panel: Mapping[str, Any],
    series: Sequence[Any],
    run: Run,
    *,
    name_faults: bool = False,
) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    size = 10 if len(title) <= 40 else 8.5  # the long titles would run into the next panel
    ax.set_title(title, color=TEXT, fontsize=size, loc="left", fontweight="bold", pad=6)
    ax.grid(visible=True, color=GRID, linewidth=0.7)
    ax.tick_params(colors=MUTED, labelsize=8, length=0)
    duration = run.ended - run.started
    ax.set_xlim(0, duration)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0f}s"))
    for fault in run.faults:
        end = fault.end if not math.isnan(fault.end) else run.ended
        ax.axvspan(
            fault.start - run.started,
            end - run.started,
            color=FAULT_COLOURS[fault.kind],
            alpha=0.13,
            linewidth=0,
        )
        if name_faults:
            ax.text(
                fault.start - run.started + 0.6,
                0.97,
                fault.kind,
                transform=ax.get_xaxis_transform(),
                color=FAULT_COLOURS[fault.kind],
                fontsize=8,
                va="top",
            )
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    axis_label, formatter = UNITS.get(unit, ("", plain))
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    if axis_label:
        ax.set_ylabel(axis_label, color=MUTED, fontsize=8)
    drawn = sorted(
        ((legend_text(legend, labels), times, values) for legend, labels, times, values in series),
        key=lambda s: s[0],
    )
    if not drawn:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    for index, (name, times, values) in enumerate(drawn):
        key = name.split(" ")[0] if name.startswith(("consumed", "delivered")) else name
        colour = colour_for(key, index)
        if name.startswith("consumed"):
            colour = "#8ab8ff"
        ax.plot(times, values, color=colour, linewidth=1.4, label=name)
        if len(drawn) <= 2:
            ax.fill_between(times, values, color=colour, alpha=0.08, linewidth=0)
    peak = max((v for _, _, values in drawn for v in values if math.isfinite(v)), default=0.0)
    ax.set_ylim(0, peak * 1.3 if peak > 0 else 1)  # headroom for the legend, as Grafana leaves
    ax.legend(  # below the graph, as Grafana lays out its legend
        loc="upper left",
        bbox_to_anchor=(0.0, -0.09),
        fontsize=7.5,
        ncol=min(len(drawn), 5),
        frameon=False,
        labelcolor=TEXT,
        handlelength=1.2,
        columnspacing=1.0,
        borderpad=0.0,
        borderaxespad=0.0,
    )


def render(data: Mapping[str, Any], run: Run, out: Path, args: argparse.Namespace) -> None:
    fig, axes = plt.subplots(3, 4, figsize=(16, 10), dpi=100, facecolor=BACKGROUND)
    for index, (ax, title) in enumerate(zip(axes.flat, PANELS, strict=True)):
        panel, series = data[title]
        draw_panel(ax, title, panel, series, run, name_faults=index < 4)
    fig.suptitle(
        "space-pipeline: Grafana dashboard panels, rendered from a real run",
        color=TEXT,
        fontsize=14,
        x=0.01,
        ha="left",
        y=0.985,
    )
    faults = "   ".join(
        f"[{f.kind}] t+{f.start - run.started:.0f}-{f.end - run.started:.0f}s {f.label}"
        for f in run.faults
    )
    fig.text(
        0.01,
        0.925,
        f"{PARTITIONS} partitions, backlog {args.backlog} + {args.rate:g} records/s produced "
        f"({run.produced} in all); stub API {args.latency_ms:g}±{args.jitter_ms:g} ms; Prometheus "
        f"1 s scrapes, $__rate_interval={args.rate_interval}; x: seconds since the stage joined "
        f"the group.\nShaded: {faults}",
        color=MUTED,
        fontsize=8.5,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92), h_pad=1.2, w_pad=1.2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BACKGROUND)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=ROOT / "docs" / "dashboard.png", help="PNG to write")
    add("--duration", type=float, default=85.0, help="seconds the stage runs once ready")
    add("--backlog", type=int, default=1500, help="records waiting at start (%(default)s)")
    add("--rate", type=float, default=110.0, help="records/s produced during the run")
    add("--latency-ms", type=float, default=20.0, help="stub API latency (%(default)s)")
    add("--jitter-ms", type=float, default=8.0, help="± spread of that latency (%(default)s)")
    add("--burst-at", type=float, default=20.0, help="error/throttle burst starts (s)")
    add("--error-burst", type=int, default=80, help="requests answered 500 in the burst")
    add("--throttle-burst", type=int, default=8, help="then requests answered 429")
    add("--outage-at", type=float, default=45.0, help="full outage starts (s)")
    add("--outage-s", type=float, default=10.0, help="full outage lasts (s)")
    add("--rate-interval", default="5s", help="what $__rate_interval becomes (%(default)s)")
    args = parser.parse_args()

    configure_logging("WARNING")
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="render-dashboard-") as tmp:
        run, data = asyncio.run(run_pipeline(args, Path(tmp)))
    render(data, run, args.out, args)
    print(f"wrote {args.out} in {time.monotonic() - begun:.0f} s")


if __name__ == "__main__":
    main()
