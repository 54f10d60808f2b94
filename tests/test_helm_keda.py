"""The chart on a secured Kafka, as a platform team deploys it (issue 16).

KEDA reads the group's lag with the same credentials as the pods, scales one rebalance at a
time, and neither a halt nor an outage scales it to the maximum. Values that cannot work fail the
render with one line: a NetworkPolicy that lets the pods reach neither Kafka nor the API, a
credential given as a plain value instead of a Secret. NOTES.txt never prints a credential.

Rendered KEDA objects are validated against KEDA's own published CRDs (tests/crds).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema
import pytest

from pipeline.redaction import secret_name
from tests.crds import crd_schema
from tests.test_helm import (
    CHART_DIR,
    CHART_README,
    NAMESPACE,
    RELEASE,
    REQUIRED,
    SECURED_KAFKA,
    VARIANTS,
    configmap_env,
    container,
    load_values,
    merged,
    only,
    render,
)

FULLNAME = f"{RELEASE}-space-pipeline"
KEDA = {"keda": {"enabled": True, "partitionCount": 6}}
KEDA_CRDS = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def trigger(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = only(docs, "ScaledObject")["spec"]["triggers"]
    return dict(found)


def refs(auth: dict[str, Any], source: str) -> dict[str, tuple[str, str]]:
    """A TriggerAuthentication's parameters from ``source`` (secretTargetRef, ...): (name, key)."""
    return {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"].get(source, [])}


def notes(chart: helm.Chart, *layers: dict[str, Any]) -> str:
    files = chart.render(merged(REQUIRED, *layers), name=RELEASE, namespace=NAMESPACE)
    (text,) = [text for path, text in files.items() if path.endswith("NOTES.txt")]
    return str(text)


# --- 1. KEDA authenticates to Kafka as the pods do ------------------------------------------------

SASL = {
    "config": {
        "kafkaSecurityProtocol": "SASL_PLAINTEXT",
        "kafkaSaslMechanism": "SCRAM-SHA-512",
        "kafkaSaslUsername": "space-pipeline",
    },
    "secrets": {"kafkaSaslPassword": {"existingSecret": "kafka-user"}},
}


def test_a_sasl_ssl_kafka_gets_a_trigger_authentication_from_the_pods_secrets(
    chart: helm.Chart,
) -> None:
    """SASL_SSL with SCRAM and a client certificate: KEDA's TriggerAuthentication takes the
    password, CA, certificate, key and key password from the Secrets the pods mount, the username
    from the pods' own ConfigMap, and the trigger names the mechanism and TLS and refers to it."""
    values = load_values(SECURED_KAFKA)
    docs = render(chart, values)
    auth = only(docs, "TriggerAuthentication")
    assert auth["metadata"]["name"] == FULLNAME
    assert refs(auth, "secretTargetRef") == {
        "password": ("kafka-user", "password"),
        "keyPassword": ("kafka-user", "keyfile-password"),
        "ca": ("kafka-client-tls", "ca.crt"),
        "cert": ("kafka-client-tls", "tls.crt"),
        "key": ("kafka-client-tls", "tls.key"),
    }
    assert refs(auth, "configMapTargetRef") == {
        "username": (FULLNAME, "PIPELINE_KAFKA_SASL_USERNAME")
    }
    assert configmap_env(docs)["PIPELINE_KAFKA_SASL_USERNAME"] == "space-pipeline"
    pod_secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(docs)["env"]
        if "valueFrom" in e
    }
    assert pod_secrets["PIPELINE_KAFKA_SASL_PASSWORD"] == {"name": "kafka-user", "key": "password"}
    kafka = trigger(docs)
    assert kafka["metadata"]["sasl"] == "scram_sha256"
    assert kafka["metadata"]["tls"] == "enable"
    assert kafka["authenticationRef"] == {"name": FULLNAME, "kind": "TriggerAuthentication"}


@pytest.mark.parametrize(
    ("mechanism", "sasl"),
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512")],
)
def test_the_sasl_mechanism_is_named_as_keda_spells_it(
    chart: helm.Chart, mechanism: str, sasl: str
) -> None:
    docs = render(chart, KEDA, SASL, {"config": {"kafkaSaslMechanism": mechanism}})
    metadata = trigger(docs)["metadata"]
    assert metadata["sasl"] == sasl
    assert "tls" not in metadata  # SASL_PLAINTEXT
    auth = only(docs, "TriggerAuthentication")
    assert refs(auth, "secretTargetRef") == {"password": ("kafka-user", "password")}


def test_tls_without_sasl_authenticates_with_the_client_certificate(chart: helm.Chart) -> None:
    docs = render(
        chart,
        KEDA,
        {
            "config": {"kafkaSecurityProtocol": "SSL"},
            "kafkaTls": {"existingSecret": "kafka-tls", "caKey": "ca.pem"},
        },
    )
    metadata = trigger(docs)["metadata"]
    assert metadata["tls"] == "enable"
    assert "sasl" not in metadata
    assert refs(only(docs, "TriggerAuthentication"), "secretTargetRef") == {
        "ca": ("kafka-tls", "ca.pem"),
        "cert": ("kafka-tls", "tls.crt"),
        "key": ("kafka-tls", "tls.key"),
    }


def test_tls_with_the_system_trust_needs_no_trigger_authentication(chart: helm.Chart) -> None:
    docs = render(chart, KEDA, {"config": {"kafkaSecurityProtocol": "SSL"}})
    assert trigger(docs)["metadata"]["tls"] == "enable"
    assert kinds(docs, "TriggerAuthentication") == []
    assert "authenticationRef" not in trigger(docs)


def test_a_plaintext_kafka_gets_no_authentication(chart: helm.Chart) -> None:
    docs = render(chart, KEDA)
    assert kinds(docs, "TriggerAuthentication") == []
    assert {"sasl", "tls"}.isdisjoint(trigger(docs)["metadata"])


def test_an_existing_trigger_authentication_is_used_as_it_is(chart: helm.Chart) -> None:
    """keda.triggerAuthentication.name: the chart renders none, derives no sasl/tls (the existing
    one, or keda.extraMetadata, holds them) and needs no credentials of its own."""
    docs = render(
        chart,
        KEDA,
        {
            "config": {"kafkaSecurityProtocol": "SASL_SSL"},
            "keda": {"triggerAuthentication": {"name": "kafka-auth"}},
        },
    )
    assert kinds(docs, "TriggerAuthentication") == []
    kafka = trigger(docs)
    assert kafka["authenticationRef"] == {"name": "kafka-auth", "kind": "TriggerAuthentication"}
    assert {"sasl", "tls"}.isdisjoint(kafka["metadata"])


@pytest.mark.parametrize(
    ("dropped", "missing"),
    [
        (("secrets", "kafkaSaslPassword"), "secrets.kafkaSaslPassword.existingSecret"),
        (("config", "kafkaSaslUsername"), "config.kafkaSaslUsername"),
        (("config", "kafkaSaslMechanism"), "config.kafkaSaslMechanism"),
    ],
    ids=["password", "username", "mechanism"],
)
def test_a_render_keda_cannot_authenticate_with_fails_naming_what_is_missing(
    chart: helm.Chart, dropped: tuple[str, str], missing: str
) -> None:
    values = merged(KEDA, SASL)
    del values[dropped[0]][dropped[1]]
    with pytest.raises(helm.HelmRenderError, match=rf"SASL_PLAINTEXT needs {re.escape(missing)}"):
        render(chart, values)


def test_a_client_certificate_without_its_key_fails(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"kafkaTls\.certKey and kafkaTls\.keyKey"):
        render(
            chart,
            KEDA,
            {
                "config": {"kafkaSecurityProtocol": "SSL"},
                "kafkaTls": {"existingSecret": "kafka-tls", "keyKey": ""},
            },
        )


def test_extra_metadata_cannot_contradict_the_derived_authentication(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"keda\.extraMetadata must not set sasl"):
        render(chart, KEDA, SASL, {"keda": {"extraMetadata": {"sasl": "plaintext"}}})


@pytest.mark.parametrize("variant", VARIANTS)
def test_keda_objects_match_kedas_published_crds(chart: helm.Chart, variant: str) -> None:
    """Every ScaledObject and TriggerAuthentication passes KEDA's own CRD schema, strictly (an
    unknown or misspelt field fails, as under `kubectl apply --validate=strict`)."""
    for doc in render(chart, VARIANTS[variant]):
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            jsonschema.Draft7Validator(crd_schema(KEDA_CRDS[doc["kind"]])).validate(doc)


def test_the_crd_check_refuses_a_misspelt_field(chart: helm.Chart) -> None:
    auth = only(render(chart, load_values(SECURED_KAFKA)), "TriggerAuthentication")
    auth["spec"]["secretTargetRefs"] = auth["spec"].pop("secretTargetRef")
    with pytest.raises(jsonschema.ValidationError, match="secretTargetRefs"):
        jsonschema.Draft7Validator(crd_schema(KEDA_CRDS["TriggerAuthentication"])).validate(auth)


# --- 2. KEDA scales one rebalance at a time, and not on halts or outages ---------------------


def test_keda_defaults_scale_calmly(chart: helm.Chart) -> None:
    """Defaults: a fallback that keeps the pods running when the lag cannot be read, one pod added
    per minute (each step is a rebalance), one removed per two minutes after five calm ones, and
    persistent lag (a halted partition, an API outage) left out of the scaling metric."""
    spec = only(render(chart, KEDA), "ScaledObject")["spec"]
    assert spec["fallback"] == {
        "failureThreshold": 3,
        "replicas": 1,
        "behavior": "currentReplicasIfHigher",
    }
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"] == {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
    }
    assert behavior["scaleDown"] == {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
    }
    assert spec["triggers"][0]["metadata"]["excludePersistentLag"] == "true"


def test_keda_scaling_follows_values(chart: helm.Chart) -> None:
    values = load_values(SECURED_KAFKA)
    spec = only(render(chart, values), "ScaledObject")["spec"]
    keda = values["keda"]
    fallback = {key: keda["fallback"][key] for key in ("failureThreshold", "replicas", "behavior")}
    assert spec["fallback"] == fallback
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert (
        behavior["scaleUp"]["stabilizationWindowSeconds"]
        == (keda["scaleUp"]["stabilizationWindowSeconds"])
    )
    assert behavior["scaleUp"]["policies"] == [
        {"type": "Pods", "value": keda["scaleUp"]["pods"], "periodSeconds": 90}
    ]
    assert behavior["scaleDown"]["policies"] == [
        {"type": "Pods", "value": keda["scaleDown"]["pods"], "periodSeconds": 180}
    ]


def test_fallback_can_be_turned_off_and_persistent_lag_counted(chart: helm.Chart) -> None:
    spec = only(
        render(
            chart,
            KEDA,
            {"keda": {"fallback": {"enabled": False}, "excludePersistentLag": False}},
        ),
        "ScaledObject",
    )["spec"]
    assert "fallback" not in spec
    assert "excludePersistentLag" not in spec["triggers"][0]["metadata"]


@pytest.mark.parametrize("replicas", [0, 7])
def test_fallback_replicas_outside_the_scaling_range_fail(chart: helm.Chart, replicas: int) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"keda\.fallback\.replicas"):
        render(chart, KEDA, {"keda": {"fallback": {"replicas": replicas}}})


def readme_subsection(title: str) -> str:
    text = CHART_README.read_text()
    match = re.search(
        rf"^### {re.escape(title)}\n(.*?)(?=^#{{1,3}} |\Z)", text, re.MULTILINE | re.DOTALL
    )
    assert match, f"{CHART_README.name} has no '### {title}' subsection"
    return " ".join(match.group(1).split())


def test_readme_explains_the_keda_choices() -> None:
    section = readme_subsection("Autoscaling with KEDA")
    for term in (
        "cooldownPeriod",
        "minReplicaCount",
        "fallback",
        "excludePersistentLag",
        "keda.scaleUp.pods",
        "keda.scaleDown.pods",
        "TriggerAuthentication",
        "keda.triggerAuthentication.name",
    ):
        assert f"`{term}" in section, term
    assert "only when scaling to 0" in section


# --- 3. Credentials come from Secrets, never from plain values -------------------------------

HEADER_NAMES = [
    "Authorization",
    "X-Api-Key",
    "api_key",
    "X-Auth-Token",
    "Cookie",
    "Proxy-Authorization",
    "X-Source",
    "X-Request-Id",
    "Accept",
    "X-Author",
    "X-Amz-Signature",
    "X-Session-Id",
    "Private.Key",
    "pass",
    "Passenger",
    "X-Monkey",
    "X-Client-Secret",
    "JWT",
]


@pytest.mark.parametrize("name", HEADER_NAMES)
def test_a_header_named_like_a_credential_fails_as_the_stage_would_mask_it(
    chart: helm.Chart, name: str
) -> None:
    """The chart calls a header a credential exactly when the stage's redactor does."""
    values = {"config": {"spaceApiHeaders": {name: "x"}}}
    if secret_name(name):
        with pytest.raises(helm.HelmRenderError, match=rf"config\.spaceApiHeaders\.{name} .*"):
            render(chart, values)
    else:
        assert configmap_env(render(chart, values))["PIPELINE_SPACE_API_HEADERS"]


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://user:pass@space-api.example.com/records", True),
        ("https://apikey@space-api.example.com/records", True),
        ("https://space-api.example.com/records?api_key=abc&x=1", True),
        ("https://space-api.example.com/records?x=1&Signature=abc", True),
        ("https://space-api.example.com/records?author=me&monkey=1", False),
        ("https://space-api.example.com/{topic}/records", False),
    ],
)
def test_a_url_holding_credentials_fails(chart: helm.Chart, url: str, secret: bool) -> None:
    values = {"config": {"spaceApiUrl": url}}
    if secret:
        with pytest.raises(helm.HelmRenderError, match=r"config\.spaceApiUrl holds .*secrets\."):
            render(chart, values)
    else:
        assert configmap_env(render(chart, values))["PIPELINE_SPACE_API_URL"] == url


def test_url_and_headers_from_secrets_reach_the_pod_as_secret_references(
    chart: helm.Chart,
) -> None:
    """secrets.spaceApiUrl and secrets.spaceApiHeaders set PIPELINE_SPACE_API_URL and
    PIPELINE_SPACE_API_HEADERS (a JSON object, as the stage reads it) from their Secrets; the
    ConfigMap holds neither."""
    docs = render(chart, load_values(SECURED_KAFKA))
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PIPELINE_SPACE_API_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "space-api-endpoint",
        "key": "url",
    }
    assert env["PIPELINE_SPACE_API_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "space-api-headers",
        "key": "headers.json",
    }
    assert {"PIPELINE_SPACE_API_URL", "PIPELINE_SPACE_API_HEADERS"}.isdisjoint(configmap_env(docs))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            {"secrets": {"spaceApiUrl": {"existingSecret": "api"}}},
            r"config\.spaceApiUrl and secrets\.spaceApiUrl are both set",
        ),
        (
            {
                "config": {"spaceApiUrl": "", "sinkFunction": "my_sink:send"},
                "secrets": {"spaceApiUrl": {"existingSecret": "api"}},
            },
            r"config\.spaceApiUrl and config\.sinkFunction are both set",
        ),
        (
            {
                "config": {"spaceApiHeaders": {"X-Source": "kafka"}},
                "secrets": {"spaceApiHeaders": {"existingSecret": "headers"}},
            },
            r"config\.spaceApiHeaders and secrets\.spaceApiHeaders are both set",
        ),
    ],
    ids=["url twice", "url and function", "headers twice"],
)
def test_a_secret_and_a_plain_value_for_one_setting_fail(
    chart: helm.Chart, layer: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, layer)


def test_notes_name_the_secret_instead_of_printing_its_url(chart: helm.Chart) -> None:
    text = notes(chart, load_values(SECURED_KAFKA))
    assert "the URL in Secret space-api-endpoint (key url)" in text
    assert "://" not in text.split("Health and metrics")[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_notes_never_print_a_credential(chart: helm.Chart, variant: str) -> None:
    text = notes(chart, VARIANTS[variant])
    assert not re.search(r"://[^/\s]*@", text)
    assert not re.search(r"[?&][^=\s]*(key|token|secret|sig)[^=\s]*=", text, re.IGNORECASE)


def test_notes_print_a_plain_url_as_it_is(chart: helm.Chart) -> None:
    assert f"delivers to {REQUIRED['config']['spaceApiUrl']}" in notes(chart)


# --- 3. A NetworkPolicy that lets the pods reach Kafka and the API --------------------------

CLOSED = {"networkPolicy": {"enabled": True, "egress": {"allowAll": False}}}
KAFKA_RULE = {"ports": [{"port": 9092, "protocol": "TCP"}]}
API_RULE = {"ports": [{"port": 8080}]}
PROXY = {"config": {"httpClient": "aiohttp", "httpProxy": "http://proxy.example:3128"}}


def egress(*rules: dict[str, Any], **egress: Any) -> dict[str, Any]:
    return merged(CLOSED, {"networkPolicy": {"egress": {"rules": list(rules), **egress}}})


@pytest.mark.parametrize(
    "layer",
    [
        egress(KAFKA_RULE, API_RULE),
        egress({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}),  # every port, to some peers
        egress({"ports": [{"port": 8000, "endPort": 9100}]}),  # a range holds both
        egress({"ports": [{"port": "kafka"}]}, API_RULE),  # a named port: resolved per pod
        merged(egress(KAFKA_RULE, {"ports": [{"port": 3128}]}), PROXY),  # the API behind it
    ],
    ids=["ports", "all ports", "range", "named", "proxy"],
)
def test_egress_rules_that_reach_kafka_and_the_api_render(
    chart: helm.Chart, layer: dict[str, Any]
) -> None:
    policy = only(render(chart, layer), "NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (egress(API_RULE), r"TCP port 9092 \(Kafka, kafka:9092\)"),
        (egress(KAFKA_RULE), r"TCP port 8080 \(the Space API, space-api:8080\)"),
        (egress(), r"TCP port 9092"),
        (
            egress({"ports": [{"port": 9092, "protocol": "UDP"}]}, API_RULE),
            r"TCP port 9092",
        ),
        (
            merged(egress(KAFKA_RULE, API_RULE), PROXY),
            r"TCP port 3128 \(the HTTP proxy, proxy\.example:3128\)",
        ),
        (
            merged(
                egress(KAFKA_RULE, API_RULE),
                {
                    "config": {
                        "oauth2TokenUrl": "https://auth.example.com/token",
                        "oauth2ClientId": "me",
                    }
                },
            ),
            r"TCP port 443 \(the OAuth2 token endpoint, auth\.example\.com:443\)",
        ),
        (
            egress(KAFKA_RULE, API_RULE, allowDns=False),
            r"port 53 \(DNS\)",
        ),
    ],
    ids=["no kafka", "no api", "no rules", "udp only", "proxy", "oauth2", "no dns"],
)
def test_egress_rules_that_cannot_reach_kafka_or_the_api_fail(
    chart: helm.Chart, layer: dict[str, Any], message: str
) -> None:
    with pytest.raises(
        helm.HelmRenderError, match=r"networkPolicy\.egress\.allowAll is false, but no rule .*"
    ) as failure:
        render(chart, layer)
    assert re.search(message, str(failure.value)), str(failure.value)


def test_addresses_without_names_need_no_dns(chart: helm.Chart) -> None:
    layer = merged(
        egress({"ports": [{"port": 9092}, {"port": 8080}]}, allowDns=False),
        {
            "config": {
                "kafkaBootstrapServers": "10.0.0.1:9092,[fd00::2]:9092",
                "spaceApiUrl": "http://10.0.0.9:8080/records",
            }
        },
    )
    assert only(render(chart, layer), "NetworkPolicy")


def test_a_function_sink_needs_only_kafka(chart: helm.Chart) -> None:
    layer = merged(
        egress(KAFKA_RULE),
        {"config": {"spaceApiUrl": "", "sinkFunction": "my_sink:send"}},
    )
    assert only(render(chart, layer), "NetworkPolicy")


def test_the_secured_kafka_values_reach_kafka_and_the_api(chart: helm.Chart) -> None:
    """The API's URL is in a Secret: the chart cannot see its port and checks Kafka only."""
    policy = only(render(chart, load_values(SECURED_KAFKA)), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
