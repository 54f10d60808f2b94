"""``space-pipeline offsets``: where the consumer group stands, and moving it to replay.

``show`` lists, per partition, the group's committed offset, the log end, the lag, and the note
the stage keeps with a commit (a halt). ``reset`` moves the group's committed offsets of one topic
to the earliest record, the log end, an offset, or the first record at or after a time. It prints
the plan and commits only with ``--execute``, and only while the group has no members: a running
stage would overwrite the new offsets with its own at its next commit, and Kafka refuses a commit
from outside a group that has members anyway.

The tool joins no group. Its consumer is assigned partitions by hand, so its commit is the
"simple consumer" commit Kafka accepts for an empty group: aiokafka's admin client cannot alter
a group's offsets. A moved partition is committed with an empty note, which also clears a halt
note: whoever replays has decided where the partition goes on from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, OffsetAndMetadata, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    for_code,
)
from pydantic import ValidationError
from pydantic_settings import SettingsError

from pipeline.config import Settings, describe_errors
from pipeline.errors import ConfigError, GroupActiveError
from pipeline.logging import configure_logging
from pipeline.partition import halted_at, skipped_at
from pipeline.wiring import kafka_security

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
PROG = "space-pipeline offsets"

# A group in these states has no members: its offsets may be committed from outside.
IDLE_STATES = frozenset({"Empty", "Dead"})

# How long to wait for the fetches that report the log ends, before trusting ListOffsets.
END_FETCH_TIMEOUT_S = 5.0

ResetTo: TypeAlias = Literal["earliest", "latest"] | int | datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the group, as the broker describes it."""

    member_id: str
    client_id: str
    host: str

    def __str__(self) -> str:
        # Some brokers (tansu) leave client id and host empty; the member id still starts with
        # the client id the member chose.
        name = self.client_id or self.member_id
        host = self.host.lstrip("/")
        return f"{name} at {host}" if host else name


@dataclass(frozen=True, slots=True)
class GroupState:
    """The group's state and members when asked."""

    group: str
    state: str
    members: tuple[Member, ...]

    @property
    def idle(self) -> bool:
        """Whether no member can overwrite, or be surprised by, a commit from outside."""
        return self.state in IDLE_STATES

    def __str__(self) -> str:
        members = ", ".join(str(m) for m in self.members) if self.members else "no members"
        return f"group {self.group}: {self.state}, {members}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where the group stands on one partition."""

    topic: str
    partition: int
    committed: int | None
    end: int
    note: str = ""

    @property
    def lag(self) -> int | None:
        """Records after the committed offset; unknown while nothing is committed."""
        return None if self.committed is None else max(self.end - self.committed, 0)

    @property
    def remark(self) -> str:
        """The commit note in words: the stage's own notes as it reads them, any other verbatim."""
        if (skip := skipped_at(self.note)) is not None:
            return f"skipped {skip} (let past by the next owner)"
        halt = halted_at(self.note)
        return self.note if halt is None else f"halted at {halt}"


@dataclass(frozen=True, slots=True)
class Move:
    """One partition's committed offset before and after a reset."""

    topic: str
    partition: int
    old: int | None
    new: int

    @property
    def moves(self) -> bool:
        """Whether the reset changes anything here (unchanged partitions are not committed)."""
        return self.old != self.new


class GroupOffsets:
    """A group's offsets on the configured cluster, read and committed without joining it.

    Args:
        settings: Bootstrap servers, group, client id, isolation level and security, as the
            stage uses them.
    """

    def __init__(self, settings: Settings) -> None:
        self.group = settings.kafka_group_id
        connection: dict[str, Any] = {
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "client_id": f"{settings.kafka_client_id}-offsets",
            **kafka_security(settings).arguments(),
        }
        self._admin = AIOKafkaAdminClient(**connection)
        self._consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level=settings.kafka_isolation_level,
            **connection,
        )
        self._read_committed = settings.kafka_isolation_level == "read_committed"
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> GroupOffsets:
        async with contextlib.AsyncExitStack() as stack:
            await self._admin.start()
            stack.push_async_callback(self._admin.close)
            await self._consumer.start()
            stack.push_async_callback(self._consumer.stop)
            self._exit = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exit.aclose()

    async def state(self) -> GroupState:
        """The group's state and members (``Empty`` for a group the broker never saw)."""
        (response,) = await self._admin.describe_consumer_groups([self.group])
        (described,) = response.to_object()["groups"]
        if described["error_code"]:
            raise for_code(described["error_code"])(f"describing group {self.group}")
        members = tuple(
            Member(m["member_id"], m["client_id"], m["client_host"]) for m in described["members"]
        )
        return GroupState(self.group, described["state"], members)

    async def partitions(self, topic: str) -> list[int]:
        """The partitions of ``topic``; a topic the cluster does not have is bad input."""
        if topic not in await self._consumer.topics():
            raise ConfigError([f"topic {topic!r}: no such topic"])
        return sorted(self._consumer.partitions_for_topic(topic) or ())

    async def positions(self, topics: Sequence[str]) -> list[Position]:
        """The committed offset, log end and note of every partition of ``topics``."""
        tps = [TopicPartition(t, p) for t in topics for p in await self.partitions(t)]
        ends = await self._ends(tps)
        committed = await self._committed(tps)
        rows = []
        for tp in tps:
            offset, note = committed.get(tp, (None, ""))
            rows.append(Position(tp.topic, tp.partition, offset, ends[tp], note))
        return rows

    async def plan(self, topic: str, to: ResetTo, partitions: Collection[int] = ()) -> list[Move]:
        """Where a reset would move each chosen partition of ``topic`` (all when none chosen).

        An offset outside the log is moved to its nearest end, as ``kafka-consumer-groups``
        does; a time after the last record means the log end.
        """
        available = await self.partitions(topic)
        if missing := sorted(set(partitions) - set(available)):
            raise ConfigError(
                [
                    f"--partitions: {topic} has no partition {', '.join(map(str, missing))}"
                    f" (it has {len(available)}: 0 to {len(available) - 1})"
                ]
            )
        tps = [TopicPartition(topic, p) for p in sorted(partitions or available)]
        committed = await self._committed(tps)
        targets = await self._targets(tps, to)
        return [
            Move(tp.topic, tp.partition, committed.get(tp, (None, ""))[0], targets[tp])
            for tp in tps
        ]

    async def commit(self, moves: Sequence[Move]) -> list[Move]:
        """Commit the moves that change something, if the group has no members; returns them.

        Raises:
            GroupActiveError: The group has members (nothing is committed), or gained some
                before the commit arrived (the broker refused it).
        """
        state = await self.state()
        if not state.idle:
            raise GroupActiveError(state.group, state.state, tuple(map(str, state.members)))
        moving = [m for m in moves if m.moves]
        if not moving:
            return []
        offsets = {
            TopicPartition(m.topic, m.partition): OffsetAndMetadata(m.new, "") for m in moving
        }
        self._consumer.assign(list(offsets))
        try:
            await self._consumer.commit(offsets)
        except (
            CommitFailedError,
            UnknownMemberIdError,
            IllegalGenerationError,
            RebalanceInProgressError,
        ) as error:
            state = await self.state()
            members = tuple(map(str, state.members))
            raise GroupActiveError(state.group, state.state, members) from error
        return moving

    async def _committed(
        self, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, str]]:
        found = await self._admin.list_consumer_group_offsets(self.group, partitions=list(tps))
        return {
            tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0
        }

    async def _ends(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The log end of each partition (the last stable offset under ``read_committed``).

        Kafka's answer to ListOffsets would do, but tansu's is wrong once a batch holds more
        than one record; both report the right end with every fetch. So each partition is
        fetched once from where ListOffsets says the log ends: on Kafka that returns no records,
        only the end.
        """
        listed: dict[TopicPartition, int] = await self._consumer.end_offsets(tps)
        consumer = self._consumer
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, listed[tp])
        fetched: dict[TopicPartition, int] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(END_FETCH_TIMEOUT_S):
                while len(fetched) < len(tps):
                    await consumer.getmany(*tps, timeout_ms=100, max_records=1)
                    fetched |= {tp: end for tp in tps if (end := self._fetched_end(tp)) is not None}
        return listed | fetched

    def _fetched_end(self, tp: TopicPartition) -> int | None:
        stable = self._consumer.last_stable_offset(tp) if self._read_committed else None
        end: int | None = (
            stable if stable is not None and stable >= 0 else self._consumer.highwater(tp)
        )
        return end

    async def _targets(
        self, tps: Sequence[TopicPartition], to: ResetTo
    ) -> dict[TopicPartition, int]:
        starts = await self._consumer.beginning_offsets(tps)
        ends = await self._ends(tps)
        if isinstance(to, datetime):
            stamp = (to - _EPOCH) // timedelta(milliseconds=1)
            found = await self._consumer.offsets_for_times(dict.fromkeys(tps, stamp))
            # No record at or after the time: Kafka answers None, tansu offset 0 with
            # timestamp -1. Both mean the log end.
            return {
                tp: ends[tp] if hit is None or hit.timestamp < 0 else hit.offset
                for tp, hit in ((tp, found.get(tp)) for tp in tps)
            }
        if to == "earliest":
            return {tp: starts[tp] for tp in tps}
        if to == "latest":
            return {tp: ends[tp] for tp in tps}
        return {tp: min(max(to, starts[tp]), ends[tp]) for tp in tps}


# The command


class _KafkaSettings(Settings):
    """The stage's settings without the need for a sink.

    This tool only talks to Kafka: the pod's environment serves as it is, and a laptop needs no
    more than the flags.
    """

    def _sink_conflicts(self) -> Iterator[str]:
        return iter(())


_FLAGS = {
    "kafka_bootstrap_servers": "--bootstrap",
    "kafka_group_id": "--group",
    "kafka_topics": "--topic",
}


def load_settings(args: argparse.Namespace) -> Settings:
    """The ``PIPELINE_KAFKA_*`` settings (environment, then ``.env``), with the flags winning."""
    given = {"kafka_bootstrap_servers": args.bootstrap, "kafka_group_id": args.group}
    if args.topic is not None:
        given["kafka_topics"] = (args.topic,)
    env_file = Path(".env") if Path(".env").is_file() else None
    try:
        return _KafkaSettings(
            _env_file=env_file,  # type: ignore[call-arg]
            **{name: value for name, value in given.items() if value is not None},
        )
    except ValidationError as error:
        problems = describe_errors(error)
    except SettingsError as error:
        problems = [f"{error}"]
    hints = {f"PIPELINE_{name.upper()}:": flag for name, flag in _FLAGS.items()}
    raise ConfigError(
        [
            next(
                (f"{line} (or {flag})" for key, flag in hints.items() if line.startswith(key)), line
            )
            for line in problems
        ]
    )


def parse_datetime(text: str) -> datetime:
    """An ISO-8601 time with a zone; a naive one is refused rather than guessed.

    The pod runs in UTC and the operator's laptop may not: a guessed zone replays the wrong
    hours, so the operator writes ``Z`` or an offset.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        msg = f"--to-datetime: not an ISO-8601 time: {text!r} (e.g. 2026-12-05T03:00:00Z)"
        raise ConfigError([msg]) from None
    if when.tzinfo is None:
        msg = f"--to-datetime: {text!r} has no time zone: add Z for UTC, or an offset (+01:00)"
        raise ConfigError([msg])
    return when


def parse_partitions(text: str | None) -> tuple[int, ...]:
    """``0,3`` as partition numbers; ``None`` (all partitions) as nothing chosen."""
    if text is None:
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdecimal() for p in parts):
        msg = f"--partitions: expected partition numbers such as 0,3 (got {text!r})"
        raise ConfigError([msg])
    return tuple(sorted({int(p) for p in parts}))


def reset_to(args: argparse.Namespace) -> ResetTo:
    """The one target the reset flags name."""
    if args.to_datetime is not None:
        return parse_datetime(args.to_datetime)
    if args.to_offset is not None:
        if not args.to_offset.isdecimal():
            msg = f"--to-offset: expected an offset, 0 or more (got {args.to_offset!r})"
            raise ConfigError([msg])
        return int(args.to_offset)
    latest: ResetTo = "latest" if args.to_latest else "earliest"
    return latest


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain columns, left-aligned, two spaces apart; nothing to install, easy to ``grep``."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        for row in (header, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines)


def show_text(state: GroupState, positions: Sequence[Position]) -> str:
    """``offsets show`` for people."""
    rows = [
        (p.topic, str(p.partition), _text(p.committed), str(p.end), _text(p.lag), p.remark)
        for p in positions
    ]
    header = ("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "NOTE")
    return f"{state}\n{table(header, rows)}"


def plan_text(state: GroupState, moves: Sequence[Move], *, executed: bool) -> str:
    """``offsets reset`` for people: the plan, and what became of it."""
    rows = [
        (m.topic, str(m.partition), _text(m.old), str(m.new), "" if m.moves else "unchanged")
        for m in moves
    ]
    lines = [str(state), table(("TOPIC", "PARTITION", "OLD", "NEW", ""), rows)]
    changed = sum(m.moves for m in moves)
    if executed:
        lines.append(f"committed {changed} offset(s) for group {state.group}")
    else:
        lines.append("dry run: nothing committed; add --execute to commit the NEW offsets")
        if not state.idle:
            lines.append(f"--execute is refused while the group is {state.state}: stop it first")
    return "\n".join(lines)


def _json(state: GroupState, key: str, items: Sequence[Position | Move], **extra: Any) -> str:  # noqa: ANN401
    rows = []
    for item in items:
        row = asdict(item)
        if isinstance(item, Position):
            row |= {"lag": item.lag, "halted_at": halted_at(item.note)}
        else:
            row["moves"] = item.moves
        rows.append(row)
    document = {
        "group": state.group,
        "state": state.state,
        "members": [str(m) for m in state.members],
        **extra,
        key: rows,
    }
    return json.dumps(document, indent=2)


async def _show(settings: Settings, args: argparse.Namespace) -> None:
    async with GroupOffsets(settings) as offsets:
        state = await offsets.state()
        positions = await offsets.positions(settings.kafka_topics)
    print(_json(state, "partitions", positions) if args.json else show_text(state, positions))


async def _reset(settings: Settings, args: argparse.Namespace) -> None:
    to = reset_to(args)
    partitions = parse_partitions(args.partitions)
    async with GroupOffsets(settings) as offsets:
        moves = await offsets.plan(args.topic, to, partitions)
        if args.execute:
            await offsets.commit(moves)
        state = await offsets.state()
    if args.json:
        print(_json(state, "partitions", moves, executed=args.execute))
    else:
        print(plan_text(state, moves, executed=args.execute))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline offsets show|reset`` and their options."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", help="per partition: committed offset, log end, lag, and the stage's notes"
    )
    show.add_argument("--topic", help="one topic (default: PIPELINE_KAFKA_TOPICS)")
    show.set_defaults(run=_show)
    reset = actions.add_parser(
        "reset", help="move the group's offsets of one topic; a dry run unless --execute"
    )
    reset.add_argument("--topic", required=True, help="the topic whose offsets move")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the first record still kept")
    to.add_argument("--to-latest", action="store_true", help="the log end: skip everything")
    to.add_argument("--to-offset", metavar="N", help="offset N (clamped to the log)")
    to.add_argument(
        "--to-datetime",
        metavar="ISO-8601",
        help="the first record whose timestamp is at or after this time, which must name its"
        " zone (2026-12-05T03:00:00Z); after the last record means the log end",
    )
    reset.add_argument("--partitions", metavar="0,3", help="only these partitions (default: all)")
    reset.add_argument(
        "--execute",
        action="store_true",
        help="commit the plan (refused while the group has members)",
    )
    reset.set_defaults(run=_reset)
    for action in (show, reset):
        action.add_argument(
            "--bootstrap",
            help="Kafka bootstrap servers (default: PIPELINE_KAFKA_BOOTSTRAP_SERVERS)",
        )
        action.add_argument("--group", help="the consumer group (default: PIPELINE_KAFKA_GROUP_ID)")
        action.add_argument("--json", action="store_true", help="JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    """Run ``offsets show`` or ``offsets reset``; returns the exit code.

    0 when done, 1 when the group has members (reset refused) or Kafka failed, 2 on bad input;
    every failure is one line on standard error.
    """
    # aiokafka logs its own view of a failure; the one line below says what it means here.
    configure_logging("CRITICAL", "console", stream=sys.stderr)
    settings: Settings | None = None
    try:
        settings = load_settings(args)
        asyncio.run(args.run(settings, args))
    except ConfigError as error:
        for problem in error.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GroupActiveError as error:
        print(f"{PROG}: refused, nothing committed: {error}; stop them first", file=sys.stderr)
        return EXIT_REFUSED
    except KafkaConnectionError:
        where = settings.kafka_bootstrap_servers if settings is not None else "the brokers"
        print(
            f"{PROG}: no Kafka broker answers at {where}: check --bootstrap"
            " (or PIPELINE_KAFKA_BOOTSTRAP_SERVERS)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    except KafkaError as error:
        print(f"{PROG}: Kafka: {error!r}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
