"""The Prometheus harness: a real Prometheus scrapes the catalogue and runs every shipped query."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from pipeline import metrics
from tests.prometheus_harness import (
    ALERTS,
    PrometheusError,
    alert_expressions,
    dashboard_queries,
    expand_grafana_variables,
    load_rules,
    metric_selectors,
    running_prometheus,
)

TOPIC = "harness-smoke"
PARTITION = "0"
VARIABLES = {"namespace": "test", "pod": "test-0", "topic": TOPIC}


def _set_samples() -> list[tuple[MetricWrapperBase, tuple[str, ...]]]:
    """Give the catalogue a few values on children only this test uses; return them for removal."""
    created: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []

    def child(metric: MetricWrapperBase, *labels: str) -> Any:
        created.append((metric, labels))
        return metric.labels(*labels)

    tp = (TOPIC, PARTITION)
    child(metrics.RECORDS_CONSUMED, *tp).inc(10)
    child(metrics.RECORDS_DELIVERED, *tp).inc(9)
    child(metrics.REJECTIONS, *tp).inc()
    child(metrics.RETRIES, *tp, "5xx").inc(2)
    for gauge, value in (
        (metrics.INFLIGHT, 1),
        (metrics.BUFFERED, 3),
        (metrics.BUFFERED_BYTES, 300),
        (metrics.PAUSED, 0),
        (metrics.HALTED, 0),
        (metrics.COMMITTED_OFFSET, 9),
        (metrics.LAG_RECORDS, 1),
        (metrics.LAG_SECONDS, 0.5),
        (metrics.OLDEST_UNACCEPTED_AGE, 0.4),
        (metrics.LAST_PROGRESS, time.time()),
    ):
        child(gauge, *tp).set(value)
    # Children other tests may already hold are left alone: only absent ones are created.
    for metric, name, labels in (
        (metrics.SEND_ATTEMPTS, "space_pipeline_send_attempts_total", {"status_class": "2xx"}),
        (metrics.COMMITS, "space_pipeline_commits_total", {"result": "ok"}),
        (metrics.REBALANCES, "space_pipeline_rebalances_total", {"event": "assigned"}),
    ):
        if REGISTRY.get_sample_value(name, labels) is None:
            child(metric, *labels.values()).inc()
    return created


@pytest.fixture
def exporter() -> Iterator[str]:
    """The default registry (pipeline.metrics plus process_*) served on a loopback port."""
    created = _set_samples()
    assigned_before = REGISTRY.get_sample_value("space_pipeline_assigned_partitions") or 0.0
    metrics.ASSIGNED_PARTITIONS.set(1)
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        metrics.ASSIGNED_PARTITIONS.set(assigned_before)
        for metric, labels in created:
            metric.remove(*labels)


@pytest.mark.timeout(60)
def test_real_prometheus_runs_every_dashboard_and_alert_query(
    exporter: str, tmp_path: Path
) -> None:
    """Prometheus scrapes the catalogue; every dashboard query and alert expression evaluates."""
    with running_prometheus([exporter], tmp_path, rule_files=[ALERTS]) as prometheus:
        prometheus.wait_for_scrapes(2)

        build = prometheus.query('space_pipeline_build_info{namespace="test", pod="test-0"}')
        assert build, "the static namespace/pod labels did not reach the scraped series"
        assert build[0]["metric"]["job"] == "space-pipeline"

        for expr in dashboard_queries() + alert_expressions():
            prometheus.query(expr)  # raises PrometheusError on a query error

        # With the variables set to the sample's labels, the per-partition panels find it.
        lag = next(
            expanded
            for raw, expanded in zip(
                dashboard_queries(expand=False),
                dashboard_queries(variables=VARIABLES),
                strict=True,
            )
            if raw.startswith("max by (topic, partition) (space_pipeline_consumer_lag_records")
        )
        series = prometheus.query(lag)
        assert [s["metric"] for s in series] == [{"topic": TOPIC, "partition": PARTITION}]
        assert float(series[0]["value"][1]) == 1.0

        # Prometheus loaded the same alerts as the harness reads, and evaluates them cleanly.
        loaded = prometheus.wait_for_rule_evaluations()
        assert sorted(rule["name"] for rule in loaded) == sorted(r.name for r in load_rules())
        broken = [
            (rule["name"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"
        ]
        assert not broken, broken
        firing = [rule["name"] for rule in loaded if rule.get("alerts")]
        assert "SpacePipelineTargetDown" not in firing
        assert "SpacePipelineTargetMissing" not in firing


def test_query_errors_raise(tmp_path: Path) -> None:
    """A query Prometheus refuses raises PrometheusError carrying Prometheus's message."""
    with running_prometheus([], tmp_path) as prometheus:
        with pytest.raises(PrometheusError, match="parse error"):
            prometheus.query("sum(rate(up[1m])")
        assert prometheus.query("vector(1)")[0]["value"][1] == "1"
        assert prometheus.query("1 + 1")[0]["value"][1] == "2"


def test_variables_and_intervals_expand() -> None:
    """Grafana's $__rate_interval becomes the interval, known $vars their value, others `.*`."""
    expr = 'rate(x{a=~"$namespace", b=~"${pod}", c=~"[[topic]]"}[$__rate_interval])'
    assert expand_grafana_variables(expr, {"pod": "p-0"}, interval="2m") == (
        'rate(x{a=~".*", b=~"p-0", c=~".*"}[2m])'
    )


def test_metric_selectors_skip_functions_labels_and_strings() -> None:
    """Selector extraction returns metric names with their matchers, nothing else."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(m_bucket{a="x{y}", b=~"by (z)"}[5m])))'
        " / on (pod) group_left () other offset 5m > bool 1e3 and time() - last"
    )
    assert metric_selectors(expr) == [
        ("m_bucket", 'a="x{y}", b=~"by (z)"'),
        ("other", ""),
        ("last", ""),
    ]
