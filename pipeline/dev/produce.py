"""``space-pipeline produce``: put records on a topic to try the stage with.

Sample records (numbered JSON, keyed, spread over the partitions) or one record per line of
standard input, so ``cat events.ndjson | space-pipeline produce --topic t`` just works; with
``--key-separator`` a line is ``KEY<SEP>VALUE``, so per-key order can be tried with one's own
data. The topic is created first when it does not exist yet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline.cli import at_least
from pipeline.dev.broker import create_topic
from pipeline.logging import configure_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline produce`` options."""
    add = parser.add_argument
    add("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (%(default)s)")
    add("--topic", required=True, help="the topic to write to (created if missing)")
    add("--partitions", type=at_least(1), default=4, help="partitions of a new topic (%(default)s)")
    add("--count", type=at_least(0), default=100, help="sample records to write (%(default)s)")
    add(
        "--stdin",
        action="store_true",
        help="write one record per line of standard input instead of samples",
    )
    add("--avro", metavar="SCHEMA.avsc", help="encode each JSON value as Avro with this schema")
    add("--registry", default="http://127.0.0.1:8081", help="for --avro (%(default)s)")
    add("--subject", help="for --avro: the subject to register under (TOPIC-value)")
    add(
        "--key-separator",
        type=separator,
        metavar="SEP",
        help="with --stdin: KEY<SEP>VALUE lines, split at the first SEP ('\\t' for a tab); a"
        " line without SEP has no key (as kcat's -K)",
    )


def separator(text: str) -> bytes:
    """The key separator as bytes, backslash escapes read (a backslash-t is a tab, as in kcat)."""
    sep = text.encode().decode("unicode_escape").encode()
    if not sep:
        raise argparse.ArgumentTypeError("must not be empty")
    return sep


def sample_records(count: int) -> Iterator[tuple[bytes, bytes]]:
    """Numbered JSON values with a key each; the stub API checks their order by ``seq``."""
    for i in range(count):
        yield b"item-%d" % i, b'{"seq": %d, "payload": "sample"}' % i


def stdin_records(
    lines: Iterable[bytes], key_separator: bytes | None = None
) -> Iterator[tuple[bytes | None, bytes]]:
    """One record per non-empty line, without its line break.

    With ``key_separator`` the text before its first occurrence is the key and the rest the
    value, which may hold the separator again; a line without it has no key (kcat's ``-K``
    does the same). Without a separator no record has a key.
    """
    for line in lines:
        text = line.rstrip(b"\r\n")
        if not text:
            continue
        if key_separator is not None and key_separator in text:
            key, _, value = text.partition(key_separator)
            yield key, value
        else:
            yield None, text


async def produce(args: argparse.Namespace) -> int:
    """Create the topic if needed and write the records; returns how many were written."""
    # An existing topic is kept as it is: the broker answers with an error code, not an exception.
    await create_topic(args.bootstrap, args.topic, args.partitions)
    records = (
        stdin_records(sys.stdin.buffer, args.key_separator)
        if args.stdin
        else sample_records(args.count)
    )
    if args.avro:
        schema = Path(args.avro).read_text(encoding="utf-8")  # noqa: ASYNC240 - once, at start
        records = await _as_avro(args, schema, records)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    await producer.start()
    written = 0
    try:
        for key, value in records:
            await producer.send(args.topic, value, key=key)
            written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


async def _as_avro(
    args: argparse.Namespace, schema: str, records: Iterable[tuple[bytes | None, bytes]]
) -> Iterator[tuple[bytes | None, bytes]]:
    """The records with JSON values encoded as Avro, the schema registered first."""
    from pipeline.dev.schema_registry import encoder, register  # noqa: PLC0415

    schema_id = await register(args.registry, args.subject or f"{args.topic}-value", schema)
    encode = encoder(schema_id, schema)
    return ((key, encode(value)) for key, value in records)


def main(args: argparse.Namespace) -> int:
    """Run ``produce`` and say how many records went where; a failure is one line, exit 1."""
    problem = _usage_problem(args)
    if problem is not None:
        print(f"space-pipeline produce: {problem}", file=sys.stderr)
        return 2
    # aiokafka logs its own view of a failure; the one line below says what it means here.
    configure_logging("CRITICAL", "console", stream=sys.stderr)
    try:
        written = asyncio.run(produce(args))
    except (aiohttp.ClientError, KafkaError, ValueError) as error:
        print(f"space-pipeline produce: {_failure(args, error)}", file=sys.stderr)
        return 1
    print(f"wrote {written} records to {args.topic} on {args.bootstrap}")
    return 0


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.key_separator is not None and not args.stdin:
        return "--key-separator splits lines of --stdin; the samples have keys of their own"
    if args.avro and not Path(args.avro).is_file():
        return f"--avro {args.avro}: no such schema file"
    return None


def _failure(args: argparse.Namespace, error: Exception) -> str:
    """What went wrong, and what to do about it."""
    if isinstance(error, aiohttp.ClientError):  # only the schema registry is spoken to by HTTP
        return (
            f"no schema registry answers at {args.registry} ({error}): start one"
            " (space-pipeline schema-registry), or point --registry at yours"
        )
    if isinstance(error, KafkaConnectionError):
        return (
            f"no Kafka broker answers at {args.bootstrap}: start one (space-pipeline broker),"
            " or point --bootstrap at yours"
        )
    if isinstance(error, KafkaError):
        return f"Kafka at {args.bootstrap}: {error}"
    return str(error)  # the registry refused the schema, or a line is no JSON for --avro
