"""The case to explain: a member SIGKILLed right after a broker restart, then a broker that stops
answering (a new stage cannot bootstrap, committed offsets cannot be read).

Each round: a durable tansu (its log in moto's S3), a topic, two ``space-pipeline run`` members in
one group delivering to the stub API; then the broker is SIGKILLed and restarted, and one member
is SIGKILLed ``--after`` seconds later (0 to 2 s: while the group re-forms). Then, with plain
aiokafka clients only (no stage code), the script asks the broker for metadata, the group's
committed offsets, and lets a fresh consumer join the group, each within a deadline; and a third
member is started to see it deliver. Every round prints what answered and how fast, and keeps the
broker's log tail when something did not.

``--stop-s3`` stops the S3 server before the broker restart (by hand, past the check of
``DurableBroker.restart``): that is the reported symptom, on demand. With the S3 server up, the
sequence alone has not reproduced it (12 rounds, SIGKILL 0-4 s after the restart).

    python bench/restart_case.py [--rounds 6] [--after 0,0.5,1,2] [--stop-s3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dev.broker import DurableBroker, create_topic, free_port, produce_numbered
from pipeline.dev.stub_api import StubConfig, StubServer

PARTITIONS = 4
DEADLINE_S = 20.0
STAGE = {
    "PIPELINE_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS": "2000",
    "PIPELINE_COMMIT_INTERVAL_MS": "200",
    "PIPELINE_METRICS_HOST": "127.0.0.1",
    "PIPELINE_LOG_LEVEL": "INFO",
}


def member(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``space-pipeline run`` with its own metrics port, logging to ``log``."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"],
            env=env | {"PIPELINE_METRICS_PORT": str(free_port())},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def timed(what: str, call: object) -> str:
    """Await ``call`` within DEADLINE_S; one line saying how it went."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE_S):
            result = await call  # type: ignore[misc]
    except TimeoutError:
        return f"{what}: NO ANSWER within {DEADLINE_S:.0f} s"
    except Exception as error:
        return f"{what}: {error!r} after {time.monotonic() - began:.1f} s"
    return f"{what}: {result} in {time.monotonic() - began:.1f} s"


async def metadata(bootstrap: str, topic: str) -> str:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # a metadata request of its own, not the bootstrap's
        return f"{len(consumer.partitions_for_topic(topic) or ())} partitions"
    finally:
        await consumer.stop()


async def committed(bootstrap: str, topic: str, group: str) -> str:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
        return f"committed {offsets}"
    finally:
        await consumer.stop()


async def join(bootstrap: str, topic: str, group: str) -> str:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        return f"joined, assigned {len(consumer.assignment())}"
    finally:
        await consumer.stop()


async def one_round(after: float, work: Path, *, stop_s3: bool = False) -> bool:
    """One broker restart with a member SIGKILLed ``after`` seconds later; True if the broker
    answered everything afterwards."""
    suffix = uuid.uuid4().hex[:6]
    topic, group = f"case-{suffix}", f"case-{suffix}"
    async with DurableBroker() as broker, StubServer(StubConfig(latency_ms=5)) as api:
        bootstrap = broker.bootstrap_servers
        await create_topic(bootstrap, topic, PARTITIONS)
        await produce_numbered(bootstrap, topic, PARTITIONS, 20_000)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")} | STAGE
        env |= {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PIPELINE_KAFKA_TOPICS": topic,
            "PIPELINE_KAFKA_GROUP_ID": group,
            "PIPELINE_SPACE_API_URL": api.url,
        }
        members = [member(env, work / f"{suffix}-{n}.log") for n in "ab"]
        try:
            await wait_for(lambda: api.stats().unique >= 1000, 120)
            if stop_s3:
                broker.kill()
                broker.s3.kill()
                broker.start()
                await broker.wait_ready()
            else:
                await broker.restart()
            await asyncio.sleep(after)
            members[0].kill()
            members[0].wait()
            at = api.stats().unique
            lines = [
                await timed("metadata", metadata(bootstrap, topic)),
                await timed("committed offsets", committed(bootstrap, topic, group)),
                await timed("a plain consumer joins the group", join(bootstrap, topic, group)),
            ]
            members.append(member(env, work / f"{suffix}-c.log"))
            began = time.monotonic()
            await wait_for(lambda: api.stats().unique >= at + 500, DEADLINE_S)
            moved = api.stats().unique - at
            lines.append(f"stages delivered {moved} more in {time.monotonic() - began:.1f} s")
            ok = not any("NO ANSWER" in line or "Error" in line for line in lines) and moved > 0
            print(f"SIGKILL {after:.1f} s after the broker restart: {'ok' if ok else 'STUCK'}")
            for line in lines:
                print(f"  {line}")
            if not ok:
                print(f"  broker log tail:\n{broker.tail()}")
            return ok
        finally:
            for proc in members:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in members:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
                if proc.poll() is None:
                    proc.kill()


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="restart-case-"))
    afters = [float(a) for a in args.after.split(",")]
    results = [
        await one_round(afters[n % len(afters)], work, stop_s3=args.stop_s3)
        for n in range(args.rounds)
    ]
    print(f"{results.count(True)}/{len(results)} rounds answered; member logs in {work}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--after", default="0,0.5,1,2", help="seconds, comma-separated")
    parser.add_argument("--stop-s3", action="store_true", help="stop the S3 server first")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    sys.exit(asyncio.run(main(parser.parse_args())))
