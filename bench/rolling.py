"""Rebalances per rolling restart, with and without static membership (KIP-345).

A rolling restart of a Deployment replaces each pod under a new name; a StatefulSet's pod comes
back under its own name, which the chart makes its ``PIPELINE_KAFKA_GROUP_INSTANCE_ID``. This
measures what that buys on the embedded broker (tansu): three ``space-pipeline run`` members share
a group reading a 6-partition topic while records arrive, then each in turn gets SIGTERM and is
started again at once with the same settings, as a StatefulSet's rolling update does; the next
restart waits until the member is ready again and the group has been quiet for a few seconds.

A rebalance is counted from the members' own log lines: every ``stage.partitions_assigned`` a
member logs after the initial assignment settled is one generation it took part in, and a
rebalance is a generation; the count reported is the largest number any member that stayed up
saw (each of them sees every rebalance of the group), next to every member's own count and the
partitions each restarted member got back. Run it twice to compare:

    python bench/rolling.py              # both modes, one after the other
    python bench/rolling.py --mode static
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dev.broker import EmbeddedBroker, create_topic, free_port, produce_numbered
from pipeline.dev.stub_api import StubConfig, StubServer

PARTITIONS = 6
MEMBERS = 3
QUIET_S = 4.0  # the group must be this long without an assignment before the next restart
IDLE_S = 20.0  # watched before the roll: a group that rebalances with nobody restarting
SESSION_TIMEOUT_MS = 6_000  # tansu holds a JoinGroup about half of it; a restart takes ~1.5 s


@dataclass
class Member:
    """One ``space-pipeline run`` process, restarted in place with the same environment."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.env['PIPELINE_METRICS_PORT']}/readyz"
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    def assignments(self) -> list[tuple[float, list[str]]]:
        """Every assignment this member logged: when, and which partitions."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"stage.partitions_assigned"' in line:
                event = json.loads(line)
                found.append((time.time(), sorted(event["partitions"])))
        return found


@dataclass
class Result:
    mode: str
    rebalances: int  # over the whole roll
    idle_rebalances: int  # in IDLE_S before it, nobody restarting
    per_member: dict[str, int] = field(default_factory=dict)
    kept: dict[str, bool] = field(default_factory=dict)
    took_s: float = 0.0


async def until(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def assigned_count(member: Member) -> int:
    return len(member.assignments())


async def quiet(members: list[Member]) -> None:
    """Wait until no member logged an assignment for ``QUIET_S`` seconds."""
    counts = [assigned_count(m) for m in members]
    still_since = time.monotonic()
    while time.monotonic() - still_since < QUIET_S:
        await asyncio.sleep(0.5)
        now = [assigned_count(m) for m in members]
        if now != counts:
            counts, still_since = now, time.monotonic()


async def roll(mode: str, bootstrap: str, api_url: str, log_dir: Path) -> Result:
    topic, group = f"roll-{uuid.uuid4().hex[:6]}", f"roll-{mode}-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    await produce_numbered(bootstrap, topic, PARTITIONS, 600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    members = []
    for i in range(MEMBERS):
        env = base | {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PIPELINE_KAFKA_TOPICS": topic,
            "PIPELINE_KAFKA_GROUP_ID": group,
            "PIPELINE_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "PIPELINE_SPACE_API_URL": api_url,
            "PIPELINE_METRICS_HOST": "127.0.0.1",
            "PIPELINE_METRICS_PORT": str(free_port()),
            "PIPELINE_SHUTDOWN_TIMEOUT_S": "10",
            "PIPELINE_LOG_FORMAT": "json",
            "PIPELINE_PROGRESS_INTERVAL_S": "0",
        }
        if mode == "static":
            env["PIPELINE_KAFKA_GROUP_INSTANCE_ID"] = f"space-pipeline-{i}"
        members.append(Member(f"member-{i}", env, log_dir / f"{mode}-{i}.log"))
    try:
        for member in members:
            member.start()
        for member in members:
            await until(member.ready, 60, f"{member.name} ready")
        await quiet(members)
        idle_from = assigned_count(members[0])
        await asyncio.sleep(IDLE_S)
        idle_rebalances = assigned_count(members[0]) - idle_from
        before = {m.name: assigned_count(m) for m in members}
        held = {m.name: m.assignments()[-1][1] for m in members}
        started = time.monotonic()
        rebalances = 0
        for member in members:
            counts = {m.name: assigned_count(m) for m in members}
            code = member.stop()
            if code != 0:
                raise SystemExit(f"{member.name} exited {code} on SIGTERM")
            member.start()
            await until(member.ready, 60, f"{member.name} ready again")
            await quiet(members)
            # Every member that stayed up took part in each rebalance of this restart.
            rebalances += max(
                assigned_count(o) - counts[o.name] for o in members if o is not member
            )
        per_member = {m.name: assigned_count(m) - before[m.name] for m in members}
        kept = {m.name: m.assignments()[-1][1] == held[m.name] for m in members}
        took = time.monotonic() - started
        return Result(mode, rebalances, idle_rebalances, per_member, kept, took)
    finally:
        for member in members:
            if member.process is not None and member.process.poll() is None:
                member.stop()
            member.kill()


async def main(args: argparse.Namespace) -> None:
    modes = ["dynamic", "static"] if args.mode == "both" else [args.mode]
    log_dir = Path(tempfile.mkdtemp(prefix="rolling-"))
    async with EmbeddedBroker() as broker, StubServer(StubConfig(latency_ms=2.0)) as api:
        results = [await roll(mode, broker.bootstrap_servers, api.url, log_dir) for mode in modes]
    print(f"rolling restart of {MEMBERS} members, {PARTITIONS} partitions, tansu (logs: {log_dir})")
    for r in results:
        print(
            f"  {r.mode:8} rebalances over the roll: {r.rebalances}"
            f" (and {r.idle_rebalances} in {IDLE_S:g}s before it, nobody restarting);"
            f" assignments per member {r.per_member}; same partitions after: {r.kept};"
            f" roll took {r.took_s:.1f}s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["both", "static", "dynamic"], default="both")
    asyncio.run(main(parser.parse_args()))
