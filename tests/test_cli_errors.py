"""Every command ends an obvious mistake in one line saying what to change, and a non-zero code.

A port someone else holds, a broker that is not there: no traceback, no stray "Unclosed" line from
a client that was built but never used (issue 18).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.dev.broker import free_port
from pipeline.dev.stub_api import config_from_args
from tests.plugins.environment import VALID
from tests.plugins.processes import command, run_once


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process (this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert 1 == len(lines), stderr
    return lines[0]


def test_run_on_a_busy_metrics_port_exits_2_naming_the_setting(
    kafka_bootstrap: str, tmp_path: Path, busy_port: int
) -> None:
    """A second stage on one machine: one line naming PIPELINE_METRICS_PORT and the address, exit
    2 (a setting to change), and nothing about a consumer left unclosed."""
    result = run_once(
        tmp_path,
        **VALID
        | {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "PIPELINE_METRICS_HOST": "127.0.0.1",
            "PIPELINE_METRICS_PORT": str(busy_port),
        },
    )

    assert 2 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith("space-pipeline: PIPELINE_METRICS_PORT")
    assert f"127.0.0.1:{busy_port}" in line
    assert "Unclosed" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_stub_api_on_a_busy_port_says_so_in_one_line(tmp_path: Path, busy_port: int) -> None:
    """``stub-api --port`` someone holds: one line naming --port, not a 37-line traceback."""
    result = command(tmp_path, "stub-api", "--port", str(busy_port))

    assert 2 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--port" in line
    assert f"127.0.0.1:{busy_port}" in line
    assert "Traceback" not in result.stdout


def test_broker_on_a_busy_port_says_so_in_one_line(tmp_path: Path, busy_port: int) -> None:
    """``broker --port`` someone holds: one line, not tansu's panic."""
    result = command(tmp_path, "broker", "--port", str(busy_port))

    assert 2 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--port" in line
    assert f"127.0.0.1:{busy_port}" in line
    assert "panicked" not in result.stdout + result.stderr


def test_produce_to_a_broker_nobody_runs_says_so_in_one_line(tmp_path: Path) -> None:
    """``produce`` before ``broker``: one line naming --bootstrap and the address, exit 1."""
    address = f"127.0.0.1:{free_port()}"
    result = command(tmp_path, "produce", "--bootstrap", address, "--topic", "t", "--count", "1")

    assert 1 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--bootstrap" in line
    assert address in line
    assert "Traceback" not in result.stdout


def test_offsets_against_a_broker_nobody_runs_says_so_in_one_line(tmp_path: Path) -> None:
    """``offsets show`` before the broker is up: one line, exit 1."""
    address = f"127.0.0.1:{free_port()}"
    result = command(
        tmp_path, "offsets", "show", **VALID | {"PIPELINE_KAFKA_BOOTSTRAP_SERVERS": address}
    )

    assert 1 == result.returncode, result.stdout + result.stderr
    assert address in one_line(result.stderr)


def test_status_of_a_stage_nobody_runs_says_so_in_one_line(tmp_path: Path) -> None:
    """The admin commands when no stage answers: one line naming the URL, exit 1."""
    url = f"http://127.0.0.1:{free_port()}"
    result = command(tmp_path, "status", "--url", url, PIPELINE_ADMIN_TOKEN="t0ken")

    assert 1 == result.returncode, result.stdout + result.stderr
    assert url in one_line(result.stderr)


@pytest.mark.integration
def test_a_demo_of_fewer_records_than_the_folk_sample_ends(tmp_path: Path) -> None:
    """``demo --records 10``: the folk-way comparison takes what there is instead of waiting
    forever for its sample of 100."""
    result = command(
        tmp_path, "demo", "--records", "10", "--partitions", "2", "--latency-ms", "1",
        "--fault", "none",
    )  # fmt: skip

    assert 0 == result.returncode, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


# stub-api --reject-key names a record by its Idempotency-Key


def stub_args(*args: str) -> argparse.Namespace:
    return build_parser("stub-api").parse_args(["stub-api", *args])


def test_the_reject_flag_says_it_takes_the_idempotency_key_not_the_kafka_key(
    tmp_path: Path,
) -> None:
    """``--reject-idempotency-key`` (and the old ``--reject-key``): the help says it is the
    record's ``topic/partition/offset``, the Idempotency-Key, and not its Kafka key."""
    result = command(tmp_path, "stub-api", "--help")
    text = " ".join(result.stdout.split())

    assert "--reject-idempotency-key TOPIC/PARTITION/OFFSET" in text
    assert "--reject-key" in text
    assert "not its Kafka key" in text


def test_the_old_reject_key_flag_still_works() -> None:
    """Scripts that say ``--reject-key t/0/5`` keep working, beside the new spelling."""
    config = config_from_args(
        stub_args("--reject-key", "t/0/5", "--reject-idempotency-key", "t/1/7")
    )

    assert frozenset({"t/0/5", "t/1/7"}) == config.reject_keys


def test_a_kafka_key_given_as_a_reject_key_is_refused_saying_what_it_takes(
    tmp_path: Path,
) -> None:
    """``--reject-key item-5`` (a Kafka key) would reject nothing, silently: one line says the
    flag takes TOPIC/PARTITION/OFFSET, exit 2."""
    result = command(tmp_path, "stub-api", "--port", "0", "--reject-key", "item-5")

    assert 2 == result.returncode, result.stdout + result.stderr
    assert "TOPIC/PARTITION/OFFSET" in result.stderr
    assert "item-5" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("demo", "--partitions", "0"),
        ("demo", "--records", "0"),
        ("demo", "--latency-ms", "-1"),
        ("produce", "--topic", "t", "--partitions", "0"),
        ("produce", "--topic", "t", "--count", "-1"),
    ],
)
def test_a_count_out_of_range_is_a_usage_error_naming_the_flag(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """``demo --partitions 0`` divided by zero in a traceback: the flag is named instead, and
    nothing is started."""
    result = command(tmp_path, *args)

    assert 2 == result.returncode, result.stdout + result.stderr
    assert args[-2] in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_produce_avro_with_no_registry_running_says_so_in_one_line(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``produce --avro`` before ``schema-registry``: one line naming --registry, exit 1."""
    registry = f"http://127.0.0.1:{free_port()}"
    schema = Path(__file__).resolve().parents[1] / "examples" / "order.avsc"
    args = ["produce", "--bootstrap", kafka_bootstrap, "--topic", f"avro-{free_port()}"]

    result = command(
        tmp_path, *args, "--avro", str(schema), "--registry", registry, "--stdin", stdin="{}\n"
    )

    assert 1 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--registry" in line
    assert registry in line


def test_produce_avro_with_a_schema_file_that_is_not_there_is_a_usage_error(
    tmp_path: Path,
) -> None:
    """A mistyped schema path: one line naming --avro, exit 2, before anything is sent."""
    result = command(tmp_path, "produce", "--topic", "t", "--avro", "nosuch.avsc", "--stdin")

    assert 2 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--avro" in line
    assert "nosuch.avsc" in line


def test_schema_registry_on_a_busy_port_says_so_in_one_line(tmp_path: Path, busy_port: int) -> None:
    """``schema-registry --port`` someone holds: one line naming --port, exit 2."""
    result = command(tmp_path, "schema-registry", "--port", str(busy_port))

    assert 2 == result.returncode, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "--port" in line
    assert f"127.0.0.1:{busy_port}" in line
