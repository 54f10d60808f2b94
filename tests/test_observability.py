"""The dashboard and the alerts are real: a real Prometheus scrapes a running stage."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from pipeline.dev.stub_api import StubConfig, StubServer
from tests.plugins.broker import new_dlq
from tests.plugins.waiting import eventually
from tests.prometheus_harness import (
    ALERTS,
    alert_expressions,
    dashboard_queries,
    metric_names,
    running_prometheus,
)

pytestmark = pytest.mark.integration

# After a run with some 5xx, a dead letter, a guard trip that halts a partition and a skipped
# record, panels built only from these must show data. The API gate's gauges and counters have no
# labels, so they are exported from the start. Not here: abandoned requests (only at a drain
# deadline), token requests (no OAuth2 in this run) and batch sizes (no batching).
MUST_HAVE_DATA = {
    "space_pipeline_records_consumed_total",
    "space_pipeline_records_delivered_total",
    "space_pipeline_rejections_total",
    "space_pipeline_send_attempts_total",
    "space_pipeline_retries_total",
    "space_pipeline_send_duration_seconds_bucket",
    "space_pipeline_send_duration_seconds_sum",
    "space_pipeline_send_duration_seconds_count",
    "space_pipeline_end_to_end_latency_seconds_bucket",
    "space_pipeline_committed_offset",
    "space_pipeline_consumer_lag_records",
    "space_pipeline_consumer_lag_seconds",
    "space_pipeline_partition_halted",
    "space_pipeline_partition_paused",
    "space_pipeline_inflight_records",
    "space_pipeline_buffered_records",
    "space_pipeline_buffered_bytes",
    "space_pipeline_oldest_unaccepted_age_seconds",
    "space_pipeline_last_progress_timestamp_seconds",
    "space_pipeline_assigned_partitions",
    "space_pipeline_commits_total",
    "space_pipeline_commit_duration_seconds_bucket",
    "space_pipeline_rebalances_total",
    "space_pipeline_build_info",
    "space_pipeline_dead_letters_total",
    "space_pipeline_dead_letter_guard_trips_total",
    "space_pipeline_skipped_records_total",
    "space_pipeline_circuit_state",
    "space_pipeline_circuit_state_seconds",
    "space_pipeline_auth_outage",
    "space_pipeline_auth_failures_total",
    "space_pipeline_throttled_total",
    "space_pipeline_throttle_wait_seconds_total",
    "space_pipeline_rate_limit_wait_seconds_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "up",
}


# What the run counts once, and on which partition.
COUNTED = (
    ("space_pipeline_dead_letters_total", "1"),
    ("space_pipeline_dead_letter_guard_trips_total", "1"),
    ("space_pipeline_rejections_total", "1"),
    ("space_pipeline_skipped_records_total", "0"),
)


@pytest.mark.timeout(180)
async def test_every_dashboard_query_and_alert_evaluates_against_a_running_stage(
    new_topic, stage_process, tmp_path
):
    """Prometheus scrapes a live stage that met 5xx, dead-lettered a rejected record, had its
    dead-letter guard halt a partition and let a named record past; every dashboard query and
    alert expression evaluates without error, and the panels that must show data after such a
    run return series for its topic."""
    topic = await new_topic(3)
    dlq = await new_dlq(topic)
    await topic.produce(300)
    # Partition 1: offset 10 is refused and dead-lettered; offset 20 is refused within the same
    # minute, which trips the guard (one dead letter a minute) and halts the partition there.
    # Partition 0: offset 5 is on the skip list. So the API accepts 99 + 19 + 100 records.
    rejected = frozenset({f"{topic.name}/1/10", f"{topic.name}/1/20"})
    faults = StubConfig(latency_ms=2, error_burst=5, reject_keys=rejected)
    async with StubServer(faults) as api:
        env = topic.env(
            api.url,
            on_reject="dead-letter",
            dead_letter_topic=dlq,
            dead_letter_idempotence="false",  # tansu has no idempotent producer (InitProducerId)
            dead_letter_max_per_minute="1",
            skip_records=f"{topic.name}/0/5",
        )
        proc = stage_process(env)
        target = proc.ops_url.removeprefix("http://")
        with running_prometheus([target], tmp_path, rule_files=[ALERTS]) as prometheus:
            await eventually(
                lambda: api.stats().unique == 99 + 19 + 100, timeout=60, what="all but the halted"
            )
            await asyncio.sleep(1.5)  # a commit round and a gauge refresh
            # Prometheus applies new targets after its discovery interval (5 s): wait for them.
            await asyncio.to_thread(prometheus.wait_for_scrapes, 3)
            assert len(prometheus.targets()) >= 1

            variables = {"namespace": "test", "pod": "test-0", "topic": topic.name}
            empty = []
            for expr in dashboard_queries(variables=variables):
                series = await asyncio.to_thread(prometheus.query, expr)
                if not series and metric_names(expr) <= MUST_HAVE_DATA:
                    empty.append(expr)
            for expr in alert_expressions():
                await asyncio.to_thread(prometheus.query, expr)  # raises on an error
            loaded = await asyncio.to_thread(prometheus.wait_for_rule_evaluations)

            halted = await asyncio.to_thread(
                prometheus.query,
                f'space_pipeline_partition_halted{{topic="{topic.name}", partition="1"}}',
            )
            counted = {}
            for name, partition in COUNTED:
                selector = f'{name}{{topic="{topic.name}", partition="{partition}"}}'
                series = await asyncio.to_thread(prometheus.query, selector)
                counted[name] = [s["value"][1] for s in series]
        async with httpx.AsyncClient() as client:
            readyz = await client.get(f"{proc.ops_url}/readyz")
        proc.process.send_signal(signal.SIGTERM)
        assert 0 == await asyncio.to_thread(proc.wait, 20)

    assert [] == empty, "panels without data after a run"
    assert [] == [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert ["1"] == [s["value"][1] for s in halted]
    assert {name: ["1"] for name, _ in COUNTED} == counted
    assert 200 == readyz.status_code, "a halt is degraded, not NotReady"
    assert f"{topic.name}/1/" in " ".join(readyz.json()["degraded"])
