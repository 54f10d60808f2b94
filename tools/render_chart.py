"""Print the Helm chart's rendered manifests, as ``helm template`` would, without a Helm binary.

``make chart`` runs this (``VALUES=my-values.yaml`` for a values file, ``ARGS`` for more flags).
It renders through the Helm Go SDK the chart tests use (``helm-python-sdk``, in the ``dev``
extra), so what it prints is what the tests check. A tool for people, never on the production
path: the image installs no part of it.

The chart renders nothing without an image repository, brokers, topics and a sink. Any of them
that no values file gives is filled in with an example, and a comment at the top says which, so
the chart can be looked at before any of it is decided.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CHART_DIR = Path(__file__).resolve().parents[1] / "helm" / "space-pipeline"

# What any install must provide (as tests/test_helm.py's REQUIRED), as example values.
EXAMPLES: dict[tuple[str, ...], Any] = {
    ("image", "repository"): "registry.example.com/space-pipeline",
    ("config", "kafkaBootstrapServers"): "kafka:9092",
    ("config", "kafkaTopics"): ["orders"],
    ("config", "spaceApiUrl"): "http://space-api:8080/records",
}
# Either one names the sink.
SINKS = (("config", "spaceApiUrl"), ("config", "sinkFunction"))


def merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``, maps merged key by key (as Helm merges values files)."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _given(values: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, dict) or node.get(key) in (None, "", []):
            return False
        node = node[key]
    return True


def with_examples(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with an example for each required value they lack; and which were filled."""
    filled = []
    for path, example in EXAMPLES.items():
        if _given(values, path):
            continue
        if path in SINKS and any(_given(values, sink) for sink in SINKS):
            continue
        layer: dict[str, Any] = {path[-1]: example}
        for key in reversed(path[:-1]):
            layer = {key: layer}
        values = merged(layer, values)
        filled.append(f"{'.'.join(path)}={example}")
    return values, filled


def render(values_files: list[Path], release: str, namespace: str) -> str:
    """The manifests, each under a ``# Source:`` line, with a note of the examples filled in."""
    import helm_python as helm  # noqa: PLC0415 - the dev extra; main() says so when missing

    values: dict[str, Any] = {}
    for path in values_files:
        values = merged(values, helm.values_from_yaml(path.read_text()))
    values, filled = with_examples(values)
    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(values, name=release, namespace=namespace)
    out = []
    if filled:
        out.append("# Example values filled in (no values file gave them): " + ", ".join(filled))
    for name, text in sorted((str(path), text) for path, text in files.items()):
        if name.endswith("NOTES.txt") or not text.strip():
            continue
        out.append(f"---\n# Source: {name}\n{text.strip()}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Render and print; one line on standard error when it cannot."""
    parser = argparse.ArgumentParser(
        prog="render_chart", description="Print the chart's manifests (helm template, offline)."
    )
    parser.add_argument(
        "--values", "-f", action="append", type=Path, default=[], help="a values file (repeatable)"
    )
    parser.add_argument("--release", default="space-pipeline", help="release name (%(default)s)")
    parser.add_argument("--namespace", default="default", help="namespace (%(default)s)")
    args = parser.parse_args(argv)
    for path in args.values:
        if not path.is_file():
            print(f"render_chart: --values {path}: no such file", file=sys.stderr)
            return 2
    try:
        import helm_python as helm  # noqa: PLC0415 - the dev extra
    except ImportError:
        print("render_chart: needs the Helm SDK: pip install -e '.[dev]'", file=sys.stderr)
        return 1
    try:
        text = render(args.values, args.release, args.namespace)
    except helm.HelmError as error:  # a values file or the chart is wrong: one line
        why = " ".join(str(error).split()) or repr(error)
        print(f"render_chart: {type(error).__name__}: {why}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
