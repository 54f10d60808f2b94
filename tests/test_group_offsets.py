"""``space-pipeline offsets``: where the group stands, and a replay from a point in time.

Against the real broker, through the command as an operator runs it in the pod.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, OffsetAndMetadata, TopicPartition

from pipeline.dev.broker import free_port
from pipeline.group_offsets import GroupState, Position, show_text
from pipeline.partition import HALT_NOTE
from tests.plugins.broker import Topic
from tests.plugins.environment import QUICK_JOIN, clean_env
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually

PROG = "space-pipeline offsets"
CEST = timezone(timedelta(hours=2))


async def offsets(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run ``space-pipeline offsets ARGS`` with only the given ``PIPELINE_*`` settings, to its
    exit, without blocking the loop (a consumer of the test may have to heartbeat meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline",
        "offsets",
        *args,
        cwd=cwd,
        env=clean_env() | env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def flags(topic: Topic) -> list[str]:
    """Point the tool at ``topic``'s broker and group by flags."""
    return ["--bootstrap", topic.bootstrap, "--group", topic.group]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int, zone: timezone = UTC) -> str:
    """``ms`` as an ISO-8601 time in ``zone``, to the millisecond."""
    return datetime.fromtimestamp(ms / 1000, zone).isoformat(timespec="milliseconds")


async def commit(topic: Topic, offsets_: dict[int, tuple[int, str]]) -> None:
    """Commit offsets (with notes) for ``topic``'s group from outside it, as a stopped stage left
    them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=topic.bootstrap, group_id=topic.group)
    await consumer.start()
    try:
        tps = {TopicPartition(topic.name, p): OffsetAndMetadata(*c) for p, c in offsets_.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def notes_survive(topic: Topic) -> bool:
    """Whether the broker keeps the note committed with an offset (tansu drops it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=topic.bootstrap, group_id=topic.group)
    await consumer.start()
    try:
        found = await consumer._coordinator.fetch_committed_offsets([TopicPartition(topic.name, 0)])
    finally:
        await consumer.stop()
    return any(meta.metadata for meta in found.values())


# Replay


async def test_a_replay_by_datetime_redelivers_exactly_the_records_from_that_time_on(
    new_topic, stub, tmp_path
):
    """Records written before t1 and from t1 on; the group reset to t1 commits, per partition,
    the first offset at or after t1, and the stage then delivers those records and no earlier.

    Timestamps are set by the producer and close to the wall clock: Kafka looks records up by
    their own timestamp, tansu by when it appended them, and both agree here. The time is given
    in another zone than UTC: it is the instant that counts.
    """
    topic = await new_topic(2)
    t0 = now_ms()
    await topic.send(
        *({"value": b"before", "partition": i % 2, "timestamp_ms": t0} for i in range(6))
    )
    await asyncio.sleep(1.2)
    t1 = now_ms()
    await asyncio.sleep(0.2)
    await topic.send(
        *({"value": b"after", "partition": i % 2, "timestamp_ms": t1 + 100} for i in range(4))
    )

    code, out, err = await offsets(
        tmp_path,
        "reset",
        *flags(topic),
        "--topic",
        topic.name,
        "--to-datetime",
        iso(t1, CEST),
        "--execute",
    )

    assert 0 == code, err
    assert {0: 3, 1: 3} == await topic.committed()
    assert f"committed 2 offset(s) for group {topic.group}" in out
    async with running_stage(topic.settings(stub.url)):
        await eventually(lambda: stub.stats().unique == 4, what="the 4 records from t1 on")
        await asyncio.sleep(0.5)  # anything earlier would arrive meanwhile
    parts = stub.stats(offsets=True).partitions
    assert {(3, 4)} == {parts[f"{topic.name}/{p}"].offsets for p in (0, 1)}
    assert 4 == stub.stats().unique


async def test_a_datetime_after_the_last_record_means_the_log_end(new_topic, tmp_path):
    """Nothing at or after the time: the group moves to the end, to take only new records."""
    topic = await new_topic(2)
    await topic.produce(5)

    code, out, err = await offsets(
        tmp_path,
        "reset",
        *flags(topic),
        "--topic",
        topic.name,
        "--to-datetime",
        "2999-01-01T00:00:00+00:00",
        "--json",
    )

    assert 0 == code, err
    plan = json.loads(out)["partitions"]
    assert [(0, None, 3), (1, None, 2)] == [(m["partition"], m["old"], m["new"]) for m in plan]


async def test_a_dry_run_prints_the_plan_and_commits_nothing(new_topic, tmp_path):
    """Without ``--execute``: old and new offset per chosen partition, and the group untouched."""
    topic = await new_topic(4)
    await topic.produce(20)
    await commit(topic, {0: (1, ""), 3: (2, "")})

    code, out, err = await offsets(
        tmp_path,
        "reset",
        *flags(topic),
        "--topic",
        topic.name,
        "--to-latest",
        "--partitions",
        "0,3",
    )

    assert 0 == code, err
    rows = [line.split() for line in out.splitlines()[1:4]]
    assert [
        ["TOPIC", "PARTITION", "OLD", "NEW"],
        [topic.name, "0", "1", "5"],
        [topic.name, "3", "2", "5"],
    ] == rows
    assert "dry run: nothing committed" in out
    assert {0: 1, 1: None, 2: None, 3: 2} == await topic.committed()


async def test_an_offset_outside_the_log_is_moved_to_its_nearest_end(new_topic, tmp_path):
    """``--to-offset 99`` on a partition of 3 records commits 3, like ``kafka-consumer-groups``."""
    topic = await new_topic(1)
    await topic.produce(3)

    code, _, err = await offsets(
        tmp_path, "reset", *flags(topic), "--topic", topic.name, "--to-offset", "99", "--execute"
    )

    assert 0 == code, err
    assert {0: 3} == await topic.committed()


# Refusals


async def test_a_reset_is_refused_naming_the_member_while_the_group_is_active(new_topic, tmp_path):
    """A running consumer in the group: exit 1, one line naming it, and nothing committed."""
    topic = await new_topic(2)
    await topic.produce(10)
    member = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=topic.bootstrap,
        group_id=topic.group,
        client_id="busy-member",
        enable_auto_commit=False,
        session_timeout_ms=QUICK_JOIN["kafka_session_timeout_ms"],
        heartbeat_interval_ms=QUICK_JOIN["kafka_heartbeat_interval_ms"],
    )
    await member.start()
    try:
        await eventually(lambda: bool(member.assignment()), what="the member's assignment")
        await member.commit({TopicPartition(topic.name, 0): OffsetAndMetadata(4, "")})

        code, out, err = await offsets(
            tmp_path, "reset", *flags(topic), "--topic", topic.name, "--to-earliest", "--execute"
        )
    finally:
        await member.stop()

    assert 1 == code
    assert "" == out
    (line,) = err.splitlines()
    assert line.startswith(f"{PROG}: refused, nothing committed: group {topic.group} is ")
    assert "busy-member" in line
    assert {0: 4, 1: None} == await topic.committed()


async def test_a_dry_run_says_an_execute_would_be_refused_while_the_group_is_active(
    new_topic, tmp_path
):
    """The plan is still shown: an operator prepares the replay before stopping the stage."""
    topic = await new_topic(1)
    await topic.produce(2)
    member = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=topic.bootstrap,
        group_id=topic.group,
        client_id="busy-member",
        session_timeout_ms=QUICK_JOIN["kafka_session_timeout_ms"],
        heartbeat_interval_ms=QUICK_JOIN["kafka_heartbeat_interval_ms"],
    )
    await member.start()
    try:
        await eventually(lambda: bool(member.assignment()), what="the member's assignment")
        code, out, err = await offsets(
            tmp_path, "reset", *flags(topic), "--topic", topic.name, "--to-earliest"
        )
    finally:
        await member.stop()

    assert 0 == code, err
    assert "busy-member" in out.splitlines()[0]
    assert "--execute is refused while the group is" in out


# Show


async def test_show_prints_committed_offset_log_end_and_lag_per_partition(new_topic, tmp_path):
    """A table for people, the same in JSON for machines; no commit yet shows as ``-``."""
    topic = await new_topic(2)
    await topic.produce(10)
    await commit(topic, {0: (2, "")})

    code, out, err = await offsets(tmp_path, "show", *flags(topic), "--topic", topic.name)
    json_code, json_out, _ = await offsets(
        tmp_path, "show", *flags(topic), "--topic", topic.name, "--json"
    )

    assert 0 == code, err
    assert f"group {topic.group}: Empty, no members" == out.splitlines()[0]
    assert [
        ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "NOTE"],
        [topic.name, "0", "2", "5", "3"],
        [topic.name, "1", "-", "5", "-"],
    ] == [line.split() for line in out.splitlines()[1:]]
    assert 0 == json_code
    document = json.loads(json_out)
    assert (topic.group, "Empty", []) == (
        document["group"],
        document["state"],
        document["members"],
    )
    assert [
        {
            "topic": topic.name,
            "partition": 0,
            "committed": 2,
            "end": 5,
            "note": "",
            "lag": 3,
            "halted_at": None,
        },
        {
            "topic": topic.name,
            "partition": 1,
            "committed": None,
            "end": 5,
            "note": "",
            "lag": None,
            "halted_at": None,
        },
    ] == document["partitions"]


async def test_show_reads_the_stages_halt_note_from_the_broker(new_topic, tmp_path):
    """The note the stage commits with a halted partition shows as ``halted at N``."""
    topic = await new_topic(1)
    await topic.produce(6)
    await commit(topic, {0: (4, f"{HALT_NOTE}4")})
    if not await notes_survive(topic):
        pytest.skip("this broker (tansu) keeps no note with a committed offset")

    code, out, err = await offsets(tmp_path, "show", *flags(topic), "--topic", topic.name)

    assert 0 == code, err
    assert out.splitlines()[-1].split() == [topic.name, "0", "4", "6", "2", "halted", "at", "4"]


def test_show_reads_a_halt_note_with_the_stages_own_parser():
    """The stage's note, whatever its wording, reads as ``halted at N``; other notes verbatim."""
    state = GroupState("g", "Empty", ())
    rows = [Position("t", 0, 4, 6, f"{HALT_NOTE}4"), Position("t", 1, 1, 1, "someone's note")]

    lines = show_text(state, rows).splitlines()

    assert lines[2].endswith("halted at 4")
    assert lines[3].endswith("someone's note")


async def test_the_pods_settings_serve_and_flags_win_over_them(new_topic, tmp_path):
    """In the pod the stage's environment is enough; ``--group`` still names another group."""
    topic = await new_topic(1)
    await topic.produce(3)
    await commit(topic, {0: (1, "")})
    env = topic.env("http://127.0.0.1:1/items")

    code, out, err = await offsets(tmp_path, "show", **env)
    other_code, other_out, _ = await offsets(tmp_path, "show", "--group", "another", **env)

    assert 0 == code, err
    assert [topic.name, "0", "1", "3", "2"] == out.splitlines()[-1].split()
    assert 0 == other_code
    assert out.splitlines()[0].startswith(f"group {topic.group}:")
    assert other_out.splitlines()[0].startswith("group another:")
    assert [topic.name, "0", "-", "3", "-"] == other_out.splitlines()[-1].split()


# Bad input: one line, exit 2


async def test_an_unknown_topic_is_one_line_and_exit_2(kafka_bootstrap, tmp_path):
    code, out, err = await offsets(
        tmp_path,
        "reset",
        "--bootstrap",
        kafka_bootstrap,
        "--group",
        "g",
        "--topic",
        "no-such-topic",
        "--to-earliest",
    )

    assert (2, "") == (code, out)
    assert [f"{PROG}: topic 'no-such-topic': no such topic"] == err.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--to-datetime", "yesterday"],
            "--to-datetime: not an ISO-8601 time: 'yesterday' (e.g. 2026-12-05T03:00:00Z)",
        ),
        (
            ["--to-datetime", "2026-12-05T03:00:00"],
            "--to-datetime: '2026-12-05T03:00:00' has no time zone: add Z for UTC,"
            " or an offset (+01:00)",
        ),
        (["--to-offset", "-3"], "--to-offset: expected an offset, 0 or more (got '-3')"),
        (
            ["--to-earliest", "--partitions", "0,x"],
            "--partitions: expected partition numbers such as 0,3 (got '0,x')",
        ),
    ],
)
async def test_bad_input_is_one_line_and_exit_2_before_kafka_is_asked(args, message, tmp_path):
    """Nobody listens at the bootstrap address: these are refused without trying to."""
    code, out, err = await offsets(
        tmp_path, "reset", "--bootstrap", f"127.0.0.1:{free_port()}", "--topic", "t", *args
    )

    assert (2, "") == (code, out)
    assert [f"{PROG}: {message}"] == err.splitlines()


async def test_a_partition_the_topic_lacks_is_one_line_and_exit_2(new_topic, tmp_path):
    topic = await new_topic(2)

    code, _, err = await offsets(
        tmp_path,
        "reset",
        *flags(topic),
        "--topic",
        topic.name,
        "--to-earliest",
        "--partitions",
        "1,7",
    )

    assert 2 == code
    assert [f"{PROG}: --partitions: {topic.name} has no partition 7 (it has 2: 0 to 1)"] == (
        err.splitlines()
    )


async def test_a_missing_bootstrap_names_the_variable_and_the_flag(tmp_path):
    code, _, err = await offsets(tmp_path, "show", "--topic", "t")

    assert 2 == code
    assert [
        f"{PROG}: PIPELINE_KAFKA_BOOTSTRAP_SERVERS: required setting is not set (or --bootstrap)"
    ] == err.splitlines()
