"""Rollouts, disruptions and chart metadata, rendered offline (helpers from tests/test_helm.py).

The Kubernetes rules these specs lean on, as the API reference states them (chart README,
"Readiness, disruptions and rollouts"):

* PodDisruptionBudget: a pod is healthy when its ``Ready`` condition is true; an eviction is
  allowed while at most ``maxUnavailable`` selected pods would be unhealthy after it
  (``disruptionsAllowed = currentHealthy - desiredHealthy``). A Running pod that is not Ready
  may be evicted under ``IfHealthyBudget`` (the default) only while ``currentHealthy >=
  desiredHealthy``; under ``AlwaysAllow`` always.
* Deployment ``RollingUpdate``: at most ``replicas + maxSurge`` pods exist, and the controller
  removes old pods only while at least ``replicas - maxUnavailable`` pods stay available; a new
  pod is available once Ready (for ``minReadySeconds``, 0 here).

The readiness each simulated pod reports is the stage's own :meth:`Stage.ready`, so the specs
below break if the code's meaning of Ready changes, not only if the chart does.
"""

from __future__ import annotations

import shutil
import types
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from pipeline.stage import Stage
from tests.test_helm import (
    CHART_DIR,
    K8S_VERSION,
    NAMESPACE,
    RELEASE,
    REQUIRED,
    STATEFULSET,
    load_values,
    merged,
    only,
    pod_spec,
    render,
    workload,
)

HALTED_AT = 41  # the offset a halted partition stopped at


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


# The pods as the stage reports them


@dataclass(frozen=True)
class Pod:
    """One consumer pod in a simulation: what its stage would say, and where it runs."""

    name: str
    node: str = "node-a"
    joined: bool = True
    halted: bool = False  # owns the partition halted at HALTED_AT
    refused: bool = False  # the API refuses our credentials (every pod alike)
    new: bool = False  # of the rollout's new revision


def ready(pod: Pod) -> bool:
    """The pod's Ready condition: what the stage's real ``/readyz`` answers in its state."""
    partition = types.SimpleNamespace(
        reported_halted=HALTED_AT if pod.halted else None,
        record_name=lambda offset: f"orders/0/{offset}",
    )
    stage = types.SimpleNamespace(
        _joined=pod.joined,
        _stopping=types.SimpleNamespace(is_set=lambda: False),
        _parts=types.SimpleNamespace(
            source=types.SimpleNamespace(waiting="waiting for Kafka" if not pod.joined else None),
            gate=types.SimpleNamespace(refusal="401: credentials refused" if pod.refused else None),
            partitions=[partition],
        ),
    )
    verdict = Stage.ready(stage)  # type: ignore[arg-type]
    return verdict.ok


# Kubernetes' rules, as documented


def eviction_allowed(pdb: dict[str, Any], replicas: int, pods: list[Pod], victim: Pod) -> bool:
    """Whether the Eviction API lets ``victim`` go under ``pdb`` (policy/v1)."""
    desired_healthy = replicas - int(pdb["maxUnavailable"])
    current_healthy = sum(ready(pod) for pod in pods)
    if not ready(victim):
        policy = pdb.get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
        return policy == "AlwaysAllow" or current_healthy >= desired_healthy
    return current_healthy - desired_healthy > 0


def drain(pdb: dict[str, Any], pods: list[Pod], node: str) -> list[Pod]:
    """``kubectl drain node``: evict its pods, retrying a refused eviction until nothing moves.

    An evicted pod's replacement starts on another node and joins the group; a halted
    partition follows to it. Returns the pods still on ``node`` (empty: the drain finished).
    """
    replicas = len(pods)
    while True:
        on_node = [pod for pod in pods if pod.node == node]
        victim = next((p for p in on_node if eviction_allowed(pdb, replicas, pods, p)), None)
        if victim is None:
            return on_node
        moved = replace(victim, name=victim.name + "-moved", node="node-z")
        pods = [moved if pod is victim else pod for pod in pods]


def roll_out(strategy: dict[str, Any], pods: list[Pod]) -> list[Pod]:
    """A Deployment's RollingUpdate to a new revision; returns the old pods left (empty: done).

    When the halted pod goes, its partition and the halt go to the next new pod: the worst
    case, a new pod that must become Ready with a halt older than itself.
    """
    replicas = len(pods)
    surge = int(strategy["rollingUpdate"]["maxSurge"])
    unavailable = int(strategy["rollingUpdate"]["maxUnavailable"])
    created, halt_pending = 0, False
    while old := [pod for pod in pods if not pod.new]:
        if len(pods) < replicas + surge:
            created += 1
            pods = [*pods, Pod(f"new-{created}", new=True, halted=halt_pending)]
            halt_pending = False
            continue
        available = sum(ready(pod) for pod in pods)
        victim = next((p for p in old if available - ready(p) >= replicas - unavailable), None)
        if victim is None:
            return old
        pods = [pod for pod in pods if pod is not victim]
        halt_pending = halt_pending or victim.halted
    return []


# Rollouts


def test_a_deployment_replaces_one_pod_at_a_time_and_never_surges(chart: helm.Chart) -> None:
    """Each extra member is a rebalance: a surge pod would join, take partitions from members
    still draining, and give them back minutes later. One old pod leaves (draining and
    committing), then its replacement joins."""
    strategy = only(render(chart), "Deployment")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_an_explicit_strategy_still_wins(chart: helm.Chart) -> None:
    """A platform that wants the surge can have it (a faster rollout, at a rebalance's cost)."""
    mine = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    strategy = only(render(chart, {"strategy": mine}), "Deployment")["spec"]["strategy"]
    assert strategy == mine


def test_a_statefulset_updates_one_pod_at_a_time_in_place(chart: helm.Chart) -> None:
    """The StatefulSet equivalent is its own rolling update: one pod at a time, each deleted and
    recreated under its name (a static member rejoins without a rebalance); it never surges.
    ``rollingUpdate.maxUnavailable`` stays unset: it is behind an alpha feature gate."""
    spec = workload(render(chart, load_values(STATEFULSET)))["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert "strategy" not in spec


def test_a_rolling_update_proceeds_while_a_partition_is_halted(chart: helm.Chart) -> None:
    """Three pods, one halted: the rendered strategy replaces all three, although the halt
    moves to a new pod (which under the old meaning of Ready never became available)."""
    strategy = only(render(chart), "Deployment")["spec"]["strategy"]
    pods = [Pod("a", halted=True), Pod("b"), Pod("c")]
    assert not ready(replace(pods[0], joined=False)), "a pod that has not joined is not Ready"
    assert roll_out(strategy, pods) == []


def test_a_rolling_update_proceeds_during_an_api_outage(chart: helm.Chart) -> None:
    """Every pod sees the credentials refused: the rollout goes on all the same."""
    strategy = only(render(chart), "Deployment")["spec"]["strategy"]
    pods = [Pod("a", refused=True), Pod("b", refused=True), Pod("c", refused=True)]
    assert roll_out(strategy, pods) == []


# Disruptions


def test_the_pdb_allows_one_disruption_and_never_counts_a_not_ready_pod(
    chart: helm.Chart,
) -> None:
    """maxUnavailable 1 (each eviction is a rebalance), and ``AlwaysAllow``: a pod that is not
    Ready (not joined yet, Kafka away) can always be evicted, so it never blocks a drain."""
    for layers in ([], [load_values(STATEFULSET)]):
        docs = render(chart, *layers)
        pdb = only(docs, "PodDisruptionBudget")["spec"]
        assert pdb["maxUnavailable"] == 1
        assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert pdb["selector"] == workload(docs)["spec"]["selector"]


def test_a_node_drain_proceeds_while_a_partition_is_halted(chart: helm.Chart) -> None:
    """The drained node holds a healthy pod while another pod is halted: under the old meaning
    of Ready no disruption was left, and the drain waited for ever."""
    pdb = only(render(chart), "PodDisruptionBudget")["spec"]
    pods = [Pod("a", node="node-b", halted=True), Pod("b"), Pod("c", node="node-c")]
    assert drain(pdb, pods, "node-a") == []
    pods = [Pod("a", halted=True), Pod("b"), Pod("c", node="node-c")]
    assert drain(pdb, pods, "node-a") == [], "the halted pod's node too"


def test_a_node_drain_proceeds_during_an_api_outage(chart: helm.Chart) -> None:
    """No pod could be evicted at all while the API refused our credentials."""
    pdb = only(render(chart), "PodDisruptionBudget")["spec"]
    pods = [Pod("a", refused=True), Pod("b", refused=True), Pod("c", node="n2", refused=True)]
    assert drain(pdb, pods, "node-a") == []


def test_pods_that_cannot_join_never_block_a_node_drain(chart: helm.Chart) -> None:
    """Two of three pods wait for Kafka (not Ready): with the default ``IfHealthyBudget`` they
    could not be evicted (too few healthy pods), so the drain would hang on pods doing nothing."""
    pdb = only(render(chart), "PodDisruptionBudget")["spec"]
    pods = [Pod("a", joined=False), Pod("b", joined=False), Pod("c", node="node-c")]
    assert drain(pdb, pods, "node-a") == []


def test_a_pdb_policy_can_be_set_back_to_the_cluster_default(chart: helm.Chart) -> None:
    """An empty value leaves the field out (the API server's default, IfHealthyBudget)."""
    docs = render(chart, {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": ""}})
    assert "unhealthyPodEvictionPolicy" not in only(docs, "PodDisruptionBudget")["spec"]


def test_the_chart_needs_a_kubernetes_that_knows_the_eviction_policy(chart: helm.Chart) -> None:
    """``unhealthyPodEvictionPolicy`` is beta (on by default) from 1.27, GA in 1.31: an older API
    server would drop it, and pods that are not Ready would block drains again."""
    assert chart.metadata["kubeVersion"] == ">=1.27.0-0"


# A chart bump restarts no consumer


def chart_with_version(tmp_path: Path, version: str) -> Path:
    """A copy of the chart whose Chart.yaml says ``version``, and nothing else changed."""
    copy = tmp_path / f"space-pipeline-{version}"
    shutil.copytree(CHART_DIR, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    meta["version"] = version
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return copy


@pytest.mark.parametrize("variant", ["defaults", "statefulset"])
def test_a_chart_version_bump_leaves_the_pod_template_as_it_was(
    tmp_path: Path, variant: str
) -> None:
    """Two renders that differ only in the chart's version give the same pod template, so a
    release that only changes alerts or the dashboard restarts no consumer (and costs no
    rebalance). The other objects keep the ``helm.sh/chart`` label."""
    layers = [load_values(STATEFULSET)] if variant == "statefulset" else []
    templates, labelled = [], []
    for version in ("0.2.0", "9.9.9"):
        with helm.Chart.load(chart_with_version(tmp_path, version)) as chart:
            docs = render(chart, *layers)
        templates.append(workload(docs)["spec"]["template"])
        labelled.append({d["kind"]: d["metadata"]["labels"].get("helm.sh/chart") for d in docs})
    assert templates[0] == templates[1]
    assert "helm.sh/chart" not in templates[0]["metadata"]["labels"]
    assert labelled[0]["Deployment" if not layers else "StatefulSet"] == "space-pipeline-0.2.0"
    assert labelled[1]["ConfigMap"] == "space-pipeline-9.9.9"


def test_the_config_checksum_still_follows_the_config(chart: helm.Chart) -> None:
    """The checksum covers the ConfigMap's data, not its labels: a config change still rolls."""

    def checksum(*layers: dict[str, Any]) -> str:
        template = only(render(chart, *layers), "Deployment")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum({"config": {"logLevel": "DEBUG"}}) != checksum()
    assert checksum({"commonLabels": {"team": "streams"}}) == checksum()


# Topology spread presets


def constraints(chart: helm.Chart, *layers: dict[str, Any]) -> list[dict[str, Any]] | None:
    spec = pod_spec(render(chart, *layers))
    found: list[dict[str, Any]] | None = spec.get("topologySpreadConstraints")
    return found


def test_no_spread_preset_by_default(chart: helm.Chart) -> None:
    """By default the scheduler's own defaults apply (a soft spread over nodes and zones)."""
    assert constraints(chart) is None


@pytest.mark.parametrize(
    ("preset", "keys"),
    [
        ("zone", ["topology.kubernetes.io/zone"]),
        ("node", ["kubernetes.io/hostname"]),
        ("zoneAndNode", ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
    ],
)
def test_a_spread_preset_spreads_the_consumer_pods_one_by_one(
    chart: helm.Chart, preset: str, keys: list[str]
) -> None:
    """A preset spreads the pods with maxSkew 1 over zones, nodes or both, selecting exactly the
    pods of this release (the workload's selector), softly unless told otherwise."""
    docs = render(chart, {"topologySpread": {"preset": preset}})
    selector = workload(docs)["spec"]["selector"]
    assert pod_spec(docs)["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
        for key in keys
    ]
    hard = {"topologySpread": {"preset": preset, "whenUnsatisfiable": "DoNotSchedule"}}
    found = constraints(chart, hard) or []
    assert {c["whenUnsatisfiable"] for c in found} == {"DoNotSchedule"}


def test_explicit_spread_constraints_follow_the_preset(chart: helm.Chart) -> None:
    """Own constraints are added after the preset's; one on the preset's key fails the render,
    since Kubernetes refuses two constraints on one key."""
    mine = {
        "maxSkew": 2,
        "topologyKey": "example.com/rack",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}},
    }
    found = constraints(
        chart, {"topologySpread": {"preset": "node"}, "topologySpreadConstraints": [mine]}
    )
    assert [c["topologyKey"] for c in found or []] == ["kubernetes.io/hostname", "example.com/rack"]
    clash = {**mine, "topologyKey": "kubernetes.io/hostname"}
    with pytest.raises(helm.HelmRenderError, match="topologySpreadConstraints"):
        render(chart, {"topologySpread": {"preset": "node"}, "topologySpreadConstraints": [clash]})


def test_the_schema_refuses_an_unknown_preset(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="preset"):
        chart.validate_schema(merged(REQUIRED, {"topologySpread": {"preset": "rack"}}))


# `helm test`

SERVED = {"metricsService": {"enabled": True}}


def test_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [
        d
        for d in docs
        if d["kind"] == "Pod" and d["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    return pod


test_pod.__test__ = False  # type: ignore[attr-defined]  # a helper, not a spec


def test_helm_test_checks_healthz_through_the_metrics_service(chart: helm.Chart) -> None:
    """``helm test`` runs a pod that GETs /healthz through the metrics Service and fails unless
    it answers 2xx; it is deleted before the next run and after it passes."""
    docs = render(chart, SERVED)
    pod = test_pod(docs)
    service = next(d for d in docs if d["kind"] == "Service")
    port = service["spec"]["ports"][0]["port"]
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == (
        "before-hook-creation,hook-succeeded"
    )
    (probe,) = pod["spec"]["containers"]
    url = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/healthz"
    assert url in probe["args"]
    assert probe["command"][0] == "python"
    assert probe["image"] == workload(docs)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_helm_test_reaches_a_statefulset_through_its_headless_service(chart: helm.Chart) -> None:
    docs = render(chart, load_values(STATEFULSET))
    (probe,) = test_pod(docs)["spec"]["containers"]
    assert f"http://{RELEASE}-space-pipeline-pods.{NAMESPACE}.svc:9400/healthz" in probe["args"]


def test_helm_test_is_left_out_without_a_service_or_when_disabled(chart: helm.Chart) -> None:
    """A Deployment's pods have no stable address without a Service: no test to run."""
    for layers in ([], [SERVED, {"helmTest": {"enabled": False}}]):
        assert [d for d in render(chart, *layers) if d["kind"] == "Pod"] == []


def test_the_helm_test_pod_is_not_a_consumer_pod(chart: helm.Chart) -> None:
    """Its labels match no selector of the release: no PDB, Service or monitor counts it."""
    docs = render(chart, SERVED)
    labels = test_pod(docs)["metadata"]["labels"]
    selector = workload(docs)["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= labels.items()
    assert "app.kubernetes.io/name" not in labels
    assert labels["app.kubernetes.io/component"] == "helm-test"
    assert labels["space-pipeline/helm-test"] == "healthz"


def test_the_helm_test_pod_meets_the_restricted_profile(chart: helm.Chart) -> None:
    """As the consumer pods: non-root, RuntimeDefault seccomp, no escalation, no capability, a
    read-only root, no service account token; and it passes the strict Kubernetes schema."""
    for layers in ([SERVED], [load_values(STATEFULSET)]):
        pod = test_pod(render(chart, *layers))
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        (probe,) = spec["containers"]
        context = probe["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True


def test_a_network_policy_admits_the_helm_test_pod(chart: helm.Chart) -> None:
    """With the metrics port open to named peers only, the test pod is one of them."""
    only_prometheus = {
        "networkPolicy": {
            "enabled": True,
            "metricsIngress": {"from": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]},
        }
    }
    docs = render(chart, SERVED, only_prometheus)
    peers = only(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    labels = test_pod(docs)["metadata"]["labels"]
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
        and "namespaceSelector" not in peer
        for peer in peers[1:]
    )


# Chart metadata


def test_the_chart_carries_artifact_hub_metadata(chart: helm.Chart) -> None:
    """home, sources, icon, and the Artifact Hub annotations (license, links, and changes as
    the list of kinds and descriptions Artifact Hub reads)."""
    meta = chart.metadata
    assert meta["home"].startswith("https://")
    assert meta["sources"]
    assert all(s.startswith("https://") for s in meta["sources"])
    assert meta["icon"].startswith("https://")
    notes = meta["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    links = yaml.safe_load(notes["artifacthub.io/links"])
    assert {"name", "url"} <= set(links[0])
    changes = yaml.safe_load(notes["artifacthub.io/changes"])
    kinds = {"added", "changed", "deprecated", "removed", "fixed", "security"}
    assert changes
    assert all(c["kind"] in kinds and c["description"] for c in changes)
    assert "artifacthub.io/images" not in notes, "there is no public image to list"
    assert (CHART_DIR / "icon.svg").is_file(), "the icon URL points at the chart's own icon.svg"
    assert meta["icon"].endswith("/helm/space-pipeline/icon.svg")


def test_the_chart_metadata_passes_helms_own_checks() -> None:
    """`helm lint --strict` would refuse a malformed icon or source URL."""
    report = helm.lint(CHART_DIR, REQUIRED, strict=True, kube_version="v" + K8S_VERSION)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 1] == []


def test_every_rendered_object_passes_the_schemas_with_the_new_options(chart: helm.Chart) -> None:
    """Presets, the test pod and the PDB policy together, against Kubernetes 1.33, strict."""
    layers = {"topologySpread": {"preset": "zoneAndNode"}, **SERVED}
    for doc in render(chart, layers):
        if doc["apiVersion"].startswith(("monitoring.coreos.com", "keda.sh")):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
