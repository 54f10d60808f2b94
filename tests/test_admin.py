"""The admin API and its commands: who may call it, what it answers, what it logs.

The routes are specified against a fake stage (:class:`FakeStage`, an ``AdminPort``) served by a
real :class:`OpsServer` over loopback; the stage's own implementation is specified at the end,
against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from structlog.testing import capture_logs

from pipeline import cli
from pipeline.admin import (
    AdminApi,
    GateStatus,
    GroupStatus,
    HaltStatus,
    PartitionRef,
    PartitionStatus,
    RecordRef,
    SkipDone,
    StatusReport,
)
from pipeline.config import Settings
from pipeline.consumer import Committed
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import AdminRefusedError, RejectedError
from pipeline.group_offsets import GroupState, Position, show_text
from pipeline.health import OpsServer, Verdict
from pipeline.partition import SKIP_NOTE, FlowLimits, Partitions
from pipeline.policy import Skips
from pipeline.records import KafkaRecord, Record
from pipeline.sender import OrderedSender
from pipeline.stage import Stage
from tests.plugins.broker import Topic, new_dlq
from tests.plugins.metrics import metric_value
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually, eventually_async
from tests.test_outcomes import dead_letters

TOKEN = "s3cret-admin-t0ken-4711"
ROUTES = [("GET", "/admin/status"), *(("POST", f"/admin/{n}") for n in ("skip", "pause", "resume"))]


class FakeStage:
    """Two partitions of topic ``t``; ``t/1`` is halted at offset 10."""

    def __init__(self) -> None:
        self.halted = {PartitionRef("t", 1): 10}
        self.paused: set[PartitionRef] = set()
        self.calls: list[tuple[str, object]] = []

    def status(self) -> StatusReport:
        self.calls.append(("status", None))
        parts = tuple(
            PartitionStatus(
                topic=ref.topic,
                partition=ref.partition,
                position=12,
                committed=10,
                in_flight=0,
                buffered=2,
                paused=ref in self.paused,
                lag=5,
                halted=HaltStatus(offset, 400, "rejected", 1_700_000_000.0)
                if (offset := self.halted.get(ref)) is not None
                else None,
            )
            for ref in (PartitionRef("t", 0), PartitionRef("t", 1))
        )
        return StatusReport(
            partitions=parts,
            gate=GateStatus("closed", None, None, None, 50.0),
            group=GroupStatus("g", "member-1", 3),
        )

    async def skip(self, record: RecordRef) -> SkipDone:
        self.calls.append(("skip", record))
        where = PartitionRef(record.topic, record.partition)
        if self.halted.get(where) != record.offset:
            msg = f"{where} is not halted at {record.offset}"
            raise AdminRefusedError(msg)
        del self.halted[where]
        return SkipDone(record, dead_lettered=True)

    async def pause(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        self.calls.append(("pause", partitions))
        wanted = list(partitions or [PartitionRef("t", 0), PartitionRef("t", 1)])
        self.paused |= set(wanted)
        return wanted

    async def resume(self, partitions: Sequence[PartitionRef] | None) -> list[PartitionRef]:
        self.calls.append(("resume", partitions))
        wanted = list(partitions or sorted(self.paused))
        self.paused -= set(wanted)
        return wanted


@pytest.fixture(autouse=True)
def no_log_line_holds_the_token(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every spec here, the stage's included, runs with its log lines captured and searched for
    the token (structlog's and the standard library's, aiohttp's and aiokafka's among them)."""
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        yield
    everything = repr(logs) + "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in everything


def ok() -> Verdict:
    return Verdict(ok=True)


@contextlib.asynccontextmanager
async def serving(port: FakeStage, token: str | None = TOKEN) -> AsyncIterator[str]:
    admin = AdminApi(port, token) if token is not None else None
    async with OpsServer("127.0.0.1", 0, live=ok, ready=ok, admin=admin) as ops:
        yield f"http://127.0.0.1:{ops.port}"


@pytest.fixture
def fake() -> FakeStage:
    return FakeStage()


@pytest.fixture
async def api(fake: FakeStage) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(fake) as url, httpx.AsyncClient(base_url=url) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


# Who may call it


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path", [*(path for _, path in ROUTES), "/admin/nothing-here", "/admin/", "/admin"]
)
@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {TOKEN}x", "Bearer ", "Bearer", f"bearer {TOKEN}", TOKEN, f"Basic {TOKEN}"],
    ids=["missing", "wrong", "empty", "no-token", "lowercase", "bare", "basic"],
)
async def test_no_admin_route_answers_without_the_token(
    fake: FakeStage, method: str, path: str, authorization: str | None
) -> None:
    """Every route, every method, and paths that are no route at all: 401 and nothing done,
    so a caller without the token learns nothing, not even which routes exist."""
    async with serving(fake) as url:
        status, body = await raw_request(url, method, path, authorization)
    assert 401 == status
    assert b'"error"' in body
    assert [] == fake.calls


async def raw_request(
    url: str, method: str, path: str, authorization: str | None
) -> tuple[int, bytes]:
    """One request as bytes on a socket: HTTP clients refuse to send some of these headers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    header = "" if authorization is None else f"Authorization: {authorization}\r\n"
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{header}Content-Type: application/json"
        "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
    )
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_with_the_admin_token_unset_no_admin_route_exists(
    fake: FakeStage, method: str, path: str
) -> None:
    """Off unless PIPELINE_ADMIN_TOKEN is set: 404 whatever the caller sends."""
    async with serving(fake, token=None) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.request(
            method, path, headers={"Authorization": f"Bearer {TOKEN}"}, json={}
        )
        healthz = await client.get("/healthz")
    assert 404 == answer.status_code
    assert 200 == healthz.status_code
    assert [] == fake.calls


async def test_the_probes_and_metrics_need_no_token(fake: FakeStage) -> None:
    """The admin guard covers /admin/ only: the kubelet and Prometheus carry no token."""
    async with serving(fake) as url, httpx.AsyncClient(base_url=url) as client:
        answers = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
    assert [200, 200, 200] == [a.status_code for a in answers]


def test_an_empty_admin_token_is_a_configuration_error() -> None:
    """An empty token would let anybody in: refuse to start, naming the variable."""
    with pytest.raises(ValueError, match="PIPELINE_ADMIN_TOKEN is empty"):
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            kafka_bootstrap_servers="k:9092",
            kafka_topics=("t",),
            kafka_group_id="g",
            space_api_url="http://api.example",
            admin_token=" ",
        )


# What it answers


async def test_status_is_the_partitions_the_gate_and_the_group(api: httpx.AsyncClient) -> None:
    """Each partition with its offsets, counts, pause and halt; the gate; the group member."""
    answer = await api.get("/admin/status")
    assert 200 == answer.status_code
    body = answer.json()
    assert {"partitions", "gate", "group"} == set(body)
    first, halted = body["partitions"]
    assert {
        "topic",
        "partition",
        "position",
        "committed",
        "in_flight",
        "buffered",
        "paused",
        "lag",
        "halted",
        "held_back",
    } == set(first)
    assert first["halted"] is None
    assert {"offset": 10, "status": 400, "reason": "rejected", "since": 1_700_000_000.0} == (
        halted["halted"]
    )
    assert {
        "circuit": "closed",
        "outage": None,
        "refusal": None,
        "throttled_until": None,
        "rate_limit_per_s": 50.0,
    } == body["gate"]
    assert {"group_id": "g", "member_id": "member-1", "generation": 3} == body["group"]


async def test_a_skip_of_the_halted_record_answers_what_became_of_it(
    api: httpx.AsyncClient, fake: FakeStage
) -> None:
    answer = await api.post("/admin/skip", json={"topic": "t", "partition": 1, "offset": 10})
    assert 200 == answer.status_code
    assert {"skipped": "t/1/10", "dead_lettered": True} == answer.json()
    assert [("skip", RecordRef("t", 1, 10))] == fake.calls


async def test_a_skip_the_stage_refuses_is_409_with_its_reason(api: httpx.AsyncClient) -> None:
    answer = await api.post("/admin/skip", json={"topic": "t", "partition": 1, "offset": 11})
    assert 409 == answer.status_code
    assert {"error": "t/1 is not halted at 11"} == answer.json()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b"{}",
        b'{"topic": "t", "partition": "1", "offset": 10}',
        b'{"topic": "t", "partition": 1, "offset": -1}',
        b'{"topic": "", "partition": 1, "offset": 10}',
        b'{"topic": "t", "partition": true, "offset": 10}',
    ],
)
async def test_a_malformed_skip_is_400_and_nothing_is_skipped(
    api: httpx.AsyncClient, fake: FakeStage, body: bytes
) -> None:
    answer = await api.post("/admin/skip", content=body)
    assert 400 == answer.status_code
    assert answer.json()["error"]
    assert [] == fake.calls


async def test_pause_and_resume_take_one_partition_or_all(
    api: httpx.AsyncClient, fake: FakeStage
) -> None:
    one = await api.post("/admin/pause", json={"topic": "t", "partition": 0})
    assert {"paused": ["t/0"]} == one.json()
    everything = await api.post("/admin/pause", json={})
    assert {"paused": ["t/0", "t/1"]} == everything.json()
    status = (await api.get("/admin/status")).json()
    assert [True, True] == [p["paused"] for p in status["partitions"]]
    back = await api.post("/admin/resume", content=b"")
    assert {"resumed": ["t/0", "t/1"]} == back.json()
    assert [
        ("pause", [PartitionRef("t", 0)]),
        ("pause", None),
        ("status", None),
        ("resume", None),
    ] == fake.calls


# What it logs


async def test_each_mutating_call_logs_what_and_from_whom_and_no_line_holds_the_token(
    fake: FakeStage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        async with serving(fake) as url, httpx.AsyncClient(base_url=url) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            await client.get("/admin/status", headers=auth)
            await client.post(
                "/admin/skip", headers=auth, json={"topic": "t", "partition": 1, "offset": 10}
            )
            await client.post("/admin/pause", headers=auth, json={"topic": "t", "partition": 0})
            await client.post("/admin/resume", headers=auth, json={})
            await client.post("/admin/skip", headers=auth, json={"topic": "t", "partition": 1})
            await client.get("/admin/status", headers={"Authorization": f"Bearer {TOKEN}x"})
    events = [line["event"] for line in logs if line["event"].startswith("admin.")]
    assert ["admin.skip", "admin.pause", "admin.resume", "admin.unauthorized"] == events
    for line in logs:
        if line["event"] in {"admin.skip", "admin.pause", "admin.resume"}:
            assert "127.0.0.1" == line["peer"]
    skip = next(line for line in logs if line["event"] == "admin.skip")
    assert "t/1/10" == skip["record"]
    everything = repr(logs) + "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in everything
    assert TOKEN[:-1] not in everything  # nor the wrong one's prefix


# The commands


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


@pytest.fixture
def quiet_server() -> Iterator[None]:
    """The server's log lines stay out of the command's output."""
    with capture_logs():
        yield


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, quiet_server: None) -> None:
    monkeypatch.setenv("PIPELINE_ADMIN_TOKEN", TOKEN)


@pytest.mark.usefixtures("token_env")
async def test_status_prints_a_table_of_the_partitions(
    fake: FakeStage, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(fake) as url:
        capsys.readouterr()  # the server's own start line
        code = await run_cli("status", "--url", url)
    out = capsys.readouterr().out
    assert 0 == code
    lines = out.splitlines()
    assert lines[0].startswith("group g  member member-1  generation 3")
    assert "gate: circuit closed, rate limit 50/s" == lines[1]
    assert lines[2].split() == [
        "PARTITION", "POSITION", "COMMITTED", "LAG", "IN", "FLIGHT", "BUFFERED", "STATE"
    ]  # fmt: skip
    assert lines[3].split() == ["t/0", "12", "10", "5", "0", "2", "ok"]
    assert "HALTED at t/1/10 400: rejected" in lines[4]


@pytest.mark.usefixtures("token_env")
async def test_skip_pause_and_resume_call_the_api_and_say_what_happened(
    fake: FakeStage, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(fake) as url:
        capsys.readouterr()
        codes = [
            await run_cli("skip", "t/1/10", "--url", url),
            await run_cli("pause", "t/0", "--url", url),
            await run_cli("resume", "--url", url),
        ]
    assert [0, 0, 0] == codes
    assert [
        "t/1/10: dead-lettered; the partition goes on",
        "paused: t/0",
        "resumed: t/0",
    ] == capsys.readouterr().out.splitlines()
    assert [
        ("skip", RecordRef("t", 1, 10)),
        ("pause", [PartitionRef("t", 0)]),
        ("resume", None),
    ] == fake.calls


@pytest.mark.usefixtures("token_env")
@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (["skip", "t/1/11"], 1, "space-pipeline skip: 409: t/1 is not halted at 11"),
        (["skip", "t/1"], 2, "space-pipeline skip: 't/1' is not topic/partition/offset"),
        (["pause", "t"], 2, "space-pipeline pause: 't' is not topic/partition"),
    ],
)
async def test_a_failed_command_prints_one_line_and_exits_non_zero(
    fake: FakeStage, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, line: str
) -> None:
    async with serving(fake) as url:
        capsys.readouterr()
        assert code == await run_cli(*argv, "--url", url)
    assert [line] == capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("quiet_server")
async def test_a_command_without_the_token_or_the_stage_fails_in_one_line(
    fake: FakeStage, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_ADMIN_TOKEN", raising=False)
    async with serving(fake) as url:
        capsys.readouterr()
        assert 2 == await run_cli("status", "--url", url)
    first = capsys.readouterr().err.splitlines()
    assert ["space-pipeline status: PIPELINE_ADMIN_TOKEN is not set (the stage's admin token)"] == (
        first
    )
    monkeypatch.setenv("PIPELINE_ADMIN_TOKEN", TOKEN + "x")
    async with serving(fake) as url:
        capsys.readouterr()
        assert 1 == await run_cli("status", "--url", url)
    wrong = capsys.readouterr().err.splitlines()
    assert ["space-pipeline status: 401: a valid Authorization: Bearer token is required"] == wrong
    assert 1 == await run_cli("status", "--url", url)  # the server is gone now
    (gone,) = capsys.readouterr().err.splitlines()
    assert gone.startswith(f"space-pipeline status: cannot reach the admin API at {url}: ")


# The stage's own implementation, against the real broker


@contextlib.asynccontextmanager
async def admin_client(stage: Stage) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the stage's admin API, once it serves one."""
    await eventually(lambda: stage.ops_port != 0, what="the ops port")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{stage.ops_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ) as client:
        yield client


async def halted_at(client: httpx.AsyncClient, partition: int) -> int | None:
    status = (await client.get("/admin/status")).json()
    for part in status["partitions"]:
        if part["partition"] == partition and part["halted"]:
            return int(part["halted"]["offset"])
    return None


async def committed_with_notes(topic: Topic) -> dict[int, tuple[int, str] | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=topic.bootstrap, group_id=topic.group)
    await consumer.start()
    try:
        coordinator = consumer._coordinator
        tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        found = await coordinator.fetch_committed_offsets(tps)
        return {
            tp.partition: (found[tp].offset, found[tp].metadata) if tp in found else None
            for tp in tps
        }
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_skip_over_http_lets_the_halted_record_past_and_a_restart_does_not_send_it(
    new_topic: Callable[[int], Awaitable[Topic]],
) -> None:
    """A partition halts at a rejected record; a skip of any other record is 409; the skip of
    that one dead-letters it (reason skipped) and the partition goes on without a restart. A
    restarted stage neither sends it again nor reports a halt."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    await topic.produce(40)  # 20 per partition
    bad = f"{topic.name}/1/5"
    settings = topic.settings(
        "http://placeholder",
        dead_letter_topic=dlq,
        dead_letter_idempotence=False,
        admin_token=TOKEN,
    )
    async with StubServer(StubConfig(latency_ms=1, reject_keys=frozenset({bad}))) as api:
        settings = settings.model_copy(update={"space_api_url": api.url})
        async with running_stage(settings) as stage, admin_client(stage) as client:
            await eventually_async(
                lambda: _is(halted_at(client, 1), 5), what="partition 1 to halt at 5"
            )
            assert 25 == api.stats().unique
            wrong = await client.post(
                "/admin/skip", json={"topic": topic.name, "partition": 1, "offset": 6}
            )
            not_halted = await client.post(
                "/admin/skip", json={"topic": topic.name, "partition": 0, "offset": 3}
            )
            done = await client.post(
                "/admin/skip", json={"topic": topic.name, "partition": 1, "offset": 5}
            )
            await eventually(lambda: api.stats().unique == 39, what="the rest of partition 1")
            await eventually(lambda: Verdict(ok=True) == stage.ready(), what="/readyz clear again")
            assert await halted_at(client, 1) is None
        assert 409 == wrong.status_code
        assert f"is halted at {bad}, not {topic.name}/1/6" in wrong.json()["error"]
        assert 409 == not_halted.status_code
        assert {"skipped": bad, "dead_lettered": True} == done.json()
        assert {0: (20, ""), 1: (20, "")} == await committed_with_notes(topic)
        letters = await dead_letters(topic.bootstrap, dlq)
        assert [(1, 5, b"skipped")] == [
            (
                int(dict(r.headers)["x-original-partition"]),
                int(dict(r.headers)["x-original-offset"]),
                dict(r.headers)["x-error-reason"],
            )
            for r in letters
        ]
        rejected_before = api.stats().statuses.get(422, 0)
        await topic.produce(10, start=40)
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().unique == 49, what="the new records")
            assert Verdict(ok=True) == stage.ready()
        stats = api.stats(offsets=True)
    assert rejected_before == stats.statuses.get(422, 0), "the skipped record was sent again"
    assert 5 not in stats.partitions[f"{topic.name}/1"].offsets
    assert 0 == stats.order_violations


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


# The partition table's part, without a broker: tansu keeps no commit metadata, so the note that
# carries a skip to the next owner is specified here, on the table itself.


class FakeFlow:
    """The consumer's flow control, as calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def assigned(self, tp: TopicPartition) -> bool:
        return True

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", offset))

    def pause(self, tp: TopicPartition) -> None:
        self.calls.append(("pause", None))

    def resume(self, tp: TopicPartition) -> None:
        self.calls.append(("resume", None))


class FakeDeadLetters:
    def __init__(self) -> None:
        self.written: list[tuple[int, str, str]] = []

    async def write(self, record: KafkaRecord, error: RejectedError, attempts: int) -> None:
        self.written.append((record.offset, error.reason, str(error)))


TP = TopicPartition("t", 0)


def record(offset: int) -> Record:
    return Record("t", 0, offset, 1_700_000_000_000, b"k", b"v")


def table(
    flow: FakeFlow, dead_letters: FakeDeadLetters, spawned: list[Coroutine[Any, Any, None]]
) -> Partitions:
    async def send(item: KafkaRecord) -> None:
        if item.offset == 0:
            raise RejectedError("no", reason="4xx", status=422)

    return Partitions(
        FlowLimits(100, 1 << 20),
        "partition",
        flow,
        sender=lambda on_done: OrderedSender(send, on_done=on_done, halt_on_rejection=True),
        spawn=spawned.append,
        skips=Skips(frozenset(), dead_letters),
    )


async def test_a_skip_is_committed_as_a_note_before_the_record_is_let_past() -> None:
    """Only the record the partition halted at may be skipped; the skip is in the commit note
    until the record is let past (dead-lettered, reason skipped), then the partition goes on
    from the next record and the commit moves past it without a note."""
    flow, letters, spawned = FakeFlow(), FakeDeadLetters(), []
    partitions = table(flow, letters, spawned)
    async with partitions.sender:
        (part,) = partitions.assign([TP])
        partitions.set_committed({TP: Committed(0)})
        partitions.hand_over(TP, [record(0), record(1)])
        await eventually(lambda: part.halted is not None, what="the halt")
        assert Committed(0, "space-pipeline: halted at 0") == part.commit_point(2)
        with pytest.raises(AdminRefusedError, match="halted at t/0/0, not t/0/1"):
            partitions.mark_skip(TP, 1)
        with pytest.raises(AdminRefusedError, match="not assigned") as unknown:
            partitions.mark_skip(TopicPartition("t", 9), 0)
        assert 404 == unknown.value.status
        partitions.mark_skip(TP, 0)
        assert Committed(0, "space-pipeline: skipped 0") == part.commit_point(2)
        flow.calls.clear()
        assert await partitions.let_halted_past(part) is True
        assert [(0, "skipped", "skipped by an operator (space-pipeline skip)")] == letters.written
        assert part.halted is None
        assert [("seek", 1), ("resume", None)] == flow.calls
        assert TP in partitions.ready()
        assert Committed(1, "") == part.commit_point(1)


async def test_a_skip_noted_in_the_commit_is_honoured_by_the_next_owner() -> None:
    """The owner died after committing the skip and before letting the record past: the next
    one lets it past unsent, with no sender involved, and commits past it."""
    flow, letters, spawned = FakeFlow(), FakeDeadLetters(), []
    partitions = table(flow, letters, spawned)
    (part,) = partitions.assign([TP])
    partitions.set_committed({TP: Committed(4, "space-pipeline: skipped 4")})
    assert 4 == part.skip_at
    partitions.hand_over(TP, [record(4)])
    (letting_past,) = spawned
    await letting_past
    assert [(4, "skipped", "skipped by an operator (space-pipeline skip)")] == letters.written
    assert Committed(5, "") == part.commit_point(5)


@pytest.mark.integration
async def test_a_paused_partition_sends_and_fetches_nothing_until_resumed(
    new_topic: Callable[[int], Awaitable[Topic]],
) -> None:
    """Pause one partition over HTTP: it commits what was accepted, shows paused in status and
    metrics, and takes nothing more while the other goes on; resumed, it delivers the rest in
    order."""
    topic = await new_topic(2)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        settings = topic.settings(api.url, admin_token=TOKEN)
        async with running_stage(settings) as stage, admin_client(stage) as client:
            await eventually(lambda: stage.ready().ok, what="the stage to join")
            await topic.produce(20)
            await eventually(lambda: api.stats().unique == 20, what="the first 20")
            paused = await client.post("/admin/pause", json={"topic": topic.name, "partition": 0})
            await topic.produce(40, start=20)
            await eventually(lambda: api.stats().unique == 40, what="partition 1's 20 more")
            await asyncio.sleep(0.5)  # time to (wrongly) send partition 0's
            during = api.stats(offsets=True)
            status = (await client.get("/admin/status")).json()
            metric = await metric_value(
                f"http://127.0.0.1:{stage.ops_port}/metrics",
                "space_pipeline_partition_operator_paused",
                topic=topic.name,
                partition="0",
            )
            committed_while_paused = await topic.committed()
            resumed = await client.post("/admin/resume", json={})
            await eventually(lambda: api.stats().unique == 60, what="partition 0's 20 more")
        stats = api.stats(offsets=True)
    assert {"paused": [f"{topic.name}/0"]} == paused.json()
    assert {"resumed": [f"{topic.name}/0"]} == resumed.json()
    assert tuple(range(10)) == during.partitions[f"{topic.name}/0"].offsets
    assert [True, False] == [p["paused"] for p in status["partitions"]]
    assert 1.0 == metric
    assert {0: 10, 1: 30} == committed_while_paused
    assert tuple(range(30)) == stats.partitions[f"{topic.name}/0"].offsets
    assert 0 == stats.order_violations
    assert {0: 30, 1: 30} == await topic.committed()


@pytest.mark.integration
async def test_status_over_http_describes_the_running_stage(
    new_topic: Callable[[int], Awaitable[Topic]], stub: StubServer
) -> None:
    topic = await new_topic(2)
    await topic.produce(10)
    settings = topic.settings(stub.url, admin_token=TOKEN, rate_limit_per_s=1000)
    async with running_stage(settings) as stage, admin_client(stage) as client:
        await eventually(lambda: stub.stats().unique == 10, what="10 deliveries")
        await asyncio.sleep(0.5)  # a commit round and a housekeeping round
        status = (await client.get("/admin/status")).json()
    assert {
        "circuit": "closed",
        "outage": None,
        "refusal": None,
        "throttled_until": None,
        "rate_limit_per_s": 1000.0,
    } == status["gate"]
    assert topic.group == status["group"]["group_id"]
    assert status["group"]["member_id"]
    assert isinstance(status["group"]["generation"], int)  # tansu counts from 0
    assert [
        {
            "topic": topic.name,
            "partition": p,
            "position": 5,
            "committed": 5,
            "in_flight": 0,
            "buffered": 0,
            "paused": False,
            "lag": 0,
            "halted": None,
            "held_back": False,
        }
        for p in (0, 1)
    ] == status["partitions"]


def test_offsets_show_reads_a_skip_note_as_the_stage_does() -> None:
    """``space-pipeline offsets show`` names a partition whose halted record an operator skipped
    (and no owner has let past yet) in words, like a halt."""
    state = GroupState("g", "Empty", ())
    lines = show_text(state, [Position("t", 0, 4, 6, f"{SKIP_NOTE}4")]).splitlines()
    assert lines[2].endswith("skipped 4 (let past by the next owner)")


async def test_a_partition_skipped_while_paused_goes_on_once_resumed() -> None:
    """An operator pauses a halted partition, skips its record, then resumes it: it is polled
    again (neither the pause nor the halt's hold outlives the resume)."""
    flow, letters, spawned = FakeFlow(), FakeDeadLetters(), []
    partitions = table(flow, letters, spawned)
    async with partitions.sender:
        (part,) = partitions.assign([TP])
        partitions.set_committed({TP: Committed(0)})
        partitions.hand_over(TP, [record(0), record(1)])
        await eventually(lambda: part.halted is not None, what="the halt")
        partitions.pause_by_operator([TP])
        partitions.rewind([part])
        partitions.mark_skip(TP, 0)
        await partitions.let_halted_past(part)
        assert TP not in partitions.ready()
        flow.calls.clear()
        partitions.resume_by_operator([TP])
        assert TP in partitions.ready()
        assert [("resume", None)] == flow.calls
