"""The record as it travels: what the stage reads from Kafka, and what a user's sink receives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class KafkaRecord(Protocol):
    """What the stage reads from a record; aiokafka's ``ConsumerRecord`` fits."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record, as a user's send function receives it.

    ``timestamp`` is the record's Kafka timestamp in milliseconds since the epoch; ``value`` is
    ``None`` for a tombstone. Header values are bytes as produced (Kafka allows ``None``).
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def of(cls, record: KafkaRecord) -> Record:
        """A frozen copy of any record the consumer produced."""
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            tuple(record.headers),
        )


def idempotency_key(record: KafkaRecord) -> str:
    """The key that names a record across redeliveries: ``topic/partition/offset``."""
    return f"{record.topic}/{record.partition}/{record.offset}"
