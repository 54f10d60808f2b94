"""Run the real Prometheus against the stage, and read the PromQL the chart ships.

``running_prometheus`` starts the ``prometheus`` binary (Debian package ``prometheus``) on a free
loopback port with a generated configuration and waits until it is ready. ``dashboard_queries``
and ``alert_expressions`` return the PromQL of the Grafana dashboard and of the alerting rules, so
tests can hand them to Prometheus or ``promtool``. Only the standard library, httpx (a project
dependency) and pytest are used: the rules file is read with a small parser for the subset of YAML
it is written in, which ``test_alerts`` cross-checks against ``promtool``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import PROCESS_COLLECTOR
from prometheus_client.metrics import MetricWrapperBase

import pipeline.metrics

ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = ROOT / "helm" / "space-pipeline" / "files"
DASHBOARD = CHART_FILES / "space-pipeline-dashboard.json"
ALERTS = CHART_FILES / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "alerts" / "alerts_test.yaml"

JOB_NAME = "space-pipeline"
DEFAULT_LABELS: Mapping[str, str] = {"namespace": "test", "pod": "test-0"}
INSTALL_HINT = (
    "the Prometheus binaries are missing: install the Debian package "
    "(`apt-get update && apt-get install -y --no-install-recommends prometheus`, "
    "which provides /usr/bin/prometheus and /usr/bin/promtool; the Makefile does this)"
)


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or answered a request with an error."""


def require_binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fail the test with how to install it if absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(
    *args: str, cwd: Path = ROOT, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args`` and return the completed process (never raises on failure)."""
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- the dashboard ----------------------------------------------------------------------------

_GRAFANA_INTERVAL = re.compile(r"\$\{?__(?:rate_interval|interval|range)(?:_ms|_s)?\}?")
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def expand_grafana_variables(
    expr: str, variables: Mapping[str, str] | None = None, *, interval: str = "1m"
) -> str:
    """Replace Grafana's ``$__rate_interval``-style intervals and ``$var`` template variables.

    Variables not in ``variables`` become ``.*`` (they are only used in ``=~`` matchers).
    """
    values = variables or {}
    expr = _GRAFANA_INTERVAL.sub(interval, expr)

    def variable(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, ".*")

    return _GRAFANA_VARIABLE.sub(variable, expr)


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels inside the row.
        yield from _panels(panel.get("panels", []))


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON as a dict."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def dashboard_panels(path: Path = DASHBOARD) -> list[Mapping[str, Any]]:
    """Every panel, rows included, with collapsed rows' panels flattened in."""
    return list(_panels(load_dashboard(path)["panels"]))


def dashboard_queries(
    path: Path = DASHBOARD,
    *,
    expand: bool = True,
    variables: Mapping[str, str] | None = None,
    interval: str = "1m",
) -> list[str]:
    """The PromQL of every panel target, in panel order.

    With ``expand`` (the default) Grafana's variables are substituted (see
    ``expand_grafana_variables``), so each string can be sent to Prometheus as it is.
    """
    queries = []
    for panel in dashboard_panels(path):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr:
                queries.append(
                    expand_grafana_variables(expr, variables, interval=interval) if expand else expr
                )
    return queries


def template_variable_queries(path: Path = DASHBOARD) -> dict[str, str]:
    """The ``label_values(...)`` query of each query-type template variable, by variable name."""
    out = {}
    for variable in load_dashboard(path)["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        out[variable["name"]] = query["query"] if isinstance(query, dict) else query
    return out


# --- the alerting rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One rule of a Prometheus rules file: ``kind`` is ``alert`` or ``record``."""

    kind: str
    name: str
    group: str
    expr: str = ""
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def load_rules(path: Path = ALERTS) -> list[Rule]:
    """Every rule of a Prometheus rules file, in file order."""
    document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    rules = []
    for group in document["groups"]:
        for raw in group["rules"]:
            kind = "alert" if "alert" in raw else "record"
            rules.append(
                Rule(
                    kind=kind,
                    name=raw[kind],
                    group=group["name"],
                    expr=str(raw["expr"]).strip(),
                    for_=raw.get("for"),
                    labels=dict(raw.get("labels", {})),
                    annotations=dict(raw.get("annotations", {})),
                )
            )
    return rules


def alert_expressions(path: Path = ALERTS) -> list[str]:
    """The PromQL ``expr`` of every alerting rule in the file, in file order."""
    return [rule.expr for rule in load_rules(path) if rule.kind == "alert"]


# --- metric names in PromQL -------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*)(\{[^}]*\}|\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
})  # fmt: skip


def metric_selectors(expr: str) -> list[tuple[str, str]]:
    """Each vector selector in ``expr`` as ``(metric name, matchers inside the braces or "")``."""
    # Blank out string literals (keeping their length), grouping clauses and range/offset durations.
    masked = _STRING.sub(lambda m: '"' + "x" * (len(m[0]) - 2) + '"', expr)
    masked = _GROUPING.sub(lambda m: " " * len(m[0]), masked)
    masked = re.sub(r"\[[^\]]*\]", lambda m: " " * len(m[0]), masked)
    masked = re.sub(r"\boffset\s+-?\w+", lambda m: " " * len(m[0]), masked)
    found = []
    for match in _IDENTIFIER.finditer(masked):
        name, brace = match[1], match[3] or ""
        if brace == "(" or name.lower() in _KEYWORDS:
            continue  # a function or aggregation call, or an operator
        matchers = expr[match.start(3) + 1 : match.end(3) - 1] if brace else ""
        found.append((name, matchers.strip()))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads."""
    return {name for name, _ in metric_selectors(expr)}


# --- the metric catalogue ---------------------------------------------------------------------

_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


def exported_metrics() -> dict[str, tuple[str, ...]]:
    """Every series name ``pipeline.metrics`` exposes (``_total``, ``_bucket``...) -> its labels."""
    names: dict[str, tuple[str, ...]] = {}
    for metric in vars(pipeline.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels = tuple(metric._labelnames)
        elif isinstance(metric, pipeline.metrics.BufferedHistogram):
            labels = ()  # counted in plain lists, exposed by a collector of its own: no labels
        else:
            continue
        for family in metric.describe():
            for suffix in _SERIES_SUFFIXES[family.type]:
                names[family.name + suffix] = (*labels, "le") if suffix == "_bucket" else labels
    return names


def standard_metrics() -> set[str]:
    """Series every target has anyway: ``up`` and prometheus-client's ``process_*``."""
    return {"up"} | {
        sample.name for family in PROCESS_COLLECTOR.collect() for sample in family.samples
    }


# --- a real Prometheus ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusHandle:
    """A running Prometheus: its URL, an HTTP API client, and its log for failure messages."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        url: str,
        log_path: Path,
        job: str,
        scrape_targets: Sequence[str] = (),
    ) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.job = job
        self.scrape_targets = tuple(scrape_targets)
        self._client = httpx.Client(base_url=url, timeout=10.0)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines Prometheus logged."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = self._client.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"GET {path}: HTTP {response.status_code}: {response.text[:500]}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusError(
                f"GET {path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate ``expr`` as an instant query; raise ``PrometheusError`` if it is refused.

        A vector comes back as Prometheus returns it (``[{"metric": {...}, "value": [t, "v"]}]``);
        a scalar or string result as a one-element list with an empty ``metric``.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = self._api("/api/v1/query", params)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        active: list[dict[str, Any]] = self._api("/api/v1/targets", {"state": "active"})[
            "activeTargets"
        ]
        return active

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (``name``, ``query``, ``health``, ``lastError``, ``type``, ...)."""
        groups = self._api("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for_scrapes(self, n: int = 1, timeout: float = 30.0) -> None:
        """Block until every target of the job has been scraped successfully ``n`` times."""
        expected = len(self.scrape_targets)
        if expected == 0:
            raise ValueError("Prometheus was started without targets: no scrape to wait for")
        if expected == 0:
            raise ValueError(f"Prometheus has no target in job {self.job!r} to wait for")
        expr = f'sum_over_time(up{{job="{self.job}"}}[1h])'
        deadline = time.monotonic() + timeout
        while True:
            counts = [float(sample["value"][1]) for sample in self.query(expr)]
            if len(counts) >= expected and counts and min(counts) >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fewer than {n} successful scrapes of each target after {timeout} s: "
                    f"{counts}; targets: {self.targets()}"
                )
            time.sleep(0.1)

    def wait_for_rule_evaluations(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until every loaded rule has been evaluated once; return the rules."""
        deadline = time.monotonic() + timeout
        while True:
            rules = self.rules()
            if all(rule.get("health") in {"ok", "err"} for rule in rules):
                return rules
            if time.monotonic() > deadline:
                raise TimeoutError(f"rules not all evaluated after {timeout} s: {rules}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after 10 s) and the HTTP client."""
        self._client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(
    path: Path,
    targets: Sequence[str],
    *,
    scrape_interval: str,
    rule_files: Sequence[Path],
    labels: Mapping[str, str],
    job: str,
) -> None:
    """Write a Prometheus configuration (JSON, which is YAML) scraping ``targets`` as ``job``."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(rule_file).resolve()) for rule_file in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(targets), "labels": dict(labels)}],
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _start(
    binary: str, config: Path, data: Path, log_path: Path, port: int
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def running_prometheus(
    targets: Sequence[str],
    tmp_path: Path,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (),
    *,
    labels: Mapping[str, str] = DEFAULT_LABELS,
    job: str = JOB_NAME,
    ready_timeout: float = 30.0,
) -> Iterator[PrometheusHandle]:
    """Run Prometheus scraping ``targets`` (``host:port``) until the block exits.

    Every target gets ``job`` and the static ``labels`` (by default the ``namespace``/``pod``
    labels a Kubernetes scrape adds), so the dashboard's and the alerts' filters apply.
    """
    binary = require_binary("prometheus")
    workdir = Path(tmp_path) / "prometheus"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(
        config,
        targets,
        scrape_interval=scrape_interval,
        rule_files=rule_files,
        labels=labels,
        job=job,
    )
    log_path = workdir / "prometheus.log"
    for _ in range(3):  # another process may take the free port before Prometheus binds it
        port = free_port()
        handle = PrometheusHandle(
            _start(binary, config, workdir / "data", log_path, port),
            f"http://127.0.0.1:{port}",
            log_path,
            job,
            targets,
        )
        try:
            _wait_ready(handle, ready_timeout)
        except PrometheusError:
            handle.close()
            if "address already in use" in handle.log_tail():
                continue
            raise
        except BaseException:
            handle.close()
            raise
        break
    else:
        raise PrometheusError(f"no free port for Prometheus:\n{handle.log_tail()}")
    try:
        yield handle
    finally:
        handle.close()


def _wait_ready(handle: PrometheusHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if handle.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {handle.process.returncode}:\n{handle.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{handle.url}/-/ready", timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus not ready after {timeout} s:\n{handle.log_tail()}")
        time.sleep(0.05)
