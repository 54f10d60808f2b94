"""``space-pipeline produce --stdin``: one record per line, keyed as the line says (issue 18)."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from pipeline.dev.produce import stdin_records
from tests.plugins.processes import command

pytestmark = pytest.mark.integration


async def every_record(bootstrap: str, topic: str, partitions: int) -> list[ConsumerRecord]:
    """Every record of ``topic``, read from the start of each partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        end = sum((await consumer.end_offsets(tps)).values())
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(20):
            while len(records) < end:
                batch = await consumer.getmany(timeout_ms=500)
                records += [r for part in batch.values() for r in part]
        return records
    finally:
        await consumer.stop()


async def test_keyed_lines_land_with_their_keys_and_one_key_keeps_one_partition(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``--key-separator '\\t'``: the text before the first tab is the key, the rest the value
    (tabs and all); every record of one key is on one partition, in the order of the lines; a
    line without a tab has no key, as with kcat's ``-K``."""
    topic = f"keyed-{os.getpid()}"
    lines = [f'sat-{i % 3}\t{{"seq": {i}, "note": "a\\tb"}}' for i in range(30)]
    lines.append('{"seq": 30}')
    args = ["produce", "--bootstrap", kafka_bootstrap, "--topic", topic, "--partitions", "4"]

    result = await asyncio.to_thread(
        command, tmp_path, *args, "--stdin", "--key-separator", "\\t", stdin="\n".join(lines)
    )

    assert 0 == result.returncode, result.stderr
    assert "wrote 31 records" in result.stdout
    records = await every_record(kafka_bootstrap, topic, 4)
    assert 31 == len(records)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    values: dict[bytes | None, list[bytes]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        partitions[record.key].add(record.partition)
        values[record.key].append(record.value)
    assert {b"sat-0", b"sat-1", b"sat-2", None} == partitions.keys()
    assert all(1 == len(found) for found in partitions.values())
    assert [f'{{"seq": {i}, "note": "a\\tb"}}'.encode() for i in range(1, 30, 3)] == values[
        b"sat-1"
    ]
    assert [b'{"seq": 30}'] == values[None]


def test_the_first_separator_splits_and_a_line_without_one_has_no_key() -> None:
    """kcat's ``-K`` rules: the first separator splits; none means a null key and the whole
    line as the value; an empty key stays an empty key; empty lines are skipped."""
    lines = [b"k|v|w\n", b"no separator\n", b"|value\n", b"\n", b"key|\r\n"]

    assert [
        (b"k", b"v|w"),
        (None, b"no separator"),
        (b"", b"value"),
        (b"key", b""),
    ] == list(stdin_records(lines, b"|"))


def test_a_key_separator_without_stdin_is_refused(tmp_path: Path) -> None:
    """The samples have keys of their own: ``--key-separator`` only means something with
    ``--stdin``, and saying it alone is a usage error (exit 2)."""
    result = command(tmp_path, "produce", "--topic", "t", "--key-separator", ":")

    assert 2 == result.returncode
    assert "--key-separator" in result.stderr
