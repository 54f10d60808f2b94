"""The chart's Grafana dashboard: well-formed, its queries valid PromQL over the catalogue."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.prometheus_harness import (
    DASHBOARD,
    dashboard_panels,
    dashboard_queries,
    expand_grafana_variables,
    exported_metrics,
    load_dashboard,
    metric_names,
    metric_selectors,
    promtool,
    standard_metrics,
    template_variable_queries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTERS = ('namespace=~"$namespace"', 'job=~"$job"', 'pod=~"$pod"')
TOPIC_FILTER = 'topic=~"$topic"'
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def _variable_selectors() -> dict[str, str]:
    selectors = {}
    for name, query in template_variable_queries().items():
        match = LABEL_VALUES.match(query.strip())
        assert match, f"variable {name}: not a label_values() query: {query!r}"
        if match["selector"]:
            selectors[name] = match["selector"]
    return selectors


def test_dashboard_is_importable_grafana_json() -> None:
    """The JSON loads, with a uid, a title, schemaVersion 39 and a datasource variable."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "space-pipeline"
    assert dashboard["title"]
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "an id ties the JSON to one Grafana instance"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "topic"):
        assert variables[name]["type"] == "query", name
        assert variables[name]["datasource"] == DATASOURCE, name
        assert variables[name]["includeAll"] is True, name
        assert variables[name]["multi"] is True, name
    assert "DS_" not in DASHBOARD.read_text(encoding="utf-8"), "use ${datasource}, not __inputs"


def test_the_job_variable_picks_one_release() -> None:
    """$job lists the scrape jobs (one per release) of the chosen namespaces, one at a time, and
    the pod and topic variables are narrowed to it."""
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    names = [v["name"] for v in load_dashboard()["templating"]["list"]]
    assert names.index("namespace") < names.index("job") < names.index("pod")
    job = variables["job"]
    assert job["type"] == "query"
    assert job["datasource"] == DATASOURCE
    assert job["multi"] is False
    assert job["includeAll"] is False
    queries = template_variable_queries()
    assert queries["job"] == 'label_values(space_pipeline_build_info{namespace=~"$namespace"}, job)'
    for name in ("pod", "topic"):
        assert 'job=~"$job"' in queries[name], name


def test_every_panel_has_a_target_on_the_datasource_variable() -> None:
    """Each non-row panel queries ${datasource} with at least one non-empty PromQL target."""
    panels = [panel for panel in dashboard_panels() if panel["type"] != "row"]
    assert panels
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no target"
        assert len({target["refId"] for target in targets}) == len(targets), title
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            assert target.get("expr", "").strip(), f"panel {title!r} has an empty query"


def test_panel_ids_are_unique_and_the_grid_fits() -> None:
    """Panel ids are unique and every panel fits Grafana's 24-column grid without overlapping."""
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["w"] > 0
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel and variable query, with variables expanded, passes `promtool check rules`."""
    expressions = dashboard_queries() + [
        expand_grafana_variables(selector) for selector in _variable_selectors().values()
    ]
    rules = [
        {"record": f"dashboard:query_{i:03d}", "expr": expr} for i, expr in enumerate(expressions)
    ]
    rules_file = tmp_path / "dashboard-rules.yaml"
    # JSON is YAML: no YAML library needed.
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_queries_read_only_catalogue_metrics() -> None:
    """Every metric the dashboard reads is in pipeline/metrics.py or is `up`/`process_*`."""
    known = set(exported_metrics()) | standard_metrics()
    for expr in dashboard_queries(expand=False) + list(_variable_selectors().values()):
        unknown = metric_names(expr) - known
        assert not unknown, f"unknown metrics {unknown} in {expr}"


def test_queries_filter_on_namespace_job_pod_and_topic() -> None:
    """Every selector filters on $namespace, $job (the release) and $pod, and on $topic when the
    metric has a topic: two releases in one namespace are never summed together."""
    catalogue = exported_metrics()
    for expr in dashboard_queries(expand=False):
        selectors = metric_selectors(expr)
        assert selectors, f"no metric in {expr}"
        for name, matchers in selectors:
            for wanted in FILTERS:
                assert wanted in matchers, f"{name} lacks {wanted} in {expr}"
            if "topic" in catalogue.get(name, ()):
                assert TOPIC_FILTER in matchers, f"{name} lacks {TOPIC_FILTER} in {expr}"


def test_dashboard_shows_the_whole_catalogue() -> None:
    """Each metric family of pipeline/metrics.py appears in some panel, as do CPU and memory."""
    used = set().union(*(metric_names(expr) for expr in dashboard_queries(expand=False)))
    families: dict[str, set[str]] = {}
    for name in exported_metrics():
        family = re.sub(r"_(total|bucket|sum|count|info)$", "", name)
        families.setdefault(family, set()).add(name)
    missing = sorted(family for family, names in families.items() if not names & used)
    assert not missing, f"metrics without a panel: {missing}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= used


def test_latency_panels_show_p50_p95_p99() -> None:
    """Send and end-to-end latency are shown as histogram_quantile p50, p95 and p99."""
    queries = dashboard_queries(expand=False)
    for histogram in (
        "space_pipeline_send_duration_seconds_bucket",
        "space_pipeline_end_to_end_latency_seconds_bucket",
    ):
        quantiles = {
            match
            for expr in queries
            if histogram in expr
            for match in re.findall(r"histogram_quantile\((0\.\d+),", expr)
        }
        assert quantiles == {"0.5", "0.95", "0.99"}, (histogram, quantiles)
    assert any("rate(process_cpu_seconds_total" in expr for expr in queries)
