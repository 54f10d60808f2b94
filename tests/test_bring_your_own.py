"""Bring your own Space API: your function, request mapping, OAuth2 and ordered batches."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path

import pytest

from pipeline.dev.stub_api import StubConfig, StubServer
from tests.plugins.broker import new_dlq
from tests.plugins.environment import VALID
from tests.plugins.processes import run_once
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually
from tests.test_outcomes import DLQ, dead_letters

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_readme_example_function_is_the_sink(new_topic, stage_process, tmp_path):
    """The README's example runs as written: ``space_client:send_to_space`` (blocking, from the
    working directory) gets each record's JSON, in order per partition, and the offsets are
    committed to the end."""
    shutil.copy(EXAMPLES / "space_client.py", tmp_path)
    topic = await new_topic(4)
    await topic.produce(120)
    out = tmp_path / "space-items.jsonl"
    env = topic.env(
        None,
        sink_function="space_client:send_to_space",
        sink_argument="json",
        sink_reject_exceptions="space_client.SpaceRejected",
    )
    proc = stage_process(env, cwd=tmp_path)
    await eventually(lambda: len(written(out)) == 120, timeout=60, what="all 120 written")
    proc.process.send_signal(signal.SIGTERM)
    assert 0 == await asyncio.to_thread(proc.wait, 20)
    items = written(out)
    for partition in range(4):
        seqs = [item["seq"] for item in items if item["seq"] % 4 == partition]
        assert sorted(seqs) == seqs, f"partition {partition} out of order"
    assert topic.expected_end(120) == await topic.committed()


async def test_a_function_that_refuses_an_item_halts_its_partition(
    new_topic, tmp_path, monkeypatch
):
    """An exception type listed as a rejection halts the partition at that record."""
    shutil.copy(EXAMPLES / "space_client.py", tmp_path)
    topic = await new_topic(1)
    items = ({"seq": seq, "reject": seq == 3} for seq in range(6))
    await topic.send(*({"value": json.dumps(item).encode(), "partition": 0} for item in items))
    out = tmp_path / "space-items.jsonl"
    monkeypatch.setenv("SPACE_CLIENT_OUTPUT", str(out))
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = topic.settings(
        None,
        sink_function="space_client:send_to_space",
        sink_argument="json",
        sink_reject_exceptions=("space_client.SpaceRejected",),
    )
    async with running_stage(settings) as stage:
        await eventually(lambda: "halted" in stage.ready().reason, what="the halt")
        await asyncio.sleep(0.3)
    assert [0, 1, 2] == [item["seq"] for item in written(out)]
    assert {0: 3} == await topic.committed()


async def test_the_url_method_headers_and_tombstones_map_as_configured(new_topic):
    """A templated URL per partition, PUT, W3C trace context forwarded, and tombstones as
    DELETE: all seen by the API as configured, in order."""
    topic = await new_topic(2)
    await topic.send(
        *(
            {
                "value": None if i == 9 else b'{"seq": %d}' % i,
                "key": b"k%d" % i,
                "partition": i % 2,
                "headers": [("traceparent", b"00-%032x-%016x-01" % (i + 1, i + 1))],
            }
            for i in range(10)
        )
    )
    async with StubServer(StubConfig(latency_ms=1)) as api:
        url = f"{api.url}/{{topic}}/{{partition}}/{{key}}"
        settings = topic.settings(url, space_api_method="PUT", tombstones="delete")
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 10, what="all 10")
        stats = api.stats(offsets=True)
    assert {"PUT": 9, "DELETE": 1} == dict(stats.methods)
    assert stats.paths is not None
    assert f"/items/{topic.name}/1/k9" in stats.paths
    assert f"/items/{topic.name}/0/k0" in stats.paths
    assert 0 == stats.order_violations


async def test_oauth2_client_credentials_end_to_end(new_topic):
    """With OAuth2 settings the stage fetches one token and delivers everything with it."""
    topic = await new_topic(4)
    await topic.produce(200)
    config = StubConfig(latency_ms=1, oauth2_client_id="stage", oauth2_client_secret="s3cret")
    async with StubServer(config) as api:
        settings = topic.settings(
            api.url,
            oauth2_token_url=api.token_url,
            oauth2_client_id="stage",
            oauth2_client_secret="s3cret",
            oauth2_extra_params={"audience": "space"},
        )
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 200, what="all 200")
        stats = api.stats()
    assert 1 == stats.token_requests
    assert 0 == stats.auth_failures
    assert "space" == stats.last_token_params["audience"]


@pytest.mark.parametrize("batch_format", ["json-array", "ndjson"])
async def test_ordered_batches_deliver_everything_in_order(new_topic, batch_format):
    """Batches of up to 25 consecutive records per partition: every record once, in order
    inside and across batches, committed to the end only after acceptance."""
    topic = await new_topic(4)
    await topic.produce(400)
    async with StubServer(StubConfig(latency_ms=5)) as api:
        settings = topic.settings(api.url, batch_max_records=25, batch_format=batch_format)
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 400, what="all 400")
        stats = api.stats()
    assert 0 == stats.order_violations
    assert 0 == stats.header_mismatches
    assert stats.batches < 400 / 2, "records went in batches"
    assert 25 >= stats.max_batch_size > 1
    assert topic.expected_end(400) == await topic.committed()


async def test_a_rejected_batch_is_split_so_only_the_bad_record_meets_the_rule(new_topic):
    """A batch holding one poisoned record is refused whole; it is split until that record is
    alone, which is dead-lettered, while every other record is delivered and committed."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    await topic.produce(100)
    poison = frozenset({f"{topic.name}/1/17"})
    async with StubServer(StubConfig(latency_ms=1, reject_keys=poison)) as api:
        settings = topic.settings(api.url, batch_max_records=20, dead_letter_topic=dlq, **DLQ)
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 99, what="all but the poisoned")
        stats = api.stats()
    letters = await dead_letters(topic.bootstrap, dlq)
    assert [b"17"] == [dict(r.headers)["x-original-offset"] for r in letters]
    assert 0 == stats.order_violations
    assert topic.expected_end(100) == await topic.committed()


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"PIPELINE_SPACE_API_URL": "http://api/{nope}"}, "PIPELINE_SPACE_API_URL"),
        ({"PIPELINE_SPACE_API_METHOD": "GET"}, "PIPELINE_SPACE_API_METHOD"),
        ({"PIPELINE_SINK_FUNCTION": "no_such_module:send"}, "PIPELINE_SINK_FUNCTION"),
        ({"PIPELINE_SINK_FUNCTION": "json:__doc__"}, "PIPELINE_SINK_FUNCTION"),
        ({"PIPELINE_SINK_REJECT_EXCEPTIONS": "json.dumps"}, "PIPELINE_SINK_REJECT_EXCEPTIONS"),
        ({"PIPELINE_BATCH_FORMAT": "xml"}, "PIPELINE_BATCH_FORMAT"),
    ],
)
def test_bad_sink_settings_exit_2_naming_the_setting(env, setting, tmp_path):
    """A wrong template, method, function or exception name fails at start, naming it."""
    valid = dict(VALID)
    if "PIPELINE_SINK_FUNCTION" in env:
        del valid["PIPELINE_SPACE_API_URL"]
    result = run_once(tmp_path, **(valid | env))
    assert 2 == result.returncode
    assert setting in result.stderr, result.stderr
