"""The ``status``, ``skip``, ``pause`` and ``resume`` commands: a client of the admin API.

Plain blocking HTTP (``urllib``): one call per command, nothing to run concurrently, and no
event loop to start for an operator typing at 3 a.m. Every failure is one line and a non-zero
exit: 2 when the command line or ``PIPELINE_ADMIN_TOKEN`` is wrong, 1 when the call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from pipeline.admin import PartitionRef, RecordRef

DEFAULT_URL = "http://127.0.0.1:9400"
TOKEN_VARIABLE = "PIPELINE_ADMIN_TOKEN"  # noqa: S105 - its name, not its value
TIMEOUT_S = 30.0  # a pause waits for requests on the wire; the stage bounds that itself
EXIT_FAILED = 1
EXIT_USAGE = 2


class CallFailedError(Exception):
    """The admin API could not be reached, or refused; the message is the line to print."""


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The options of one admin command."""
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        help="the stage's ops port (default %(default)s); the token is read from " + TOKEN_VARIABLE,
    )
    if what == "status":
        parser.add_argument("--json", action="store_true", help="print the JSON as it came")
    elif what == "skip":
        parser.add_argument("record", metavar="TOPIC/PARTITION/OFFSET", help="the halted record")
    else:
        parser.add_argument(
            "partition",
            metavar="TOPIC/PARTITION",
            nargs="?",
            help="one partition (default: every partition of this stage)",
        )


def main(args: argparse.Namespace) -> int:
    """Run the admin command ``args.command``; returns the exit code."""
    name = f"space-pipeline {args.command}"
    token = os.environ.get(TOKEN_VARIABLE, "")
    if not token.strip():
        print(f"{name}: {TOKEN_VARIABLE} is not set (the stage's admin token)", file=sys.stderr)
        return EXIT_USAGE
    try:
        body = _request_body(args)
    except ValueError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = call(args.url, args.command, token, body)
    except CallFailedError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "status":
        print(json.dumps(answer, indent=2) if args.json else status_table(answer))
    elif args.command == "skip":
        where = "dead-lettered" if answer.get("dead_lettered") else "skipped"
        print(f"{answer.get('skipped')}: {where}; the partition goes on")
    else:
        done = answer.get(f"{args.command}d") or []
        print(f"{args.command}d: {', '.join(done) if done else 'nothing'}")
    return 0


def _request_body(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.command == "status":
        return None
    if args.command == "skip":
        record = RecordRef.parse(args.record)
        return {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if args.partition is None:
        return {}
    ref = PartitionRef.parse(args.partition)
    return {"topic": ref.topic, "partition": ref.partition}


def call(url: str, command: str, token: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """One admin call; its JSON answer, or :class:`CallFailedError` with the line to print."""
    request = urllib.request.Request(  # noqa: S310 - the operator's own URL
        f"{url.rstrip('/')}/admin/{command}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as error:
        detail = _error_text(error.read()) or error.reason
        raise CallFailedError(f"{error.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        msg = f"cannot reach the admin API at {url}: {reason}"
        raise CallFailedError(msg) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        msg = f"the answer from {url} is not JSON"
        raise CallFailedError(msg) from None
    if not isinstance(answer, dict):
        msg = f"the answer from {url} is not a JSON object"
        raise CallFailedError(msg)
    return answer


def _error_text(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return ""
    return error if isinstance(error, str) else ""


COLUMNS = ("PARTITION", "POSITION", "COMMITTED", "LAG", "IN FLIGHT", "BUFFERED", "STATE")


def status_table(status: dict[str, Any]) -> str:
    """``GET /admin/status`` for a terminal: the group and gate, then a row per partition."""
    group = status.get("group") or {}
    lines = [
        f"group {group.get('group_id')}  member {group.get('member_id') or '-'}"
        f"  generation {_cell(group.get('generation'))}"
    ]
    gate = status.get("gate")
    if gate:
        state = f"gate: circuit {gate.get('circuit')}"
        if gate.get("refusal"):
            state += f", {gate.get('outage')} outage: {gate['refusal']}"
        elif gate.get("outage"):
            state += f", {gate.get('outage')} outage"
        if gate.get("throttled_until"):
            state += ", throttled"
        if gate.get("rate_limit_per_s"):
            state += f", rate limit {gate['rate_limit_per_s']:g}/s"
        lines.append(state)
    rows = [COLUMNS]
    for part in status.get("partitions") or []:
        rows.append(
            (
                f"{part['topic']}/{part['partition']}",
                _cell(part.get("position")),
                _cell(part.get("committed")),
                _cell(part.get("lag")),
                _cell(part.get("in_flight")),
                _cell(part.get("buffered")),
                _state(part),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no partition assigned)")
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _state(part: dict[str, Any]) -> str:
    states = []
    halted = part.get("halted")
    if halted:
        name = f"{part['topic']}/{part['partition']}/{halted.get('offset')}"
        status = f" {halted['status']}" if halted.get("status") else ""
        states.append(f"HALTED at {name}{status}: {halted.get('reason')}")
    if part.get("paused"):
        states.append("paused")
    return "; ".join(states) or "ok"
