"""The chart's alerting rules: valid for Prometheus, unit-tested with promtool, documented."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.prometheus_harness import (
    ALERT_TESTS,
    ALERTS,
    ROOT,
    exported_metrics,
    load_rules,
    metric_names,
    metric_selectors,
    promtool,
    standard_metrics,
)
from tests.test_helm import merged

CHART_DIR = ROOT / "helm" / "space-pipeline"
CHART_README = CHART_DIR / "README.md"
RELEASES_TEST = ROOT / "tests" / "alerts" / "releases_test.yaml"
NAMESPACE = "streams"
PLAIN_JOB = 'job="space-pipeline"'
DEFAULT_RUNBOOKS = (
    "https://github.com/space-pipeline/space-pipeline/blob/main/helm/space-pipeline/README.md"
)
# What any install must provide, and monitoring: a PodMonitor gives the job the rules select.
BASE_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/space-pipeline"},
    "config": {
        "kafkaBootstrapServers": "kafka:9092",
        "kafkaTopics": ["orders"],
        "spaceApiUrl": "http://space-api:8080/records",
    },
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}

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
    "SpacePipelineSchemaRegistryDown",
    "SpacePipelineDeadLetterRate",
    "SpacePipelineResultWritesFailing",
    "SpacePipelineNoPartitionsAssigned",
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
    """Alerts are SpacePipeline CamelCase, with for, severity, summary, description, runbook and
    runbook_url."""
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
        missing = {"summary", "description", "runbook", "runbook_url"} - set(rule.annotations)
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
        "SpacePipelineNoPartitionsAssigned",
    }
    assert expected <= names, f"missing alerts: {expected - names}"


@pytest.mark.parametrize("case", ["firing", "quiet"])
def test_every_alert_has_unit_test_cases(case: str) -> None:
    """Every alert has a firing promtool case, and the important ones a case that stays quiet."""
    text = ALERT_TESTS.read_text(encoding="utf-8") + RELEASES_TEST.read_text(encoding="utf-8")
    firing = set(re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:\s*\n\s*- exp_labels:", text))
    quiet = set(re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts: \[\]", text))
    alerts = {rule.name for rule in load_rules() if rule.kind == "alert"}
    if case == "firing":
        assert alerts - firing == set(), f"alerts without a firing case: {alerts - firing}"
    else:
        needed = MUST_HAVE_QUIET_CASE & alerts
        assert needed - quiet == set(), f"alerts without a quiet case: {needed - quiet}"


# --- the rules as the chart renders them, per release ----------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def rendered_rules(
    chart: helm.Chart, values: dict[str, Any] | None = None, *, release: str = "demo"
) -> dict[str, Any]:
    """The PrometheusRule's groups the chart renders for ``release`` in ``NAMESPACE``, as a
    Prometheus rules file."""
    files = chart.render(merged(BASE_VALUES, values or {}), name=release, namespace=NAMESPACE)
    docs = [
        doc
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    (rule,) = [doc for doc in docs if doc.get("kind") == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def chart_rules(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups["groups"] for rule in group["rules"]}


def write_rules(path: Path, groups: dict[str, Any]) -> Path:
    # JSON is YAML: promtool reads it as is.
    path.write_text(json.dumps(groups), encoding="utf-8")
    return path


def test_the_chart_renders_the_rules_file_with_the_release_namespace_and_job(
    chart: helm.Chart,
) -> None:
    """With default values, each rendered rule is files/alerts.yaml's, its job="space-pipeline"
    matchers replaced by the release's namespace and the PodMonitor's job."""
    plain = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rendered = rendered_rules(chart)
    selector = f'namespace="{NAMESPACE}", job="{NAMESPACE}/demo-space-pipeline"'
    for group in plain["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace(PLAIN_JOB, selector)
    assert rendered == plain


def test_every_rendered_selector_matches_its_release_only(chart: helm.Chart) -> None:
    """Every selector of every rendered rule names the release's namespace and scrape job, for a
    PodMonitor, a ServiceMonitor, nameOverride, fullnameOverride and an explicit job."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, f"{NAMESPACE}/demo-space-pipeline"),
        ({"nameOverride": "sp"}, f"{NAMESPACE}/demo-sp"),
        ({"fullnameOverride": "orders-sink"}, f"{NAMESPACE}/orders-sink"),
        ({"podMonitor": {"namespace": "monitoring"}}, "monitoring/demo-space-pipeline"),
        (
            {"podMonitor": {"enabled": False}, "serviceMonitor": {"enabled": True}},
            "demo-space-pipeline-metrics",
        ),
        ({"prometheusRule": {"job": "kubernetes-pods"}}, "kubernetes-pods"),
    ]
    for values, job in cases:
        for name, rule in chart_rules(rendered_rules(chart, values)).items():
            selectors = metric_selectors(rule["expr"])
            assert selectors, name
            for metric, matchers in selectors:
                assert f'namespace="{NAMESPACE}"' in matchers, (values, name, metric)
                assert f'job="{job}"' in matchers, (values, name, metric, matchers)


def test_rules_without_a_monitor_or_a_job_fail_rendering(chart: helm.Chart) -> None:
    """Rules that cannot know the scrape job would select nothing (or everything): the render
    fails, naming what to set."""
    with pytest.raises(helm.HelmRenderError, match=r"prometheusRule\.job"):
        rendered_rules(chart, {"podMonitor": {"enabled": False}})


def test_promtool_runs_the_release_cases_against_the_chart_rendering(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """tests/alerts/releases_test.yaml passes against two releases the chart renders: one with
    nameOverride and a PodMonitor, one with a ServiceMonitor, in one namespace."""
    write_rules(tmp_path / "demo.rules.yaml", rendered_rules(chart, {"nameOverride": "sp"}))
    other = {"podMonitor": {"enabled": False}, "serviceMonitor": {"enabled": True}}
    write_rules(tmp_path / "other.rules.yaml", rendered_rules(chart, other, release="other"))
    shutil.copy(RELEASES_TEST, tmp_path / RELEASES_TEST.name)
    result = promtool("test", "rules", RELEASES_TEST.name, cwd=tmp_path)
    assert result.returncode == 0, _output(result)


def test_values_set_thresholds_durations_severities_and_labels(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """prometheusRule.rules.<alert> sets its threshold, `for:`, severity and extra labels, or
    leaves it out; the result still passes `promtool check rules`."""
    plain = chart_rules(rendered_rules(chart))
    overrides = {
        "SpacePipelineLagAboveSLO": {
            "threshold": 120,
            "for": "5m",
            "severity": "warning",
            "labels": {"team": "streams"},
        },
        "SpacePipelineApiErrorRatioHigh": {"threshold": 0.05},
        "SpacePipelineRebalanceStorm": {"enabled": False},
    }
    groups = rendered_rules(chart, {"prometheusRule": {"rules": overrides}})
    rules = chart_rules(groups)
    lag = rules["SpacePipelineLagAboveSLO"]
    assert lag["expr"] == plain["SpacePipelineLagAboveSLO"]["expr"].replace("> 300", "> 120")
    assert lag["for"] == "5m"
    assert lag["labels"] == {"severity": "warning", "team": "streams"}
    errors = rules["SpacePipelineApiErrorRatioHigh"]["expr"]
    assert errors == plain["SpacePipelineApiErrorRatioHigh"]["expr"].replace("> 0.2", "> 0.05")
    assert "SpacePipelineRebalanceStorm" not in rules
    untouched = set(rules) - set(overrides)
    assert {name: rules[name] for name in untouched} == {name: plain[name] for name in untouched}
    result = promtool("check", "rules", str(write_rules(tmp_path / "rules.yaml", groups)))
    assert result.returncode == 0, _output(result)


def test_every_threshold_the_values_name_is_in_its_rule(chart: helm.Chart) -> None:
    """Each alert whose threshold values may set renders a different expression with another
    threshold; the others refuse one."""
    plain = chart_rules(rendered_rules(chart))
    thresholds = {
        "SpacePipelineLagAboveSLO",
        "SpacePipelinePartitionStalled",
        "SpacePipelineApiErrorRatioHigh",
        "SpacePipelineDeadLetterRate",
        "SpacePipelineRebalanceStorm",
    }
    for name in plain:
        values = {"prometheusRule": {"rules": {name: {"threshold": 7777}}}}
        if name in thresholds:
            expr = chart_rules(rendered_rules(chart, values))[name]["expr"]
            assert "7777" in expr, name
            assert expr != plain[name]["expr"], name
        else:
            with pytest.raises(helm.HelmRenderError, match=f"{name} has no threshold"):
                rendered_rules(chart, values)


def test_runbook_urls_point_to_a_section_of_the_chart_readme(chart: helm.Chart) -> None:
    """Every alert's runbook_url is prometheusRule.runbookBaseUrl plus the anchor of a
    `### <alert>` section under the chart README's `## Runbooks`, which holds its runbook."""
    readme = CHART_README.read_text(encoding="utf-8")
    assert "\n## Runbooks\n" in readme
    runbooks = readme.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    sections = dict(
        (match[1], match[2])
        for match in re.finditer(r"(?ms)^### (\w+)\n(.*?)(?=^### |\Z)", runbooks)
    )
    base = "https://runbooks.example.com/space-pipeline"
    rendered = chart_rules(rendered_rules(chart, {"prometheusRule": {"runbookBaseUrl": base}}))
    for rule in load_rules():
        if rule.kind != "alert":
            continue
        assert rule.name in sections, f"no `### {rule.name}` under ## Runbooks"
        assert rule.annotations["runbook_url"] == f"{DEFAULT_RUNBOOKS}#{rule.name.lower()}"
        assert rendered[rule.name]["annotations"]["runbook_url"] == f"{base}#{rule.name.lower()}"
        prose = " ".join(sections[rule.name].split())
        assert " ".join(rule.annotations["runbook"].split()) in prose, rule.name
        defaults = f"Defaults: `severity: {rule.labels['severity']}`, `for: {rule.for_}`"
        assert prose.startswith(defaults), f"{rule.name}: {prose[:80]!r}"


@pytest.mark.parametrize(
    "override",
    [
        {"severity": "page"},
        {"for": "ten minutes"},
        {"threshold": "300"},
        {"labels": {"team": 7}},
        {"runbook": "elsewhere"},
    ],
    ids=lambda override: json.dumps(override, sort_keys=True),
)
def test_the_schema_refuses_a_malformed_rule_override(
    chart: helm.Chart, override: dict[str, Any]
) -> None:
    """prometheusRule.rules.<alert> takes a known severity, a Prometheus duration, a number, string
    labels and nothing else."""
    values = {"prometheusRule": {"rules": {"SpacePipelineLagAboveSLO": override}}}
    with pytest.raises(helm.HelmValuesError):
        rendered_rules(chart, values)


def test_an_override_for_an_alert_that_does_not_exist_fails_rendering(chart: helm.Chart) -> None:
    """A misspelt alert name under prometheusRule.rules would be ignored silently: it fails."""
    values = {"prometheusRule": {"rules": {"SpacePipelineLagAboveSlo": {"for": "5m"}}}}
    with pytest.raises(helm.HelmRenderError, match="SpacePipelineLagAboveSlo"):
        rendered_rules(chart, values)
