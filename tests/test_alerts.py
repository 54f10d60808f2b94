"""The chart's alerting rules: valid for Prometheus, unit-tested with promtool, documented."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.prometheus_harness import (
    ALERT_TESTS,
    ALERTS,
    ROOT,
    exported_metrics,
    load_rules,
    metric_names,
    promtool,
    standard_metrics,
)

SEVERITIES = {"info", "warning", "critical"}
# The alerts whose quiet cases matter most: each needs a case that must not fire.
MUST_HAVE_QUIET_CASE = {
    "SpacePipelineLagAboveSLO",
    "SpacePipelineLagGrowing",
    "SpacePipelinePartitionStalled",
    "SpacePipelineRecordsRejected",
    "SpacePipelineApiErrorRatioHigh",
    "SpacePipelineNoCommits",
    "SpacePipelineCommitFailures",
    "SpacePipelineRebalanceStorm",
    "SpacePipelineCircuitOpen",
    "SpacePipelineAuthFailing",
    "SpacePipelineEndpointWrong",
    "SpacePipelineDeadLetterRate",
}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_promtool_check_rules_accepts_the_alerts_file() -> None:
    """`promtool check rules` accepts alerts.yaml and counts as many rules as the harness reads."""
    result = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, _output(result)
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert found, _output(result)
    assert int(found[1]) == len(load_rules()), "the harness's YAML reader missed rules"


def test_promtool_rule_unit_tests_pass() -> None:
    """Every case in tests/alerts/alerts_test.yaml passes under `promtool test rules`."""
    result = promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, _output(result)
    assert "SUCCESS" in result.stdout + result.stderr, _output(result)


def test_alerts_are_named_and_documented() -> None:
    """Alerts are SpacePipeline CamelCase, with for, severity, summary, description and runbook."""
    rules = load_rules()
    alerts = [rule for rule in rules if rule.kind == "alert"]
    assert alerts, "no alerting rules"
    assert len({rule.name for rule in alerts}) == len(alerts), "duplicate alert names"
    for rule in alerts:
        assert re.fullmatch(r"SpacePipeline(?:[A-Z][a-z0-9]*|[A-Z]+(?![a-z]))+", rule.name), (
            rule.name
        )
        assert rule.for_, f"{rule.name} has no `for:`"
        assert rule.labels.get("severity") in SEVERITIES, f"{rule.name}: {rule.labels}"
        missing = {"summary", "description", "runbook"} - set(rule.annotations)
        assert not missing, f"{rule.name} lacks annotations {missing}"


def test_alerts_read_only_catalogue_metrics() -> None:
    """Every metric an alert reads is in pipeline/metrics.py or is a standard target metric."""
    known = set(exported_metrics()) | standard_metrics()
    for rule in load_rules():
        unknown = metric_names(rule.expr) - known
        assert not unknown, f"{rule.name} reads metrics outside the catalogue: {unknown}"


def test_expected_alerts_exist() -> None:
    """Alerts cover lag, stalls, halts, rejections, dead letters, the API gate (circuit and
    credentials), API errors, commits, rebalances and scraping."""
    names = {rule.name for rule in load_rules() if rule.kind == "alert"}
    expected = MUST_HAVE_QUIET_CASE | {
        "SpacePipelinePartitionHalted",
        "SpacePipelineDeadLetterGuardTripped",
        "SpacePipelineTargetDown",
        "SpacePipelineTargetMissing",
    }
    assert expected <= names, f"missing alerts: {expected - names}"


@pytest.mark.parametrize("case", ["firing", "quiet"])
def test_every_alert_has_unit_test_cases(case: str) -> None:
    """Every alert has a firing promtool case, and the important ones a case that stays quiet."""
    text = ALERT_TESTS.read_text(encoding="utf-8")
    firing = set(re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:\s*\n\s*- exp_labels:", text))
    quiet = set(re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts: \[\]", text))
    alerts = {rule.name for rule in load_rules() if rule.kind == "alert"}
    if case == "firing":
        assert alerts - firing == set(), f"alerts without a firing case: {alerts - firing}"
    else:
        needed = MUST_HAVE_QUIET_CASE & alerts
        assert needed - quiet == set(), f"alerts without a quiet case: {needed - quiet}"
