"""The Helm chart in helm/space-pipeline, rendered and linted offline through Helm's Go SDK.

Built-in kinds are validated (strictly: unknown fields fail) against the Kubernetes OpenAPI
schemas shipped by kubernetes-validate. The CRD kinds (PodMonitor, ServiceMonitor, PrometheusRule,
ScaledObject) have no schema there: they get a minimal hand-written schema of the fields their
operators need (see CRD_SCHEMAS); a TriggerAuthentication gets KEDA's published CRD (tests/crds).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AnyHttpUrl

from pipeline.config import ENV_PREFIX, Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.policy import format_statuses, parse_statuses
from tests.crds import crd_schema

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "space-pipeline"
CHART_README = CHART_DIR / "README.md"
HELM_VALUES = Path(__file__).resolve().parent / "helm-values"
ALL_FEATURES = HELM_VALUES / "all-features.yaml"
# What all-features.yaml cannot hold at once: your own function as the sink, a rate limit per pod.
FUNCTION_SINK = HELM_VALUES / "function-sink.yaml"
# The pods as a StatefulSet, each a static group member under its pod's name.
STATEFULSET = HELM_VALUES / "statefulset.yaml"
# KEDA and the pods on a SASL_SSL Kafka; the API's URL and headers from Secrets (test_helm_keda.py).
SECURED_KAFKA = HELM_VALUES / "secured-kafka.yaml"
K8S_VERSION = "1.33.0"
RELEASE = "demo"
NAMESPACE = "streams"
TMP_DIR = "/tmp"  # noqa: S108 - the emptyDir the read-only root filesystem needs

# What any install must provide: the chart renders nothing without them.
IMAGE_REPOSITORY = "registry.example.com/space-pipeline"
REQUIRED: dict[str, Any] = {
    "image": {"repository": IMAGE_REPOSITORY},
    "config": {
        "kafkaBootstrapServers": "kafka:9092",
        "kafkaTopics": ["orders"],
        "spaceApiUrl": "http://space-api:8080/records",
    },
}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": _STRING_MAP},
}
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": {"const": "metrics"},
        "path": {"const": "/metrics"},
        "interval": {"type": "string"},
        "relabelings": {"type": "array", "items": {"type": "object"}},
        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
    },
}
_SELECTOR = {
    "type": "object",
    "required": ["matchLabels"],
    "properties": {"matchLabels": {**_STRING_MAP, "minProperties": 1}},
}


def _crd(spec: dict[str, Any]) -> dict[str, Any]:
    """A custom resource with ``metadata`` and the given ``spec`` schema."""
    return {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {"metadata": _META, "spec": spec},
    }


# Minimal schemas for the CRDs (not in kubernetes-validate): the fields their operators read.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PodMonitor"): _crd(
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "properties": {
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): _crd(
        {
            "type": "object",
            "required": ["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"kind": {"enum": ["Deployment", "StatefulSet"]}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 1},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "kafka"},
                            # KEDA's trigger metadata is map[string]string.
                            "metadata": {
                                **_STRING_MAP,
                                "required": [
                                    "bootstrapServers",
                                    "consumerGroup",
                                    "lagThreshold",
                                    "offsetResetPolicy",
                                ],
                            },
                        },
                    },
                },
            },
        }
    ),
    # KEDA's own published CRD (tests/crds), strict.
    ("keda.sh/v1alpha1", "TriggerAuthentication"): crd_schema(
        "keda.sh_triggerauthentications.yaml"
    ),
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge value layers, later ones winning (what several `-f` files do)."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(
    chart: helm.Chart, *layers: dict[str, Any], release: str = RELEASE
) -> list[dict[str, Any]]:
    """Render with the required values plus ``layers``; every non-empty manifest, parsed."""
    return render_exactly(chart, merged(REQUIRED, *layers), release=release)


def render_exactly(
    chart: helm.Chart, values: dict[str, Any], release: str = RELEASE
) -> list[dict[str, Any]]:
    """Render with ``values`` only (over values.yaml); every non-empty manifest, parsed."""
    files = chart.render(values, name=release, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pods' controller: the one Deployment or StatefulSet."""
    found = [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, f"expected one workload, got {[d['kind'] for d in found]}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = pod_spec(docs)["containers"]
    return dict(main)


def configmap_env(docs: list[dict[str, Any]], release: str = RELEASE) -> dict[str, str]:
    name = f"{release}-space-pipeline"
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    data: dict[str, str] = config["data"]
    return data


VARIANTS = {
    "defaults": {},
    "all-features": load_values(ALL_FEATURES),
    "function-sink": load_values(FUNCTION_SINK),
    "statefulset": load_values(STATEFULSET),
    "secured-kafka": load_values(SECURED_KAFKA),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_is_clean(variant: str) -> None:
    """`helm lint --strict` reports no warning or error for defaults and for all features."""
    report = helm.lint(
        CHART_DIR, merged(REQUIRED, VARIANTS[variant]), strict=True, kube_version="v" + K8S_VERSION
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_match_kubernetes_schemas(chart: helm.Chart, variant: str) -> None:
    """Built-in kinds pass strict Kubernetes schema validation; CRD kinds a minimal schema."""
    docs = render(chart, VARIANTS[variant])
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_default_render_has_only_core_objects(chart: helm.Chart) -> None:
    """Defaults render a ConfigMap, Deployment, PDB and ServiceAccount; every option is off."""
    kinds = sorted(doc["kind"] for doc in render(chart))
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "ServiceAccount"]


def test_all_features_render_every_optional_kind(chart: helm.Chart) -> None:
    """The all-features values render monitors, rules, dashboard, KEDA, policy and extras."""
    kinds = {doc["kind"] for doc in render(chart, load_values(ALL_FEATURES))}
    assert kinds >= {
        "PodMonitor",
        "PrometheusRule",
        "ScaledObject",
        "NetworkPolicy",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Deployment",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"kafkaBootstrapServers": ""}}, "config.kafkaBootstrapServers is required"),
        ({"config": {"kafkaTopics": []}}, "config.kafkaTopics is required"),
    ],
)
def test_required_settings_fail_rendering(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """Rendering fails naming the missing bootstrap servers or topics."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"spaceApiUrl": ""}, r"config\.spaceApiUrl or config\.sinkFunction is required"),
        ({"spaceApiUrl": None}, r"config\.spaceApiUrl or config\.sinkFunction is required"),
        ({"spaceApiUrl": "", "sinkFunction": ""}, r"or config\.sinkFunction is required"),
        (
            {"sinkFunction": "my_sink:send"},
            r"config\.spaceApiUrl and config\.sinkFunction are both",
        ),
    ],
    ids=["neither", "url null", "both empty", "both"],
)
def test_either_url_or_function_else_rendering_fails(
    chart: helm.Chart, config: dict[str, Any], message: str
) -> None:
    """Records go to the Space API or through your own function: exactly one of
    config.spaceApiUrl and config.sinkFunction (an empty string is unset), or rendering fails."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, {"config": config})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, {"PIPELINE_SPACE_API_URL": REQUIRED["config"]["spaceApiUrl"]}),
        (
            {"spaceApiUrl": "", "sinkFunction": "my_sink:send"},
            {"PIPELINE_SINK_FUNCTION": "my_sink:send"},
        ),
    ],
    ids=["url", "function"],
)
def test_either_url_or_function_renders_only_that_one(
    chart: helm.Chart, config: dict[str, Any], expected: dict[str, str]
) -> None:
    """The one that is set reaches the ConfigMap; the empty other one is left out, so the stage
    sees exactly one (it refuses both, and an empty URL)."""
    env = configmap_env(render(chart, {"config": config}))
    names = {"PIPELINE_SPACE_API_URL", "PIPELINE_SINK_FUNCTION"}
    assert {name: value for name, value in env.items() if name in names} == expected


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"config": {"kafkaTopic": ["x"]}},
        {"image": {"tags": "1"}},
        {"probes": {"liveness": {"paths": "/x"}}},
        {"secrets": {"spaceApiToken": {"value": "inline-token"}}},
        {"keda": {"partitionCounts": 3}},
        {"networkPolicy": {"egress": {"allowall": True}}},
        {"podMonitor": {"additionalLabel": {"a": "b"}}},
    ],
    ids=lambda values: json.dumps(values, sort_keys=True),
)
def test_schema_rejects_unknown_keys(chart: helm.Chart, values: dict[str, Any]) -> None:
    """values.schema.json has additionalProperties: false, so a misspelt key fails rendering."""
    with pytest.raises(helm.HelmValuesError, match="additional properties"):
        render(chart, values)


def test_schema_rejects_bad_enum(chart: helm.Chart) -> None:
    """A setting with a closed set of values (auto offset reset) rejects anything else."""
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"config": {"kafkaAutoOffsetReset": "smallest"}})


def test_config_keys_are_settings_fields(chart: helm.Chart) -> None:
    """Every `config` key the schema allows maps to PIPELINE_<FIELD> of a real Settings field."""
    schema = chart.schema
    assert schema is not None
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    files = {path.name: load_values(path) for path in (ALL_FEATURES, FUNCTION_SINK)}
    exercised = files | {STATEFULSET.name: load_values(STATEFULSET)}
    for key in schema["properties"]["config"]["properties"]:
        assert any(key in values["config"] for values in exercised.values()), (
            f"none of {', '.join(exercised)} exercises config.{key}"
        )
    for values in files.values():
        rendered = configmap_env(render(chart, values))
        unknown = {name for name in rendered if name not in fields} - {"PIPELINE_FUTURE_SETTING"}
        assert unknown == set()
        secret_env = {
            e["name"] for e in container(render(chart, values))["env"] if "valueFrom" in e
        }
        assert secret_env <= fields


def test_default_configmap_is_accepted_by_settings(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default ConfigMap, read as the pod's environment, is a valid Settings."""
    env = configmap_env(render(chart))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.kafka_topics == ("orders",)
    assert settings.metrics_port == 9400
    assert settings.shutdown_timeout_s == 20


def test_numbers_render_as_plain_strings(chart: helm.Chart) -> None:
    """Large integers are not printed in scientific notation; lists join with commas; maps JSON."""
    env = configmap_env(
        render(
            chart,
            {
                "config": {
                    "partitionBufferBytes": 33554432,
                    "kafkaTopics": ["a", "b"],
                    "retryInitialBackoffS": 0.25,
                    "spaceApiHeaders": {"X-A": "1"},
                }
            },
        )
    )
    assert env["PIPELINE_PARTITION_BUFFER_BYTES"] == "33554432"
    assert env["PIPELINE_KAFKA_TOPICS"] == "a,b"
    assert env["PIPELINE_RETRY_INITIAL_BACKOFF_S"] == "0.25"
    assert json.loads(env["PIPELINE_SPACE_API_HEADERS"]) == {"X-A": "1"}


@pytest.mark.parametrize(
    ("values", "shutdown", "grace"),
    [
        ({}, "20", 35),
        ({"config": {"shutdownTimeoutS": 42.5}, "terminationGraceExtraSeconds": 10}, "42.5", 53),
        ({"config": {"shutdownTimeoutS": 30}, "terminationGracePeriodSeconds": 31}, "30", 31),
    ],
)
def test_grace_period_exceeds_shutdown_timeout(
    chart: helm.Chart, values: dict[str, Any], shutdown: str, grace: int
) -> None:
    """terminationGracePeriodSeconds = ceil(shutdown timeout) + extra, always above the timeout."""
    docs = render(chart, values)
    assert configmap_env(docs)["PIPELINE_SHUTDOWN_TIMEOUT_S"] == shutdown
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == grace
    assert grace > float(shutdown)


@pytest.mark.parametrize("grace", [5, 20])
def test_explicit_grace_not_above_shutdown_fails(chart: helm.Chart, grace: int) -> None:
    """An explicit grace period <= the shutdown timeout fails rendering."""
    with pytest.raises(
        helm.HelmRenderError, match=r"must be greater than config\.shutdownTimeoutS"
    ):
        render(chart, {"terminationGracePeriodSeconds": grace})


@pytest.mark.parametrize(
    "values",
    [
        {"extraEnv": [{"name": "PIPELINE_SHUTDOWN_TIMEOUT_S", "value": "600"}]},
        {"extraConfig": {"PIPELINE_SHUTDOWN_TIMEOUT_S": "600"}},
        {"extraEnv": [{"name": "PIPELINE_METRICS_PORT", "value": "1"}]},
    ],
)
def test_extra_env_cannot_untie_derived_settings(chart: helm.Chart, values: dict[str, Any]) -> None:
    """extraEnv/extraConfig may not override the shutdown timeout or metrics port the chart ties."""
    with pytest.raises(helm.HelmRenderError, match="must not set PIPELINE_"):
        render(chart, values)


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_context_is_hardened(chart: helm.Chart, variant: str) -> None:
    """Non-root 10001, RuntimeDefault seccomp, read-only root, no escalation, caps dropped, /tmp."""
    docs = render(chart, VARIANTS[variant])
    pod = pod_spec(docs)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    main = container(docs)
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": TMP_DIR} in main["volumeMounts"]
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert "emptyDir" in tmp
    account = only(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_container_runs_image_entrypoint_on_metrics_port(chart: helm.Chart) -> None:
    """The image is <image.repository>:<appVersion>, no command override, port `metrics` 9400."""
    main = container(render(chart))
    assert main["image"] == f"{IMAGE_REPOSITORY}:{chart.metadata['appVersion']}"
    assert "command" not in main
    assert "args" not in main
    assert main["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]


@pytest.mark.parametrize(("variant", "port"), [("defaults", 9400), ("all-features", 9500)])
def test_probes_hit_health_endpoints_on_metrics_port(
    chart: helm.Chart, variant: str, port: int
) -> None:
    """Liveness GET /healthz, readiness GET /readyz, startup probe, all on the metrics port."""
    docs = render(chart, VARIANTS[variant])
    main = container(docs)
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert main["startupProbe"]["httpGet"]["port"] == "metrics"
    assert main["ports"][0]["containerPort"] == port
    assert configmap_env(docs)["PIPELINE_METRICS_PORT"] == str(port)


def test_replicas_present_without_keda(chart: helm.Chart) -> None:
    """Without KEDA the Deployment sets replicas (default 1) and no ScaledObject renders."""
    docs = render(chart, {"replicas": 3})
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert only(render(chart), "Deployment")["spec"]["replicas"] == 1


def test_replicas_absent_with_keda(chart: helm.Chart) -> None:
    """With KEDA on, the Deployment leaves replicas out so the HPA owns it."""
    docs = render(chart, {"replicas": 3, "keda": {"enabled": True, "partitionCount": 6}})
    assert "replicas" not in only(docs, "Deployment")["spec"]


def test_keda_scaled_object_follows_config(chart: helm.Chart) -> None:
    """maxReplicaCount = partitionCount, min 1; group, servers, topic and reset come from config."""
    docs = render(
        chart,
        {
            "config": {"kafkaAutoOffsetReset": "latest", "kafkaGroupId": "g1"},
            "keda": {"enabled": True, "partitionCount": 8},
        },
    )
    scaled = only(docs, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == 8
    assert scaled["minReplicaCount"] == 1
    assert scaled["scaleTargetRef"]["name"] == only(docs, "Deployment")["metadata"]["name"]
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["bootstrapServers"] == "kafka:9092"
    assert trigger["metadata"]["consumerGroup"] == "g1"
    assert trigger["metadata"]["topic"] == "orders"
    assert trigger["metadata"]["offsetResetPolicy"] == "latest"
    assert "authenticationRef" not in trigger


def test_keda_all_features(chart: helm.Chart) -> None:
    """All-features KEDA: maxReplicaCount 12 = partitionCount, TriggerAuthentication referenced."""
    values = load_values(ALL_FEATURES)
    scaled = only(render(chart, values), "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == values["keda"]["partitionCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["authenticationRef"] == {
        "name": "kafka-keda-auth",
        "kind": "TriggerAuthentication",
    }
    assert trigger["metadata"]["offsetResetPolicy"] == values["config"]["kafkaAutoOffsetReset"]


def test_keda_omits_topic_for_several_topics(chart: helm.Chart) -> None:
    """With several topics and no keda.topic, the trigger measures the whole group's lag."""
    docs = render(
        chart,
        {"config": {"kafkaTopics": ["a", "b"]}, "keda": {"enabled": True, "partitionCount": 4}},
    )
    (trigger,) = only(docs, "ScaledObject")["spec"]["triggers"]
    assert "topic" not in trigger["metadata"]


def test_keda_requires_partition_count(chart: helm.Chart) -> None:
    """Enabling KEDA without keda.partitionCount fails rendering."""
    with pytest.raises(helm.HelmRenderError, match=r"keda\.partitionCount is required"):
        render(chart, {"keda": {"enabled": True}})


SECRET_ENV = {
    "PIPELINE_SPACE_API_TOKEN",
    "PIPELINE_KAFKA_SASL_PASSWORD",
    "PIPELINE_KAFKA_SSL_KEYFILE_PASSWORD",
    "PIPELINE_OAUTH2_CLIENT_SECRET",
    "PIPELINE_ADMIN_TOKEN",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_are_references_only(chart: helm.Chart, variant: str) -> None:
    """No Secret is ever rendered; secret env vars only use secretKeyRef, never a value."""
    docs = render(chart, VARIANTS[variant])
    assert [d for d in docs if d["kind"] == "Secret"] == []
    env = configmap_env(docs)
    assert SECRET_ENV.isdisjoint(env)
    main = container(docs)
    for entry in main.get("env", []):
        if entry["name"] in SECRET_ENV:
            assert "value" not in entry
            assert set(entry["valueFrom"]) == {"secretKeyRef"}


def test_space_api_token_reference(chart: helm.Chart) -> None:
    """secrets.spaceApiToken becomes PIPELINE_SPACE_API_TOKEN from the named Secret and key."""
    docs = render(chart, {"secrets": {"spaceApiToken": {"existingSecret": "space-api"}}})
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PIPELINE_SPACE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "space-api",
        "key": "token",
    }


def test_admin_token_reference(chart: helm.Chart) -> None:
    """secrets.adminToken turns the admin API on: PIPELINE_ADMIN_TOKEN from the named Secret."""
    docs = render(chart, {"secrets": {"adminToken": {"existingSecret": "space-admin"}}})
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PIPELINE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "space-admin",
        "key": "token",
    }
    assert "PIPELINE_ADMIN_TOKEN" not in {
        e["name"] for e in container(render(chart, {})).get("env", [])
    }


def test_schema_registry_password_reference(chart: helm.Chart) -> None:
    """secrets.schemaRegistryPassword: PIPELINE_SCHEMA_REGISTRY_PASSWORD from the named Secret,
    the registry's URL and username in the ConfigMap."""
    values = {
        "config": {
            "valueFormat": "avro",
            "schemaRegistryUrl": "https://sr.example.com:8081",
            "schemaRegistryUsername": "stage",
        },
        "secrets": {"schemaRegistryPassword": {"existingSecret": "sr-user"}},
    }
    docs = render(chart, values)
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PIPELINE_SCHEMA_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "sr-user",
        "key": "password",
    }
    assert configmap_env(docs)["PIPELINE_SCHEMA_REGISTRY_USERNAME"] == "stage"


AVRO = {"config": {"valueFormat": "avro", "schemaRegistryUrl": "https://sr.example.com:8081"}}


def test_a_schema_registry_url_holding_credentials_fails(chart: helm.Chart) -> None:
    """As for the other URLs: a password in the ConfigMap would be readable by anyone who can
    read ConfigMaps; the password goes in secrets.schemaRegistryPassword."""
    values = merged(AVRO, {"config": {"schemaRegistryUrl": "https://stage:pw@sr.example.com"}})
    with pytest.raises(helm.HelmRenderError, match=r"config\.schemaRegistryUrl holds a credential"):
        render(chart, values)


def test_a_closed_egress_must_let_the_pods_reach_the_schema_registry(chart: helm.Chart) -> None:
    closed = {"networkPolicy": {"enabled": True, "egress": {"allowAll": False, "rules": []}}}
    kafka_and_api = [{"ports": [{"port": 9092}, {"port": 8080}]}]
    closed["networkPolicy"]["egress"]["rules"] = kafka_and_api
    with pytest.raises(
        helm.HelmRenderError, match=r"TCP port 8081 \(the schema registry, sr\.example\.com:8081\)"
    ):
        render(chart, merged(AVRO, closed))
    closed["networkPolicy"]["egress"]["rules"] = [*kafka_and_api, {"ports": [{"port": 8081}]}]
    assert only(render(chart, merged(AVRO, closed)), "NetworkPolicy")


OAUTH2_CONFIG = {
    "oauth2TokenUrl": "https://auth.example.com/token",
    "oauth2ClientId": "space-pipeline",
}


@pytest.mark.parametrize(
    ("secret", "key"),
    [({"existingSecret": "oauth2"}, "client-secret"), ({"existingSecret": "idp", "key": "s"}, "s")],
    ids=["default key", "explicit key"],
)
def test_oauth2_client_secret_reference(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch, secret: dict[str, str], key: str
) -> None:
    """secrets.oauth2ClientSecret becomes PIPELINE_OAUTH2_CLIENT_SECRET from the named Secret
    (key `client-secret` unless set), never a value nor a ConfigMap entry; with the token URL
    and client id from `config`, the pod's environment is valid OAuth2 client credentials."""
    docs = render(chart, {"config": OAUTH2_CONFIG, "secrets": {"oauth2ClientSecret": secret}})
    (entry,) = [e for e in container(docs)["env"] if e["name"] == "PIPELINE_OAUTH2_CLIENT_SECRET"]
    assert entry == {
        "name": "PIPELINE_OAUTH2_CLIENT_SECRET",
        "valueFrom": {"secretKeyRef": {"name": secret["existingSecret"], "key": key}},
    }
    env = configmap_env(docs)
    assert "PIPELINE_OAUTH2_CLIENT_SECRET" not in env
    settings = pod_settings(
        monkeypatch, {**env, "PIPELINE_OAUTH2_CLIENT_SECRET": "from-the-secret"}
    )
    assert settings.oauth2_token_url == OAUTH2_CONFIG["oauth2TokenUrl"]
    assert settings.oauth2_secret == "from-the-secret"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "config": OAUTH2_CONFIG,
                "secrets": {
                    "spaceApiToken": {"existingSecret": "space-api"},
                    "oauth2ClientSecret": {"existingSecret": "oauth2"},
                },
            },
            "use one way to authenticate",
        ),
        (
            {"config": OAUTH2_CONFIG, "secrets": {"spaceApiToken": {"existingSecret": "api"}}},
            "use one way to authenticate",
        ),
        (
            {
                "config": {"oauth2ClientId": "space-pipeline"},
                "secrets": {"oauth2ClientSecret": {"existingSecret": "oauth2"}},
            },
            r"secrets\.oauth2ClientSecret also needs config\.oauth2TokenUrl",
        ),
    ],
    ids=["token and oauth2 secret", "token and oauth2 config", "secret without token url"],
)
def test_oauth2_conflicts_fail_rendering(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """A bearer token and OAuth2 together, or an OAuth2 secret without its token URL and client
    id, fail rendering (the stage would refuse to start)."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_secret_references_and_tls_mount(chart: helm.Chart) -> None:
    """OAuth2 secret, SASL password and TLS files point at the named Secrets and mount path."""
    docs = render(chart, load_values(ALL_FEATURES))
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PIPELINE_OAUTH2_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "space-api-oauth2",
        "key": "client-secret",
    }
    assert "PIPELINE_SPACE_API_TOKEN" not in env
    assert env["PIPELINE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-user",
        "key": "password",
    }
    (tls,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "kafka-tls"]
    assert tls["secret"]["secretName"] == "kafka-client-tls"
    mount = "/etc/space-pipeline/kafka-tls"
    assert {"name": "kafka-tls", "mountPath": mount, "readOnly": True} in container(docs)[
        "volumeMounts"
    ]
    config = configmap_env(docs)
    assert config["PIPELINE_KAFKA_SSL_CAFILE"] == f"{mount}/ca.crt"
    assert config["PIPELINE_KAFKA_SSL_CERTFILE"] == f"{mount}/tls.crt"
    assert config["PIPELINE_KAFKA_SSL_KEYFILE"] == f"{mount}/tls.key"


def test_api_tls_files_are_mounted_from_their_secret_and_named_in_the_settings(
    chart: helm.Chart,
) -> None:
    """``apiTls.existingSecret``: the Space API's CA and our client certificate and key, mounted
    read-only beside Kafka's, with PIPELINE_SPACE_API_CA_FILE and friends pointing at them."""
    docs = render(chart, load_values(ALL_FEATURES))
    (tls,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "api-tls"]
    assert tls["secret"]["secretName"] == "space-api-client-tls"
    assert [item["key"] for item in tls["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]
    mount = "/etc/space-pipeline/api-tls"
    assert {"name": "api-tls", "mountPath": mount, "readOnly": True} in container(docs)[
        "volumeMounts"
    ]
    config = configmap_env(docs)
    assert config["PIPELINE_SPACE_API_CA_FILE"] == f"{mount}/ca.crt"
    assert config["PIPELINE_SPACE_API_CLIENT_CERT_FILE"] == f"{mount}/tls.crt"
    assert config["PIPELINE_SPACE_API_CLIENT_KEY_FILE"] == f"{mount}/tls.key"


def test_api_tls_with_a_ca_only_sets_no_client_certificate(chart: helm.Chart) -> None:
    """Server-only TLS to a private CA: empty certKey and keyKey project and set nothing else;
    without a Secret nothing is mounted at all."""
    only_ca = {"apiTls": {"existingSecret": "api-ca", "certKey": "", "keyKey": ""}}
    docs = render(chart, only_ca)
    (tls,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == "api-tls"]
    assert [item["key"] for item in tls["secret"]["items"]] == ["ca.crt"]
    config = configmap_env(docs)
    assert "PIPELINE_SPACE_API_CA_FILE" in config
    assert "PIPELINE_SPACE_API_CLIENT_CERT_FILE" not in config
    assert "PIPELINE_SPACE_API_CLIENT_KEY_FILE" not in config
    assert "api-tls" not in {v["name"] for v in pod_spec(render(chart))["volumes"]}


def test_pdb_allows_one_unavailable(chart: helm.Chart) -> None:
    """The PodDisruptionBudget is on by default with maxUnavailable 1 and the pod selector."""
    docs = render(chart)
    pdb = only(docs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb
    assert pdb["selector"] == only(docs, "Deployment")["spec"]["selector"]


def test_checksum_annotation_follows_config(chart: helm.Chart) -> None:
    """checksum/config changes when the config changes, and only then."""

    def checksum(*layers: dict[str, Any]) -> str:
        deployment = only(render(chart, *layers), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum()
    assert len(base) == 64
    assert checksum({"config": {"logLevel": "DEBUG"}}) != base
    assert checksum({"extraConfig": {"PIPELINE_X": "1"}}) != base
    assert checksum({"replicas": 4}) == base


def test_both_monitors_fail(chart: helm.Chart) -> None:
    """Enabling the PodMonitor and the ServiceMonitor together fails: series would double."""
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render(chart, {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}})


def test_service_monitor_scrapes_metrics_service(chart: helm.Chart) -> None:
    """The ServiceMonitor brings a metrics Service whose port `metrics` it selects."""
    docs = render(
        chart,
        {"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prom"}}},
    )
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert (
        service["spec"]["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    )


def test_pod_monitor_settings(chart: helm.Chart) -> None:
    """The PodMonitor carries additionalLabels, interval, relabelings and a namespace override."""
    monitor = only(render(chart, load_values(ALL_FEATURES)), "PodMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["interval"] == "15s"
    assert endpoint["relabelings"][0]["targetLabel"] == "node"


def test_prometheus_rule_embeds_alerts_file(chart: helm.Chart) -> None:
    """The PrometheusRule holds files/alerts.yaml's groups, their selectors scoped to the release's
    namespace and the PodMonitor's job (tests/test_alerts.py checks the rest), then
    additionalGroups."""
    text = (CHART_DIR / "files" / "alerts.yaml").read_text()
    scoped = f'namespace="{NAMESPACE}", job="monitoring/{RELEASE}-space-pipeline"'
    rules_file = yaml.safe_load(text.replace('job="space-pipeline"', scoped))
    rule = only(render(chart, load_values(ALL_FEATURES)), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    assert groups[: len(rules_file["groups"])] == rules_file["groups"]
    assert groups[-1]["name"] == "space-pipeline.custom"


def test_grafana_dashboard_configmap(chart: helm.Chart) -> None:
    """The dashboard ConfigMap has the sidecar label, folder annotation and the JSON file, made the
    release's (uid, title, $job: see below)."""
    docs = render(chart, load_values(ALL_FEATURES))
    (dashboard,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["kind"] == "ConfigMap"
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Streaming"}
    expected = json.loads((CHART_DIR / "files" / "space-pipeline-dashboard.json").read_text())
    rendered = json.loads(dashboard["data"]["space-pipeline-dashboard.json"])
    # The release's own: uid, title and the job variable's default (tested below); the rest as is.
    for key in ("uid", "title", "templating"):
        del expected[key], rendered[key]
    assert rendered == expected


def rendered_dashboard(
    chart: helm.Chart, *layers: dict[str, Any], release: str = RELEASE
) -> dict[str, Any]:
    docs = render(chart, {"grafanaDashboard": {"enabled": True}}, *layers, release=release)
    (configmap,) = [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]
    dashboard: dict[str, Any] = json.loads(configmap["data"]["space-pipeline-dashboard.json"])
    return dashboard


def test_each_release_renders_a_dashboard_of_its_own(chart: helm.Chart) -> None:
    """Two releases in one Grafana get two dashboards: a uid (at most 40 characters, Grafana's
    limit) and a title derived from the release, and $job preset to the release's scrape job."""
    monitored = {"podMonitor": {"enabled": True}}
    demo = rendered_dashboard(chart, monitored)
    other = rendered_dashboard(chart, monitored, release="other")
    renamed = rendered_dashboard(chart, monitored, {"fullnameOverride": "x" * 63})
    uids = {demo["uid"], other["uid"], renamed["uid"]}
    assert len(uids) == 3, uids
    assert all(len(uid) <= 40 and re.fullmatch(r"[a-z0-9-]+", uid) for uid in uids), uids
    assert demo["uid"].startswith(f"{RELEASE}-space-pipeline-")
    assert demo["title"] == f"Space Pipeline ({NAMESPACE}/{RELEASE}-space-pipeline)"
    assert demo["title"] != other["title"]
    (job,) = [v for v in demo["templating"]["list"] if v["name"] == "job"]
    expected = f"{NAMESPACE}/{RELEASE}-space-pipeline"
    assert job["current"] == {"selected": True, "text": expected, "value": expected}
    # Without a monitor or prometheusRule.job the chart cannot know the job: Grafana picks one.
    (job,) = [v for v in rendered_dashboard(chart)["templating"]["list"] if v["name"] == "job"]
    assert job["current"] == {}


def test_network_policy_admits_only_metrics_port(chart: helm.Chart) -> None:
    """Ingress is limited to the metrics port from the configured peers; egress as configured."""
    policy = only(render(chart, load_values(ALL_FEATURES)), "NetworkPolicy")["spec"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert {"port": 53, "protocol": "UDP"} in policy["egress"][0]["ports"]
    open_egress = only(render(chart, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert open_egress["spec"]["policyTypes"] == ["Ingress"]


def test_extra_objects_are_templated(chart: helm.Chart) -> None:
    """extraObjects render, as objects or strings, through tpl."""
    names = {
        d["metadata"]["name"]
        for d in render(chart, load_values(ALL_FEATURES))
        if d["kind"] == "ConfigMap"
    }
    assert {f"{RELEASE}-extra", f"{RELEASE}-extra-string"} <= names


# --- The image: built and pushed by the user, never a default nobody can pull -------------------

IMAGE_REQUIRED = (
    "image.repository is required: build and push the image first, see the chart README"
)


@pytest.mark.parametrize(
    "layer",
    [{}, {"image": {"repository": ""}}, {"image": {"repository": None, "tag": "1.0.0"}}],
    ids=["values.yaml default", "empty", "null"],
)
def test_image_repository_is_required(chart: helm.Chart, layer: dict[str, Any]) -> None:
    """No public image exists, so image.repository has no default: without one, rendering fails
    telling the user to build and push the image, instead of rendering a pod that never pulls."""
    settings_only = {key: value for key, value in REQUIRED.items() if key != "image"}
    with pytest.raises(helm.HelmRenderError, match=re.escape(IMAGE_REQUIRED)):
        render_exactly(chart, merged(settings_only, layer))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({}, "{repository}:{appVersion}"),
        ({"tag": "0.2.0-rc1"}, "{repository}:0.2.0-rc1"),
        ({"tag": "0.2.0", "digest": "sha256:" + "ab" * 32}, "{repository}@sha256:" + "ab" * 32),
    ],
    ids=["tag defaults to appVersion", "explicit tag", "digest wins"],
)
def test_image_reference(chart: helm.Chart, image: dict[str, Any], expected: str) -> None:
    """The pod runs <repository>:<tag>, the tag defaulting to the chart's appVersion; a digest
    pins the image and wins over the tag."""
    expected = expected.format(repository=IMAGE_REPOSITORY, appVersion=chart.metadata["appVersion"])
    assert container(render(chart, {"image": image}))["image"] == expected


def chart_readme_section(title: str) -> str:
    """The text of the chart README's ``## <title>`` section."""
    text = CHART_README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"{CHART_README.name} has no '## {title}' section"
    return match.group(1)


def shell_commands(section: str) -> list[list[str]]:
    """The commands of the section's first ```sh block: continuations joined, comments dropped."""
    block = re.search(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "no ```sh block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_install_pushes_the_image_it_installs(chart: helm.Chart) -> None:
    """The chart README's install section builds and pushes the image before `helm install`, and
    its `helm install` flags, rendered as they are, run exactly the image it pushed."""
    commands = [c for c in shell_commands(chart_readme_section("Install")) if c]
    programs = [" ".join(c[:2]) for c in commands]
    build, push, install = (
        programs.index("docker build"),
        programs.index("docker push"),
        programs.index("helm install"),
    )
    assert build < push < install, programs
    built = commands[build][commands[build].index("-t") + 1]
    pushed = commands[push][2]
    assert built == pushed

    flags = commands[install]
    values = merged(
        *(helm.parse_set_string(flags[i + 1]) for i, flag in enumerate(flags) if flag == "--set")
    )
    assert set(values["image"]) == {"repository", "tag"}
    docs = render_exactly(chart, values)
    assert container(docs)["image"] == pushed


def test_readme_says_tag_defaults_to_app_version() -> None:
    """The install section tells the user the image tag defaults to the chart's appVersion."""
    section = " ".join(chart_readme_section("Install").split())
    assert "`image.tag` defaults to the chart's `appVersion`" in section


# --- The chart README's Values table is values.yaml, defaults included ---------------------------


def split_outside_code(text: str, separator: str) -> list[str]:
    """``text`` split on ``separator`` wherever it is not inside `code`, parts stripped."""
    parts: list[str] = []
    current: list[str] = []
    in_code = False
    i = 0
    while i < len(text):
        if text[i] == "`":
            in_code = not in_code
        elif not in_code and text.startswith(separator, i):
            parts.append("".join(current).strip())
            current = []
            i += len(separator)
            continue
        current.append(text[i])
        i += 1
    parts.append("".join(current).strip())
    return parts


def readme_values_rows() -> list[tuple[str, str]]:
    """(Key cell, Default cell) of every row of the chart README's Values table."""
    lines = [ln for ln in chart_readme_section("Values").splitlines() if ln.startswith("|")]
    cells = [split_outside_code(line, "|")[1:-1] for line in lines]
    assert cells[0] == ["Key", "Default", "Meaning"], "the Values table's header changed"
    assert all(set(cell) <= set("-: ") for cell in cells[1]), "no separator row"
    rows = cells[2:]
    for row in rows:
        assert len(row) == 3, f"a Values row needs 3 cells: {row}"
    return [(key, default) for key, default, _ in rows]


def code_span(part: str, what: str, row: str) -> str:
    """The content of ``part``, which must be one `code` span."""
    match = re.fullmatch(r"`([^`]+)`", part)
    assert match, f"Values row {row!r}: {what} {part!r} must be one `code` span"
    return match.group(1)


def expand_braces(key: str) -> list[str]:
    """``probes.{startup,liveness}.path`` -> ``probes.startup.path``, ``probes.liveness.path``."""
    match = re.search(r"\{([^{}]*)\}", key)
    if not match:
        return [key]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in expand_braces(key[: match.start()] + choice.strip() + key[match.end() :])
    ]


def documented_keys(cell: str) -> list[str]:
    """The dotted keys a Key cell names. ``a.b`` / ``c`` names ``a.b`` and its sibling ``a.c``."""
    first, *siblings = (code_span(p, "key", cell) for p in split_outside_code(cell, " / "))
    parent = first.rpartition(".")[0]
    paths = [first] + [f"{parent}.{sibling}" if parent else sibling for sibling in siblings]
    return [expanded for path in paths for expanded in expand_braces(path)]


MISSING = object()


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def test_readme_values_table_matches_values_yaml(chart: helm.Chart) -> None:
    """Every key the chart README's Values table names exists in values.yaml, with the documented
    default. A Default cell holds one `YAML literal` per key (or one for all of them), separated
    by ` / `; a row may name a pattern (`config.<camelCaseField>`) only with "see values.yaml"."""
    values = chart.values
    rows = readme_values_rows()
    assert len(rows) >= 30, "the Values table was not found or not parsed"
    problems: list[str] = []
    checked = 0
    for key_cell, default_cell in rows:
        keys = documented_keys(key_cell)
        if any("<" in key for key in keys):
            assert default_cell == "see values.yaml", f"pattern row {key_cell!r}"
            continue
        defaults = [
            code_span(part, "default", key_cell) for part in split_outside_code(default_cell, " / ")
        ]
        if len(defaults) == 1:
            defaults *= len(keys)
        if len(defaults) != len(keys):
            problems.append(f"{key_cell}: {len(keys)} keys but {len(defaults)} defaults")
            continue
        for key, default in zip(keys, defaults, strict=True):
            actual = lookup(values, key)
            if actual is MISSING:
                problems.append(f"{key}: documented, but values.yaml has no such key")
                continue
            documented = yaml.safe_load(default)
            # json.dumps tells 1 from true and 1 from "1", which == would not.
            if json.dumps(documented, sort_keys=True) != json.dumps(actual, sort_keys=True):
                problems.append(f"{key}: README says {default}, values.yaml has {actual!r}")
            checked += 1
    assert problems == []
    assert checked >= 60


def test_readme_values_table_documents_every_top_level_value(chart: helm.Chart) -> None:
    """Every top-level key of values.yaml has a row in the chart README's Values table."""
    values = chart.values
    documented = {
        key.split(".")[0]
        for key_cell, _ in readme_values_rows()
        for key in documented_keys(key_cell)
    }
    assert set(values) - documented == set()


# --- No service links: the stage refuses unknown PIPELINE_* variables -----------------------------


def pod_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Make ``env`` the only PIPELINE_* variables of this process, as in the pod."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def pod_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """The stage's settings, loaded as at its start with ``env`` as the pod's environment."""
    pod_environment(monkeypatch, env)
    return load_settings(env_file=None)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_disables_service_links(chart: helm.Chart, variant: str) -> None:
    """enableServiceLinks is false: Kubernetes injects no <SERVICE>_SERVICE_HOST/_PORT variables
    for the namespace's Services (the stage needs none; it uses DNS names)."""
    assert pod_spec(render(chart, VARIANTS[variant]))["enableServiceLinks"] is False


def test_service_link_variables_would_stop_the_stage(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why service links are off: a Service named `pipeline...` (here this chart's own metrics
    Service, in a release named `pipeline`) would inject PIPELINE_*_SERVICE_HOST and friends,
    which the stage refuses at start as unknown settings."""
    release = "pipeline"
    docs = render(chart, {"metricsService": {"enabled": True}}, release=release)
    prefix = only(docs, "Service")["metadata"]["name"].upper().replace("-", "_")
    assert prefix.startswith(ENV_PREFIX)
    links = {
        f"{prefix}_SERVICE_HOST": "10.0.0.7",
        f"{prefix}_SERVICE_PORT": "9400",
        f"{prefix}_PORT": "tcp://10.0.0.7:9400",
        f"{prefix}_PORT_9400_TCP": "tcp://10.0.0.7:9400",
    }
    settings = pod_settings(monkeypatch, configmap_env(docs, release=release))
    assert settings.kafka_topics == ("orders",)  # the pod's own env is fine

    with pytest.raises(ConfigError) as refused:
        pod_settings(monkeypatch, {**configmap_env(docs, release=release), **links})
    assert {p.split(":")[0] for p in refused.value.problems} == set(links)
    assert pod_spec(docs)["enableServiceLinks"] is False


# --- The `config` block follows the stage's Settings --------------------------------------------

# Settings that never go under `config`, each with the reason.
NOT_IN_CONFIG = {
    # Secrets: only referenced from existing Secrets, under `secrets`.
    "kafka_sasl_password": "secret: secrets.kafkaSaslPassword",
    "kafka_ssl_keyfile_password": "secret: secrets.kafkaSslKeyfilePassword",
    "space_api_token": "secret: secrets.spaceApiToken",
    "oauth2_client_secret": "secret: secrets.oauth2ClientSecret",
    "admin_token": "secret: secrets.adminToken",
    "schema_registry_password": "secret: secrets.schemaRegistryPassword",
    # A path in the pod, alternative to secrets.oauth2ClientSecret: mount the Secret yourself
    # (extraVolumes, extraVolumeMounts) and set the variable with extraEnv (chart README).
    "oauth2_client_secret_file": "a mounted secret file: extraVolumes + extraEnv",
    # The registry's CA, the same way: mounted with extraVolumes, named with extraEnv.
    "schema_registry_ca_file": "a mounted file: extraVolumes + extraEnv",
    # Files the chart mounts from kafkaTls.existingSecret and points at itself.
    "kafka_ssl_cafile": "set by the chart from kafkaTls.caKey",
    "kafka_ssl_certfile": "set by the chart from kafkaTls.certKey",
    "kafka_ssl_keyfile": "set by the chart from kafkaTls.keyKey",
    # Files the chart mounts from apiTls.existingSecret and points at itself.
    "space_api_ca_file": "set by the chart from apiTls.caKey",
    "space_api_client_cert_file": "set by the chart from apiTls.certKey",
    "space_api_client_key_file": "set by the chart from apiTls.keyKey",
}


def camel_case(field: str) -> str:
    """``kafka_group_id`` -> ``kafkaGroupId``: the chart's spelling of a setting."""
    first, *rest = field.split("_")
    return first + "".join(part.title() for part in rest)


def config_fields() -> dict[str, str]:
    """camelCase key -> Settings field, for every setting that belongs under `config`."""
    return {camel_case(f): f for f in Settings.model_fields if f not in NOT_IN_CONFIG}


def config_schema(chart: helm.Chart) -> dict[str, Any]:
    schema = chart.schema
    assert schema is not None
    properties: dict[str, Any] = schema["properties"]["config"]
    return properties


def test_config_schema_lists_exactly_the_non_secret_settings(chart: helm.Chart) -> None:
    """values.schema.json's `config` keys are exactly the camelCase forms of the non-secret
    Settings fields. When this fails after adding a setting to pipeline/config.py: add it to
    values.schema.json (config.properties), to values.yaml (a commented default) and to
    tests/helm-values/all-features.yaml."""
    assert set(NOT_IN_CONFIG) <= set(Settings.model_fields), "a stale NOT_IN_CONFIG entry"
    schema = config_schema(chart)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(config_fields())


def json_type(annotation: Any) -> tuple[str, dict[str, Any]]:
    """The JSON type of a Settings annotation, and what else the schema must say about it."""
    if get_origin(annotation) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return json_type(inner)
    if get_origin(annotation) is Literal:
        return "string", {"enum": list(get_args(annotation))}
    if annotation == frozenset[int]:  # HTTP statuses: the stage's own "408,500-599" string
        return "string", {}
    if get_origin(annotation) in (tuple, frozenset):
        return "array", {"items": {"type": "string"}}
    if get_origin(annotation) is dict:
        return "object", {"additionalProperties": {"type": "string"}}
    known = {bool: "boolean", int: "integer", float: "number", str: "string", AnyHttpUrl: "string"}
    assert annotation in known, f"no JSON type known for {annotation}: extend json_type()"
    return known[annotation], {}


def refused_by_settings(field: str, kind: str) -> list[Any]:
    """Values just outside the bounds of ``field``'s constraints (gt/ge/lt/le)."""
    step = 1 if kind == "integer" else 0.001
    refused: list[Any] = []
    for bound in Settings.model_fields[field].metadata:
        if isinstance(bound, annotated_types.Gt):
            refused.append(bound.gt)
        elif isinstance(bound, annotated_types.Ge):
            refused.append(bound.ge - step)
        elif isinstance(bound, annotated_types.Lt):
            refused.append(bound.lt)
        elif isinstance(bound, annotated_types.Le):
            refused.append(bound.le + step)
    return refused


@pytest.mark.parametrize(("key", "field"), sorted(config_fields().items()))
def test_config_schema_types_follow_settings(chart: helm.Chart, key: str, field: str) -> None:
    """Each `config` key has the JSON type of its setting (integer, number, string, the same enum,
    an array of strings, a string map); it accepts the stage's default and refuses every value
    the stage would refuse by its bounds, so `helm install` fails before the pod would."""
    prop = config_schema(chart)["properties"].get(key)
    assert prop is not None, f"config.{key} is missing from values.schema.json"
    info = Settings.model_fields[field]
    kind, details = json_type(info.annotation)
    assert prop["type"] == kind
    if "enum" in details:
        assert sorted(prop["enum"]) == sorted(details.pop("enum"))
    for name, expected in details.items():  # items / additionalProperties: at least this
        assert expected.items() <= prop[name].items(), name
    validator = jsonschema.Draft7Validator(prop)
    default = default_in_chart_form(field)
    if default is not None and not info.is_required():
        assert validator.is_valid(default), f"config.{key} refuses the default {default!r}"
    for value in refused_by_settings(field, kind):
        assert not validator.is_valid(value), f"config.{key} accepts {value}"


def default_in_chart_form(field: str) -> Any:
    """A setting's default as written under `config`: statuses as the stage's own text, other
    sets and tuples as lists."""
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if info.annotation == frozenset[int]:
        return format_statuses(value)
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def values_yaml_config_lines() -> dict[str, tuple[bool, Any]]:
    """camelCase key -> (commented out?, value) for each key line of values.yaml's `config`."""
    text = (CHART_DIR / "values.yaml").read_text()
    block = re.search(r"^config:\n(.*?)^(?=\S)", text, re.MULTILINE | re.DOTALL)
    assert block, "values.yaml has no config block"
    found: dict[str, tuple[bool, Any]] = {}
    for line in block.group(1).splitlines():
        match = re.fullmatch(r"  (# )?([a-z][A-Za-z0-9]*):(.*)", line)
        if match:
            value = re.split(r"\s+#", match.group(3), maxsplit=1)[0]
            found[match.group(2)] = (bool(match.group(1)), yaml.safe_load(value))
    return found


def test_values_yaml_lists_every_setting_with_its_default() -> None:
    """values.yaml's `config` names every setting, set or as a comment; a commented one shows the
    stage's own default (empty when it has none), and a required one is a real key."""
    lines = values_yaml_config_lines()
    assert set(lines) == set(config_fields())
    for key, field in config_fields().items():
        commented, value = lines[key]
        info = Settings.model_fields[field]
        if info.is_required():
            assert not commented, f"config.{key} is required: it must be a real key"
            continue
        default = default_in_chart_form(field)
        if commented:
            assert value == default, (
                f"values.yaml says # {key}: {value!r}, the default is {default!r}"
            )


def test_all_features_configmap_is_accepted_by_settings(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of `config` value (numbers, booleans, lists, maps, status ranges) renders into a
    variable the stage parses back to what the values said."""
    values = load_values(ALL_FEATURES)
    env = configmap_env(render(chart, values))
    # Not settings the stage checks here: the TLS files exist only in the pod, and an
    # extraConfig name newer than the stage.
    in_the_pod = ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")
    in_the_pod += ("SPACE_API_CA_FILE", "SPACE_API_CLIENT_CERT_FILE", "SPACE_API_CLIENT_KEY_FILE")
    for name in (*in_the_pod, "FUTURE_SETTING"):
        del env[ENV_PREFIX + name]
    secrets = {
        name: "from-a-secret"
        for name in ("KAFKA_SASL_PASSWORD", "OAUTH2_CLIENT_SECRET", "SCHEMA_REGISTRY_PASSWORD")
    }
    pod_environment(monkeypatch, {**env, **{ENV_PREFIX + k: v for k, v in secrets.items()}})
    settings = Settings(_env_file=None)
    config = values["config"]
    assert settings.oauth2_extra_params == config["oauth2ExtraParams"]
    assert settings.batch_max_records == config["batchMaxRecords"]
    assert settings.batch_format == config["batchFormat"]
    # rateLimit.globalPerS / globalBurst split across keda.partitionCount pods.
    pods = values["keda"]["partitionCount"]
    assert settings.rate_limit_per_s == values["rateLimit"]["globalPerS"] / pods
    assert settings.rate_limit_burst == values["rateLimit"]["globalBurst"] // pods
    assert settings.retry_statuses == parse_statuses(config["retryStatuses"])
    assert settings.dead_letter_idempotence is config["deadLetterIdempotence"] is False
    assert settings.result_topic == config["resultTopic"]
    assert settings.result_max_bytes == config["resultMaxBytes"]
    assert settings.result_idempotence is config["resultIdempotence"] is False
    assert settings.skip_records == frozenset(config["skipRecords"])
    assert list(settings.forward_headers) == config["forwardHeaders"]
    assert settings.space_api_headers == config["spaceApiHeaders"]
    assert settings.partition_buffer_bytes == config["partitionBufferBytes"]
    assert settings.progress_interval_s == config["progressIntervalS"]


# --- Your own function as the sink, its module mounted on PYTHONPATH ----------------------------


def test_function_sink_configmap_is_accepted_by_settings(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """function-sink.yaml's ConfigMap is a valid Settings delivering through the example client:
    no URL, the function, its argument and the exceptions that reject, a per-pod rate limit."""
    values = load_values(FUNCTION_SINK)
    env = configmap_env(render(chart, values))
    assert "PIPELINE_SPACE_API_URL" not in env
    # In the pod, PYTHONPATH holds the mounted module (see the next test); here, its source.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    settings = pod_settings(monkeypatch, env)
    config = values["config"]
    assert settings.space_api_url is None
    assert settings.sink_function == config["sinkFunction"]
    assert settings.sink_argument == config["sinkArgument"]
    assert list(settings.sink_reject_exceptions) == config["sinkRejectExceptions"]
    assert settings.rate_limit_per_s == config["rateLimitPerS"]
    assert settings.rate_limit_burst == config["rateLimitBurst"]


def test_function_sink_module_is_mounted_on_pythonpath(chart: helm.Chart) -> None:
    """The way values.yaml and the README give to bring the function's module: a ConfigMap in
    extraVolumes, mounted read-only by extraVolumeMounts at a directory extraEnv puts on
    PYTHONPATH, and the module named by config.sinkFunction in it."""
    values = load_values(FUNCTION_SINK)
    docs = render(chart, values)
    main = container(docs)
    env = {e["name"]: e.get("value") for e in main["env"]}
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == env["PYTHONPATH"]]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"]]
    assert "configMap" in volume
    module = values["config"]["sinkFunction"].partition(":")[0]
    assert (ROOT / "examples" / f"{module}.py").is_file()


# --- rateLimit.globalPerS: one limit for all pods, split across them ----------------------------


def rate_share(docs: list[dict[str, Any]]) -> tuple[float, int]:
    """The per-pod PIPELINE_RATE_LIMIT_PER_S and _BURST the ConfigMap gives every pod."""
    env = configmap_env(docs)
    return float(env["PIPELINE_RATE_LIMIT_PER_S"]), int(env["PIPELINE_RATE_LIMIT_BURST"])


@pytest.mark.parametrize(
    ("values", "per_s", "burst"),
    [
        ({"rateLimit": {"globalPerS": 100}}, 100, 10),
        ({"replicas": 3, "rateLimit": {"globalPerS": 100}}, 100 / 3, 3),
        ({"replicas": 4, "rateLimit": {"globalPerS": 50, "globalBurst": 20}}, 12.5, 5),
        ({"replicas": 6, "rateLimit": {"globalPerS": 0.5, "globalBurst": 4}}, 0.5 / 6, 1),
        ({"replicas": 0, "rateLimit": {"globalPerS": 100}}, 100, 10),
        (
            {
                "replicas": 3,
                "keda": {"enabled": True, "partitionCount": 8},
                "rateLimit": {"globalPerS": 400, "globalBurst": 40},
            },
            50,
            5,
        ),
        (
            {
                "keda": {"enabled": True, "partitionCount": 12, "minReplicaCount": 4},
                "rateLimit": {"globalPerS": 30},
            },
            2.5,
            1,
        ),
    ],
    ids=[
        "1 replica",
        "3 replicas",
        "4 replicas",
        "burst at least 1",
        "0 replicas",
        "keda: partitionCount, not replicas",
        "keda: partitionCount, not minReplicaCount",
    ],
)
def test_global_rate_limit_is_split_across_pods(
    chart: helm.Chart,
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, Any],
    per_s: float,
    burst: int,
) -> None:
    """Every pod gets globalPerS / pods and max(1, globalBurst // pods), pods being `replicas`
    (at least 1), or keda.partitionCount (the ScaledObject's maxReplicaCount) with KEDA; the
    stage reads the share back as the same number."""
    docs = render(chart, values)
    assert rate_share(docs) == (pytest.approx(per_s), burst)
    keda = values.get("keda", {})
    pods = keda["partitionCount"] if keda.get("enabled") else max(1, values.get("replicas", 1))
    if keda.get("enabled"):
        assert only(docs, "ScaledObject")["spec"]["maxReplicaCount"] == pods
    assert rate_share(docs)[0] * pods == pytest.approx(values["rateLimit"]["globalPerS"])
    settings = pod_settings(monkeypatch, configmap_env(docs))
    assert (settings.rate_limit_per_s, settings.rate_limit_burst) == (pytest.approx(per_s), burst)


@pytest.mark.parametrize(
    "values",
    [{}, {"replicas": 3, "config": {"rateLimitPerS": 20, "rateLimitBurst": 4}}],
    ids=["defaults", "per pod"],
)
def test_no_global_rate_limit_leaves_config_alone(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    """With rateLimit.globalPerS at 0 (the default), config.rateLimitPerS / rateLimitBurst are
    each pod's own limit, unsplit, and unset ones are not rendered."""
    env = configmap_env(render(chart, values))
    rendered = {k: v for k, v in env.items() if k.startswith("PIPELINE_RATE_LIMIT_")}
    config = values.get("config", {})
    assert rendered == (
        {"PIPELINE_RATE_LIMIT_PER_S": "20", "PIPELINE_RATE_LIMIT_BURST": "4"} if config else {}
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"rateLimitPerS": 10}}, r"rateLimit\.globalPerS and config\.rateLimitPerS"),
        ({"config": {"rateLimitPerS": 0}}, r"rateLimit\.globalPerS and config\.rateLimitPerS"),
        ({"config": {"rateLimitBurst": 5}}, r"rateLimit\.globalPerS and config\.rateLimitBurst"),
        (
            {"extraConfig": {"PIPELINE_RATE_LIMIT_PER_S": "9"}},
            r"extraConfig must not set PIPELINE_RATE_LIMIT_PER_S: use rateLimit\.globalPerS",
        ),
        (
            {"extraEnv": [{"name": "PIPELINE_RATE_LIMIT_BURST", "value": "9"}]},
            r"extraEnv must not set PIPELINE_RATE_LIMIT_BURST: use rateLimit\.globalBurst",
        ),
        ({"keda": {"enabled": True}}, r"keda\.partitionCount is required"),
    ],
    ids=["per_s", "per_s 0", "burst", "extraConfig", "extraEnv", "keda without partitions"],
)
def test_global_rate_limit_conflicts_fail_rendering(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """With rateLimit.globalPerS set, the chart owns PIPELINE_RATE_LIMIT_PER_S and _BURST:
    setting them in `config`, extraConfig or extraEnv too fails rendering."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, {"rateLimit": {"globalPerS": 100}}, values)


def test_global_rate_limit_share_rolls_pods_when_replicas_change(chart: helm.Chart) -> None:
    """The share lives in the ConfigMap, so a new `replicas` rolls the pods with their new share
    (without a global limit, `replicas` leaves the pods alone)."""

    def checksum(*layers: dict[str, Any]) -> str:
        deployment = only(render(chart, *layers), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    on = {"rateLimit": {"globalPerS": 100}}
    assert checksum(on, {"replicas": 2}) != checksum(on, {"replicas": 4})


# workload: statefulset


def test_a_statefulset_gives_each_pod_its_name_as_its_static_member_id(chart: helm.Chart) -> None:
    """workload: statefulset renders a StatefulSet (no Deployment) naming a headless Service of
    the pods, and the ConfigMap sets PIPELINE_KAFKA_GROUP_INSTANCE_ID={hostname}, which the stage
    replaces with the pod's stable name: a rolling restart then moves no partition."""
    docs = render(chart, {"workload": "statefulset", "replicas": 3})
    stateful = only(docs, "StatefulSet")
    assert not [d for d in docs if d["kind"] == "Deployment"]
    assert 3 == stateful["spec"]["replicas"]
    assert "strategy" not in stateful["spec"]
    assert "RollingUpdate" == stateful["spec"]["updateStrategy"]["type"]
    (headless,) = [
        d
        for d in docs
        if d["kind"] == "Service" and d["metadata"]["name"] == stateful["spec"]["serviceName"]
    ]
    assert "None" == headless["spec"]["clusterIP"]
    assert headless["spec"]["selector"] == stateful["spec"]["selector"]["matchLabels"]
    assert "{hostname}" == configmap_env(docs)["PIPELINE_KAFKA_GROUP_INSTANCE_ID"]
    pdb = only(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"] == stateful["spec"]["selector"]


def test_a_deployment_sets_no_static_member_id(chart: helm.Chart) -> None:
    """A Deployment's pods get new names at every restart: no instance id, no headless Service."""
    docs = render(chart)
    assert "PIPELINE_KAFKA_GROUP_INSTANCE_ID" not in configmap_env(docs)
    assert not [d for d in docs if d["kind"] == "Service"]


def test_an_explicit_instance_id_template_wins_under_a_statefulset(chart: helm.Chart) -> None:
    docs = render(chart, load_values(STATEFULSET))
    assert "space-{hostname}" == configmap_env(docs)["PIPELINE_KAFKA_GROUP_INSTANCE_ID"]


def test_keda_scales_the_statefulset(chart: helm.Chart) -> None:
    """KEDA's scaleTargetRef names the kind it scales: the StatefulSet, which leaves replicas to
    the HPA."""
    docs = render(chart, load_values(STATEFULSET))
    stateful = only(docs, "StatefulSet")
    target = only(docs, "ScaledObject")["spec"]["scaleTargetRef"]
    assert ("apps/v1", "StatefulSet") == (target["apiVersion"], target["kind"])
    assert stateful["metadata"]["name"] == target["name"]
    assert "replicas" not in stateful["spec"]


def test_keda_scales_the_deployment_by_default(chart: helm.Chart) -> None:
    docs = render(chart, {"keda": {"enabled": True, "partitionCount": 6}})
    assert "Deployment" == only(docs, "ScaledObject")["spec"]["scaleTargetRef"]["kind"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"kafkaGroupInstanceId": "{hostname}"}}, "needs workload: statefulset"),
        (
            {"workload": "statefulset", "strategy": {"type": "Recreate"}},
            "strategy is a Deployment's",
        ),
    ],
)
def test_a_static_member_id_under_a_deployment_or_a_strategy_under_a_statefulset_fails(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    """A Deployment's static id would change with each pod name (or be shared by replicas); a
    StatefulSet has no Deployment strategy."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


# --- Labels: one key once ------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice (PyYAML keeps the last silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key) for key, _ in node.value]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(
            None, None, f"duplicate keys {sorted(duplicates)}", node.start_mark
        )
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def test_common_labels_never_write_a_chart_label_twice(chart: helm.Chart) -> None:
    """commonLabels may set app.kubernetes.io/component (it wins, once) but never a selector label:
    every rendered mapping has each key once."""
    common = {
        "app.kubernetes.io/component": "orders-sink",
        "app.kubernetes.io/name": "elsewhere",
        "team": "space",
    }
    values = merged(REQUIRED, load_values(ALL_FEATURES), {"commonLabels": common})
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.load_all(text, Loader=_UniqueKeyLoader):
            if not doc:
                continue
            labels = doc["metadata"].get("labels", {})
            if "app.kubernetes.io/component" in labels:
                assert labels["app.kubernetes.io/component"] == "orders-sink", path
            assert labels.get("app.kubernetes.io/name", "space-pipeline") == "space-pipeline", path
