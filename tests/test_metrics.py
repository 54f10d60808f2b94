"""The metrics catalogue: what the hot path counts cheaply is exposed as prometheus-client would."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pipeline.metrics

# Runs in a fresh interpreter: the module-level metrics start from zero there. Each histogram
# the stage buffers is fed the same values as a plain prometheus-client ``Histogram`` of the same
# name, help and buckets in a registry of its own (a counter likewise for a tallied counter);
# both expositions are printed after each of two scrapes, ``_created`` times masked.
SCRIPT = textwrap.dedent(
    """
    import math
    import re

    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import generate_latest

    from pipeline import metrics

    HISTOGRAMS = {
        "space_pipeline_send_duration_seconds": (metrics.SEND_SECONDS, metrics.LATENCY_BUCKETS),
        "space_pipeline_end_to_end_latency_seconds": (metrics.END_TO_END, metrics.E2E_BUCKETS),
        "space_pipeline_batch_records": (
            metrics.BATCH_SIZES, (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
        ),
    }
    VALUES = [0.0, 0.001, 0.0011, 0.02, 0.5, 1, 2, 3, 59.9, 60.0, 75.0, 1000, 5000, 1e9]

    helps = {family.name: family.documentation for family in REGISTRY.collect()}
    reference = CollectorRegistry()
    pairs = []
    for name, (buffered, buckets) in HISTOGRAMS.items():
        plain = Histogram(name, helps[name], buckets=buckets, registry=reference)
        pairs.append((buffered.observe, plain.observe))
    delivered = Counter(
        "space_pipeline_records_delivered", helps["space_pipeline_records_delivered"],
        ("topic", "partition"), registry=reference,
    )

    def masked(registry):
        text = generate_latest(registry).decode()
        keep = [
            line for line in text.splitlines()
            if any(name in line for name in [*HISTOGRAMS, "space_pipeline_records_delivered"])
        ]
        lines = [re.sub(r"^(\\S+_created\\S*) .*$", r"\\1 <time>", line) for line in keep]
        families = "\\n".join(lines).split("# HELP ")
        return sorted(f.strip() for f in families)  # families in any order, each in its own

    for scrape in range(2):
        for value in VALUES[scrape::2]:
            for buffered, plain in pairs:
                buffered(value)
                plain(value)
            metrics.DELIVERED.labels("orders", "3").count += 1
            delivered.labels("orders", "3").inc()
        metrics.flush()
        print(repr((masked(REGISTRY), masked(reference))))
    """
)


def test_buffered_histograms_and_tallies_expose_what_prometheus_client_would() -> None:
    """Names, help, type, bucket bounds, cumulative counts, sum, count and ``_created``: the
    stage's cheap histograms and tallied counters read exactly like prometheus-client's own,
    scrape after scrape (nothing counted twice, nothing lost)."""
    root = Path(pipeline.metrics.__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root)},
    )

    scrapes = [ast.literal_eval(line) for line in done.stdout.splitlines()]
    assert 2 == len(scrapes)
    for ours, theirs in scrapes:
        assert theirs == ours
        exposed = "\n".join(ours)
        assert 'space_pipeline_send_duration_seconds_bucket{le="+Inf"}' in exposed
        assert "space_pipeline_records_delivered_total{" in exposed


def test_the_metrics_module_reads_no_private_attribute_of_prometheus_client() -> None:
    """Only prometheus-client's public API: its private attributes change without notice."""
    source = Path(pipeline.metrics.__file__).read_text()
    private = [
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]

    assert [] == private
