"""The admin API: what an operator at 3 a.m. needs without a restart, on the ops port.

``GET /admin/status`` shows each assigned partition, the API gate and the group membership;
``POST /admin/skip`` lets the record a partition is halted at go past (dead-lettered with reason
``skipped`` when a dead-letter topic is set); ``POST /admin/pause`` and ``/admin/resume`` stop and
restart sending and fetching for some partitions, or all.

It is served only when ``PIPELINE_ADMIN_TOKEN`` is set, and every call under ``/admin/`` needs
``Authorization: Bearer <token>``, whatever its path or method: an unknown route or a wrong method
answers 401 to a caller without the token, so the API's shape is no secret either. The token is
compared in constant time and never logged; each mutating call logs one ``admin.*`` line saying
what was done and from which peer.

The routes speak to an :class:`AdminPort`: the stage implements it, the specs use a fake.
Records are named ``topic/partition/offset`` everywhere (``/readyz``, the halt log line, status,
``PIPELINE_SKIP_RECORDS``), partitions ``topic/partition``.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from pipeline.errors import AdminRefusedError

log = structlog.get_logger("pipeline.admin")

PREFIX = "/admin/"


def record_name(topic: str, partition: int, offset: int) -> str:
    """How a record is named to an operator: ``topic/partition/offset``."""
    return f"{topic}/{partition}/{offset}"


@dataclass(frozen=True, slots=True, order=True)
class PartitionRef:
    """A partition named by an operator."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"

    @classmethod
    def parse(cls, text: str) -> PartitionRef:
        """``topic/partition``; ``ValueError`` says what is wrong."""
        topic, _, partition = text.rpartition("/")
        if not (topic and partition.isdecimal()):
            msg = f"{text!r} is not topic/partition"
            raise ValueError(msg)
        return cls(topic, int(partition))


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A record named by an operator."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return record_name(self.topic, self.partition, self.offset)

    @classmethod
    def parse(cls, text: str) -> RecordRef:
        """``topic/partition/offset``; ``ValueError`` says what is wrong."""
        rest, _, offset = text.rpartition("/")
        try:
            where = PartitionRef.parse(rest)
        except ValueError:
            where = None
        if where is None or not offset.isdecimal():
            msg = f"{text!r} is not topic/partition/offset"
            raise ValueError(msg)
        return cls(where.topic, where.partition, int(offset))


# What status reports


@dataclass(frozen=True, slots=True)
class HaltStatus:
    """Where a partition stopped and why.

    ``status`` and ``since`` are unknown for a halt a previous owner noted in the commit metadata.
    """

    offset: int
    status: int | None
    reason: str
    since: float | None  # Unix time


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One assigned partition, as the stage sees it now."""

    topic: str
    partition: int
    position: int | None  # the next offset fetched
    committed: int | None
    in_flight: int
    buffered: int
    paused: bool  # by an operator
    lag: int
    halted: HaltStatus | None
    held_back: bool = False  # fetching held back: the buffer is full, or the partition halted


@dataclass(frozen=True, slots=True)
class GateStatus:
    """The API gate every request passes."""

    circuit: str  # closed, open, half_open
    outage: str | None  # circuit, auth, config
    refusal: str | None  # what an auth or URL outage says
    throttled_until: float | None  # Unix time a Retry-After holds requests back to
    rate_limit_per_s: float | None


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """The stage as a member of its consumer group."""

    group_id: str
    member_id: str | None
    generation: int | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``GET /admin/status`` answers."""

    partitions: tuple[PartitionStatus, ...]
    gate: GateStatus | None
    group: GroupStatus

    def as_json(self) -> dict[str, Any]:
        """The JSON body: the dataclasses as objects, in field order."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class SkipDone:
    """A skip that happened: the record, and whether it went to the dead-letter topic."""

    record: RecordRef
    dead_lettered: bool


class AdminPort(Protocol):
    """What the admin routes ask of the stage."""

    def status(self) -> StatusReport:
        """The stage's state now."""
        ...

    async def skip(self, record: RecordRef) -> SkipDone:
        """Let ``record`` past: only the record its partition is halted at.

        Raises :class:`~pipeline.errors.AdminRefusedError` otherwise, saying why.
        """
        ...

    async def pause(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        """Stop sending and fetching for ``partitions`` (all when ``None``).

        What was accepted is committed; returns the partitions paused.
        """
        ...

    async def resume(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        """Undo :meth:`pause` for ``partitions`` (all when ``None``); returns those resumed."""
        ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminApi:
    """The admin routes and their guard, mounted on the ops server's application.

    Args:
        port: The stage (or a fake).
        token: The bearer token every call must carry; never empty.
    """

    def __init__(self, port: AdminPort, token: str) -> None:
        if not token:
            msg = "the admin token may not be empty"
            raise ValueError(msg)
        self._port = port
        self._expected = f"Bearer {token}".encode()

    def mount(self, app: web.Application) -> None:
        """Add the routes, and the guard in front of everything under ``/admin/``."""
        app.middlewares.append(self._guard)
        app.router.add_get("/admin/status", self._status)
        app.router.add_post("/admin/skip", self._skip)
        app.router.add_post("/admin/pause", self._pause)
        app.router.add_post("/admin/resume", self._resume)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (request.path.startswith(PREFIX) or request.path == PREFIX.rstrip("/")):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            log.warning(
                "admin.unauthorized",
                method=request.method,
                path=request.path,
                peer=request.remote,
                header="missing" if not given else "wrong",
            )
            return _error(401, "a valid Authorization: Bearer token is required")
        return await handler(request)

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self._port.status().as_json())

    async def _skip(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            record = RecordRef(
                _text(body, "topic"), _number(body, "partition"), _number(body, "offset")
            )
        except ValueError as error:
            return _error(400, str(error))
        try:
            done = await self._port.skip(record)
        except AdminRefusedError as error:
            log.warning(
                "admin.skip_refused", record=str(record), peer=request.remote, why=str(error)
            )
            return _error(error.status, str(error))
        log.warning(
            "admin.skip", record=str(record), dead_lettered=done.dead_lettered, peer=request.remote
        )
        return web.json_response({"skipped": str(record), "dead_lettered": done.dead_lettered})

    async def _pause(self, request: web.Request) -> web.Response:
        return await self._switch(request, "pause", self._port.pause)

    async def _resume(self, request: web.Request) -> web.Response:
        return await self._switch(request, "resume", self._port.resume)

    async def _switch(
        self,
        request: web.Request,
        what: str,
        call: Callable[[Sequence[PartitionRef] | None], Awaitable[list[PartitionRef]]],
    ) -> web.Response:
        try:
            body = await _body(request)
            wanted = (
                [PartitionRef(_text(body, "topic"), _number(body, "partition"))] if body else None
            )
        except ValueError as error:
            return _error(400, str(error))
        try:
            done = await call(wanted)
        except AdminRefusedError as error:
            return _error(error.status, str(error))
        names = [str(ref) for ref in done]
        log.warning(
            f"admin.{what}", partitions=names, everything=wanted is None, peer=request.remote
        )
        return web.json_response({f"{what}d": names})


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        msg = "the body is not JSON"
        raise ValueError(msg) from None
    if not isinstance(body, dict):
        msg = "the body is not a JSON object"
        raise ValueError(msg)  # noqa: TRY004 - a bad request, answered 400
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        msg = f"{name!r} must be a non-empty string"
        raise ValueError(msg)
    return value


def _number(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{name!r} must be a whole number, 0 or more"
        raise ValueError(msg)
    return value


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
