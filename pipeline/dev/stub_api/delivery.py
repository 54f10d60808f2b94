"""What a request says it delivers: its headers name the records, a batch's body holds them.

Disagreement here is a stage bug, not an API fault, so the stub answers it 400 and counts it in
``header_mismatches``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    """What a request's headers say it delivers: one record, or a batch of ``size`` records."""

    partition: str  # <topic>/<partition>
    key: str  # the Idempotency-Key
    first: int
    last: int
    size: int | None = None  # X-Batch-Size; None for a single record

    def listed(self, keys: frozenset[str]) -> str | None:
        """The listed key in the target; for a batch, any of its partition from first to last."""
        if self.size is None:
            return self.key if self.key in keys else None
        for key in keys:
            partition, _, offset = key.rpartition("/")
            if (
                partition == self.partition
                and offset.isdecimal()
                and self.first <= int(offset) <= self.last
            ):
                return key
        return None


def parse_target(headers: Mapping[str, str]) -> Target | str:
    """The target, or why the headers disagree (a stage bug, answered 400)."""
    topic = headers.get("X-Kafka-Topic")
    partition = headers.get("X-Kafka-Partition", "")
    first = headers.get("X-Kafka-Offset", "")
    key = headers.get("Idempotency-Key")
    if topic is not None and partition.isdecimal() and first.isdecimal():
        prefix = f"{topic}/{partition}"
        size = headers.get("X-Batch-Size")
        if size is not None:
            return _batch_target(headers, prefix, key, first, size)
        if key == f"{prefix}/{first}":
            offset = int(first)
            return Target(prefix, key, offset, offset)
    return _mismatch(key)


def _batch_target(
    headers: Mapping[str, str], prefix: str, key: str | None, first: str, size: str
) -> Target | str:
    last = headers.get("X-Kafka-Last-Offset", "")
    if not (size.isdecimal() and last.isdecimal()) or key != f"{prefix}/{first}-{last}":
        return _mismatch(key)
    n, lo, hi = int(size), int(first), int(last)
    if n < 1 or hi - lo + 1 < n or (n == 1 and hi != lo):
        return f"X-Batch-Size {n} cannot hold offsets {lo} to {hi}"
    return Target(prefix, key, lo, hi, n)


def _mismatch(key: str | None) -> str:
    return f"Idempotency-Key {key!r} does not match the X-Kafka-* headers"


def batch_items(content_type: str, body: bytes) -> list[Any]:
    """The record values in a batch body; ``ValueError`` if it cannot be read."""
    if content_type == "application/json":
        items = json.loads(body)
        if not isinstance(items, list):
            raise ValueError("a JSON batch must be an array of record values")
        return items
    if content_type == "application/x-ndjson":
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    raise ValueError(
        f"a batch must be application/json or application/x-ndjson, not {content_type}"
    )


def seq_violations(items: list[Any]) -> int:
    """Items whose integer ``seq`` does not exceed every earlier one in the batch."""
    violations, top = 0, None
    for item in items:
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool):
            continue
        if top is not None and seq <= top:
            violations += 1
        else:
            top = seq
    return violations
