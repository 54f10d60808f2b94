"""The command as a person meets it: what it says about settings, logs, and the local tools."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from pipeline.config import Settings
from pipeline.dev.broker import create_topic, free_port
from pipeline.dev.stub_api import StubConfig, StubServer
from tests.plugins.environment import VALID, clean_env
from tests.plugins.processes import command, run_once
from tests.plugins.waiting import eventually, eventually_async
from tests.test_outcomes import dead_letters


def unreachable() -> str:
    """A broker address nobody listens on."""
    return f"127.0.0.1:{free_port()}"


# Settings


def test_a_mistyped_setting_exits_2_and_names_the_setting_it_probably_meant(tmp_path):
    """``PIPELINE_SPACE_API_TOKN`` would silently mean "no token": it is refused at start."""
    result = run_once(tmp_path, **VALID, PIPELINE_SPACE_API_TOKN="s3cret")

    assert 2 == result.returncode
    assert [
        "space-pipeline: PIPELINE_SPACE_API_TOKN: unknown setting"
        " (did you mean PIPELINE_SPACE_API_TOKEN?)"
    ] == result.stderr.splitlines()
    assert "s3cret" not in result.stderr
    assert "" == result.stdout


def test_a_mistyped_setting_in_dot_env_is_refused_too(tmp_path):
    """``.env`` in the working directory is read, and checked, like the environment."""
    (tmp_path / ".env").write_text("PIPELINE_KAFKA_TOPIC=orders\n")

    result = run_once(tmp_path, **VALID)

    assert 2 == result.returncode
    assert "PIPELINE_KAFKA_TOPIC (in .env): unknown setting" in result.stderr


def test_all_problems_are_listed_at_once_one_line_each(tmp_path):
    """Missing, invalid and conflicting settings: one line each, all in one go."""
    result = run_once(
        tmp_path,
        PIPELINE_KAFKA_TOPICS="t",
        PIPELINE_METRICS_PORT="70000",
        PIPELINE_ORDERING="random",
    )

    lines = result.stderr.splitlines()
    assert 2 == result.returncode
    assert 4 == len(lines), lines
    assert all(line.startswith("space-pipeline: PIPELINE_") for line in lines)
    named = {line.split(":")[1].strip() for line in lines}
    assert {
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS",
        "PIPELINE_SPACE_API_URL",
        "PIPELINE_METRICS_PORT",
        "PIPELINE_ORDERING",
    } == named


def test_config_prints_the_effective_settings_with_secrets_masked(tmp_path):
    """``space-pipeline config`` shows every setting, defaults marked, secrets masked; exit 0."""
    result = command(tmp_path, "config", **VALID, PIPELINE_SPACE_API_TOKEN="s3cret")

    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert len(Settings.model_fields) == len(lines)
    assert "PIPELINE_SPACE_API_TOKEN=********" in lines
    assert "PIPELINE_ORDERING=partition  # default" in lines
    assert "s3cret" not in result.stdout


def test_config_exits_2_when_a_setting_is_wrong(tmp_path):
    """The same checks as ``run``, the same lines, and nothing on stdout."""
    result = command(tmp_path, "config", **VALID, PIPELINE_ORDERING="random")

    assert 2 == result.returncode
    assert result.stderr.startswith("space-pipeline: PIPELINE_ORDERING: ")
    assert "" == result.stdout


def test_run_help_lists_every_setting_and_points_to_config(tmp_path):
    """``run --help`` names each variable with its default, and the ``config`` command."""
    result = command(tmp_path, "run", "--help")

    assert 0 == result.returncode
    for name in Settings.model_fields:
        assert f"PIPELINE_{name.upper()}" in result.stdout
    assert "space-pipeline config" in result.stdout


# Logs


def test_auto_logs_json_when_stdout_is_not_a_terminal(tmp_path):
    """Piped into a collector, every line is one JSON object."""
    env = VALID | {"PIPELINE_KAFKA_BOOTSTRAP_SERVERS": unreachable()}
    result = run_once(tmp_path, **env, PIPELINE_KAFKA_STARTUP_TIMEOUT_S="0.5")

    assert 1 == result.returncode
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert "stage.failed" in {event["event"] for event in events}


def test_console_format_renders_lines_for_a_person(tmp_path):
    """``PIPELINE_LOG_FORMAT=console``: readable lines with the event and its context."""
    env = VALID | {"PIPELINE_KAFKA_BOOTSTRAP_SERVERS": unreachable()}
    result = run_once(
        tmp_path, **env, PIPELINE_LOG_FORMAT="console", PIPELINE_KAFKA_STARTUP_TIMEOUT_S="0.5"
    )

    assert 1 == result.returncode
    failed = [line for line in result.stdout.splitlines() if "stage.failed" in line]
    assert 1 == len(failed)
    assert not failed[0].startswith("{")
    assert "error=" in failed[0]


async def test_start_progress_and_stop_say_what_a_person_needs(new_topic, stage_process):
    """Start-up names broker, topics, group, API (password masked) and policy; a progress line
    per topic reports deliveries, rate, lag and partitions; SIGTERM's line gives the deadline
    and says a second signal forces exit; nothing reports an empty revoke."""
    topic = await new_topic(2)
    await topic.produce(40)
    async with StubServer(StubConfig(latency_ms=1)) as api:
        url = api.url.replace("http://", "http://user:pa55@")
        proc = stage_process(topic.env(url, progress_interval_s="0.5"))
        await eventually(lambda: api.stats().unique == 40, what="all 40")
        # The first line comes with the first record done; wait for the one with all 40.
        await eventually(lambda: '"total":40,' in proc.logs(), what="a progress line of all 40")
        proc.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(proc.wait, 20)
    events = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    by_name: dict[str, list[dict]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    started = by_name["stage.started"][0]
    assert topic.bootstrap == started["brokers"]
    assert [topic.name] == started["topics"]
    assert topic.group == started["group"]
    assert "pa55" not in started["api_url"]
    assert "********" in started["api_url"]
    assert {"ordering", "on_reject", "max_in_flight"} <= started.keys()
    progress = [e for e in by_name["stage.progress"] if e["total"] == 40]
    assert progress, by_name["stage.progress"]
    assert {"delivered", "rate_per_s", "lag_records", "assigned", "paused", "halted"} <= (
        progress[-1].keys()
    )
    assert 2 == progress[-1]["assigned"]
    stopping = by_name["stage.stopping"][0]
    assert 10.0 == stopping["deadline_s"]
    assert "again to exit at once" in stopping["force"]
    assert all(e["partitions"] for e in by_name.get("stage.partitions_revoked", []))
    assert "pa55" not in proc.logs()


async def test_retry_warnings_are_summarised_per_partition(new_topic, stage_process):
    """An API answering 503 to everything: the first retry of each partition is logged, then a
    count now and then, not a line per attempt (the metric still counts each)."""
    topic = await new_topic(2)
    await topic.produce(4)
    async with StubServer(StubConfig(latency_ms=1, error_rate=1.0)) as api:
        proc = stage_process(topic.env(api.url, retry_max_backoff_s="0.05"))
        await eventually(lambda: api.stats().requests >= 60, what="many failed attempts")
        proc.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(proc.wait, 20)
        attempts = api.stats().requests
    lines = [json.loads(line) for line in proc.logs().splitlines() if '"stage.retrying"' in line]
    assert {0, 1} == {line["partition"] for line in lines}
    assert len(lines) <= 4, f"{len(lines)} retry lines for {attempts} attempts"


async def test_a_refused_connection_is_reported_as_a_connection_error(new_topic, stage_process):
    """Nobody listens at the API's address: the retry line says connection, not timeout."""
    topic = await new_topic(1)
    await topic.produce(1)
    proc = stage_process(topic.env(f"http://127.0.0.1:{free_port()}/items"))
    await eventually(lambda: '"stage.retrying"' in proc.logs(), what="a retry line")
    proc.process.send_signal(signal.SIGTERM)
    assert 0 == await asyncio.to_thread(proc.wait, 20)
    line = next(json.loads(x) for x in proc.logs().splitlines() if '"stage.retrying"' in x)
    assert "connection" == line["reason"]


# The local tools


class Tool:
    """A long-running ``space-pipeline`` tool (broker, stub API) as a child process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def first_line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        finally:
            assert self.process.stdout is not None
            self.process.stdout.close()


async def test_the_three_terminal_walk_through_works_as_written(tmp_path, stage_process):
    """The README's local walk-through: ``broker`` and ``stub-api`` in the foreground, records
    from ``produce``, then ``run`` delivers them all, and each tool stops cleanly on Ctrl-C."""
    broker = Tool("broker", "--port", "0")
    stub = Tool("stub-api", "--port", "0", "--latency-ms", "1")
    try:
        address = re.search(r"on (\S+:\d+)", await asyncio.to_thread(broker.first_line))
        url = re.search(r"(http://\S+/items)", await asyncio.to_thread(stub.first_line))
        assert address is not None
        assert url is not None
        bootstrap = address.group(1)
        produced = command(
            tmp_path, "produce", "--bootstrap", bootstrap, "--topic", "telemetry", "--count", "30"
        )
        assert 0 == produced.returncode, produced.stderr
        assert f"wrote 30 records to telemetry on {bootstrap}" in produced.stdout
        stage = stage_process(
            clean_env()
            | {
                "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "PIPELINE_KAFKA_TOPICS": "telemetry",
                "PIPELINE_SPACE_API_URL": url.group(1),
                "PIPELINE_METRICS_PORT": str(free_port()),
            }
        )
        stats_url = url.group(1).replace("/items", "/stats")

        async def delivered() -> int:
            async with httpx.AsyncClient() as client:
                return int((await client.get(stats_url)).json()["unique"])

        async def all_delivered() -> bool:
            return await delivered() == 30

        await eventually_async(all_delivered, timeout=20, what="all 30 delivered")
        stage.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(stage.wait, 20)
        assert 30 == await delivered()
    finally:
        codes = [broker.stop(), stub.stop()]
    assert [0, 0] == codes


def test_produce_writes_one_record_per_line_of_stdin(kafka_bootstrap, tmp_path):
    """``--stdin`` turns each non-empty line into a record of its own."""
    args = ["produce", "--bootstrap", kafka_bootstrap, "--topic", f"stdin-{os.getpid()}", "--stdin"]
    result = command(tmp_path, *args, stdin='{"a": 1}\n\n{"a": 2}\n')
    assert 0 == result.returncode, result.stderr
    assert "wrote 2 records" in result.stdout


def test_the_run_command_does_not_import_the_dev_tools():
    """``run`` starts without the stub, the demo or the broker tooling: they are for trying."""
    code = (
        "import sys; from pipeline.cli import build_parser; import pipeline.stage; "
        "build_parser('run'); "
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.dev')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "[]" == result.stdout.strip()


async def test_an_idempotent_dead_letter_producer_on_a_broker_without_it_exits_2_naming_the_fix(
    proxied_kafka, tmp_path
):
    """tansu has no InitProducerId: with the default ``PIPELINE_DEAD_LETTER_IDEMPOTENCE=true``
    the stage cannot dead-letter at all. It exits 2 with one line naming the setting and what to
    set it to, and nothing else on stderr; stdout has only the start's own lines (the producer
    starts once the consumer has reached Kafka): no traceback, no "Unclosed" producer, no error."""
    topic = await proxied_kafka.new_topic(1)
    dlq = f"{topic.name}-dlq"
    await create_topic(topic.bootstrap, dlq, 1)
    env = {
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": topic.bootstrap,
        "PIPELINE_KAFKA_TOPICS": topic.name,
        "PIPELINE_SPACE_API_URL": "http://127.0.0.1:1/items",
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_ON_REJECT": "dead-letter",
        "PIPELINE_DEAD_LETTER_TOPIC": dlq,
    }
    result = await asyncio.to_thread(run_once, tmp_path, **env)

    assert 2 == result.returncode, result.stdout + result.stderr
    logged = [json.loads(line) for line in result.stdout.splitlines()]
    assert [] == [line for line in logged if line["level"] not in ("debug", "info")]
    assert "Traceback" not in result.stdout
    assert "Unclosed" not in result.stdout
    lines = result.stderr.splitlines()
    assert 1 == len(lines), result.stderr
    assert "PIPELINE_DEAD_LETTER_IDEMPOTENCE" in lines[0]
    assert "PIPELINE_DEAD_LETTER_IDEMPOTENCE=false" in lines[0]


def readme_block(after: str) -> str:
    """The first ``sh`` block of the README after the line starting with ``after``."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("```sh\n", text.index("\n" + after)) + len("```sh\n")
    return text[start : text.index("```", start)]


async def test_the_walk_through_with_dead_letters_works_as_written(tmp_path, stage_process):
    """The README's dead-letter variant of the walk-through, its commands and settings taken
    from the README itself (only the addresses are this test's): the refused record lands on
    the dead-letter topic, every other record is delivered, and the stage stops with code 0."""
    block = readme_block("Dead letters instead of a halt").replace("\\\n", " ")
    stub_line, produce_line, run_line = block.strip().splitlines()
    settings = dict(re.findall(r"(PIPELINE_\w+)=(\S+)", run_line))
    broker = Tool("broker", "--port", "0")
    stub_args = stub_line.split()[1:]
    stub_args[stub_args.index("--port") + 1] = "0"
    stub = Tool(*stub_args)
    try:
        address = re.search(r"on (\S+:\d+)", await asyncio.to_thread(broker.first_line))
        url = re.search(r"(http://\S+/items)", await asyncio.to_thread(stub.first_line))
        assert address is not None
        assert url is not None
        bootstrap = address.group(1)
        produced = command(
            tmp_path, "produce", "--bootstrap", bootstrap, "--topic", "telemetry",
            "--partitions", "4", "--count", "30",
        )  # fmt: skip
        assert 0 == produced.returncode, produced.stderr
        created = command(tmp_path, *produce_line.replace("127.0.0.1:9092", bootstrap).split()[1:])
        assert 0 == created.returncode, created.stderr
        settings |= {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PIPELINE_SPACE_API_URL": url.group(1),
            "PIPELINE_METRICS_PORT": str(free_port()),
        }
        stage = stage_process(clean_env() | settings)
        stats_url = url.group(1).replace("/items", "/stats")

        async def all_but_one_delivered() -> bool:
            async with httpx.AsyncClient() as client:
                return int((await client.get(stats_url)).json()["unique"]) == 29

        await eventually_async(all_but_one_delivered, timeout=30, what="29 delivered")
        letters = await dead_letters(bootstrap, settings["PIPELINE_DEAD_LETTER_TOPIC"])
        assert stage.process is not None
        stage.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(stage.wait, 20), stage.logs()
    finally:
        codes = [broker.stop(), stub.stop()]
    assert [0, 0] == codes
    assert [b"telemetry/0/5"] == [
        b"/".join(dict(r.headers)[f"x-original-{h}"] for h in ("topic", "partition", "offset"))
        for r in letters
    ]
