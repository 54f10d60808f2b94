"""The admin API and its commands: who may call it, what it answers, what it logs.

The routes are specified against a fake stage (:class:`FakeStage`, an ``AdminPort``) served by a
real :class:`OpsServer` over loopback; the stage's own implementation is specified at the end,
against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
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
from pipeline.errors import AdminRefusedError
from pipeline.health import OpsServer, Verdict

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


@pytest.fixture(autouse=True)
def quiet_server() -> Iterator[None]:
    """The server's log lines stay out of the command's output."""
    with capture_logs():
        yield


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
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
