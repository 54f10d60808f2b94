"""Run one contender process and measure it from outside: progress, CPU, RSS, start-up.

Progress is read where the records land: the stub's ``GET /stats`` (``StubProgress``) or the lines
a sink function writes (``FileProgress``). Times are ``time.monotonic()``, which is system-wide on
Linux, so the stub's arrival times, this process's clock and the function's lines agree.

Throughput is delivered records over the time from the first arrival to the last accepted one.
CPU is the contender's user + system time from /proc between its first delivery and the moment
all had arrived (start-up and shutdown are left out); peak RSS is its ``VmHWM``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 2**20


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory line in bytes (``VmRSS``, ``VmHWM``); 0 if unknown."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Progress:
    delivered: int  # distinct records accepted
    first_at: float | None  # arrival of the first request
    last_at: float | None  # arrival of the last accepted request
    order_violations: int = 0
    duplicates: int = 0
    max_per_partition: int = 1  # most requests of one partition in flight at once


class StubProgress:
    """What the stub API saw, over ``GET /stats`` (reset before each contender)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.AsyncClient(base_url=base_url, timeout=30)
        self.stats: dict = {}

    async def reset(self) -> None:
        (await self.client.post("/reset")).raise_for_status()

    async def poll(self) -> Progress:
        self.stats = (await self.client.get("/stats")).json()
        s = self.stats
        concurrent = max((p["max_concurrent"] for p in s["partitions"].values()), default=0)
        return Progress(
            s["unique"], s["first_request_at"], s["last_accept_at"], s["order_violations"],
            s["duplicates"], concurrent,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self.client.aclose()


class FileProgress:
    """Deliveries a sink function wrote, one ``<monotonic> <partition> <offset>`` line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read = 0
        self._last: dict[str, int] = {}
        self._seen: set[tuple[str, str]] = set()
        self._progress = Progress(0, None, None)

    async def reset(self) -> None:
        self.path.write_text("")

    async def poll(self) -> Progress:
        p = self._progress
        with self.path.open("rb") as log:
            log.seek(self._read)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        for line in complete.decode().splitlines():
            at, partition, offset = line.split()
            if (partition, offset) in self._seen:
                p.duplicates += 1
                continue
            self._seen.add((partition, offset))
            if int(offset) <= self._last.get(partition, -1):
                p.order_violations += 1
            self._last[partition] = int(offset)
            p.delivered += 1
            p.first_at = float(at) if p.first_at is None else min(p.first_at, float(at))
            p.last_at = float(at) if p.last_at is None else max(p.last_at, float(at))
        return p

    async def aclose(self) -> None:
        return None


@dataclass
class Run:
    """One contender's measured run."""

    records: int
    seconds: float
    cpu_seconds: float
    peak_rss: int
    startup_s: float  # process start to the first request the API saw
    progress: Progress
    exit_code: int | None
    others_cpu: dict[str, float] = field(default_factory=dict)  # stub, broker: same window
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (delivered, VmRSS)
    committed: int | None = None  # offsets its group committed, summed over partitions

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_seconds / self.records * 1000 if self.records else 0.0


class ContenderFailed(Exception):
    pass


async def run_contender(
    name: str,
    command: list[str],
    env: dict[str, str],
    progress: StubProgress | FileProgress,
    expected: int,
    *,
    others: dict[str, int] | None = None,
    poll_s: float = 0.05,
    rss_every_s: float | None = None,
    timeout_s: float = 600.0,
) -> Run:
    """Start ``command``, wait until ``expected`` records arrived, measure, then SIGTERM it.

    ``others`` names processes (the stub, the broker) whose CPU over the same window is noted.
    With ``rss_every_s``, VmRSS is sampled that often along with the delivered count.
    """
    await progress.reset()
    others = others or {}
    with tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False) as out:
        log_path = Path(out.name)
    with log_path.open("wb") as log:  # noqa: ASYNC230 - a moment, before the contender starts
        started = time.monotonic()
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    cpu0: float | None = None
    others0: dict[str, float] = {}
    samples: list[tuple[int, int]] = []
    next_sample = 0.0
    try:
        while True:
            p = await progress.poll()
            now = time.monotonic()
            if cpu0 is None and p.first_at is not None:
                cpu0 = proc_cpu(proc.pid)
                others0 = {k: proc_cpu(pid) for k, pid in others.items()}
            if rss_every_s is not None and now >= next_sample:
                samples.append((p.delivered, proc_status(proc.pid, "VmRSS")))
                next_sample = now + rss_every_s
            if p.delivered >= expected:
                break
            if proc.poll() is not None:
                raise ContenderFailed(f"{name} exited with {proc.returncode}: {tail(log_path)}")
            if now - started > timeout_s:
                raise ContenderFailed(f"{name}: {p.delivered}/{expected} after {timeout_s:.0f} s")
            # poll fast until the first delivery, so CPU is sampled close to it
            await asyncio.sleep(poll_s if cpu0 is not None else 0.01)
        cpu1, peak = proc_cpu(proc.pid), proc_status(proc.pid, "VmHWM")
        others1 = {k: proc_cpu(pid) for k, pid in others.items()}
        if rss_every_s is not None:
            samples.append((p.delivered, proc_status(proc.pid, "VmRSS")))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            exit_code = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = await asyncio.to_thread(proc.wait)
    assert p.first_at is not None
    assert p.last_at is not None
    assert cpu0 is not None
    log_path.unlink()  # noqa: ASYNC240 - after the measurement
    return Run(
        records=p.delivered,
        seconds=p.last_at - p.first_at,
        cpu_seconds=cpu1 - cpu0,
        peak_rss=peak,
        startup_s=p.first_at - started,
        progress=p,
        exit_code=exit_code,
        others_cpu={k: others1[k] - others0[k] for k in others},
        rss_samples=samples,
    )


def tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def rss_curve(samples: list[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """VmRSS at 10 %, 20 %, ... 100 % of the records delivered: (percent, bytes)."""
    curve = []
    for percent in range(10, 101, 10):
        mark = total * percent / 100
        at = next((rss for done, rss in samples if done >= mark), samples[-1][1])
        curve.append((percent, at))
    return curve


def second_half(samples: list[tuple[int, int]], total: int) -> tuple[int, int, int]:
    """Min, median and max VmRSS over the samples taken after half the records were delivered."""
    rss = [r for done, r in samples if done >= total / 2] or [samples[-1][1]]
    return min(rss), int(statistics.median(rss)), max(rss)


def trend(samples: list[tuple[int, int]], total: int) -> float:
    """Median VmRSS over the last quarter of the records over that of the second quarter."""

    def median(lo: float, hi: float) -> float:
        rss = [r for done, r in samples if lo * total <= done <= hi * total]
        return statistics.median(rss) if rss else samples[-1][1]

    return median(0.75, 1.0) / median(0.25, 0.5)
