"""A library import is a library import: the sender alone brings no Kafka, HTTP or metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pipeline

HEAVY = ("aiokafka", "aiohttp", "httpx", "pydantic", "prometheus_client", "structlog")

PROBE = """
import json, sys
{statement}
loaded = [name for name in {heavy!r} if name in sys.modules]
from prometheus_client import REGISTRY  # only now, to look at it
names = sorted(n for n in REGISTRY._names_to_collectors if n.startswith("space_pipeline_"))
print(json.dumps({{"loaded": loaded, "metrics": names}}))
"""


def probe(statement: str) -> dict[str, list[str]]:
    """Run ``statement`` in a fresh interpreter: which heavy modules and metrics it left."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "statement",
    [
        "from pipeline import OrderedSender",
        "from pipeline.sender import OrderedSender, call_blocking",
        "import pipeline",
    ],
)
def test_importing_the_sender_loads_no_kafka_no_http_stack_and_registers_no_metric(
    statement: str,
) -> None:
    assert {"loaded": [], "metrics": []} == probe(statement)


def test_a_stage_still_gets_its_metrics_registered() -> None:
    """Laziness must not lose the metrics: the stage's names come with it, as before."""
    assert "space_pipeline_" in json.dumps(probe("from pipeline import Stage")["metrics"])


def test_call_blocking_is_exported_where_the_readme_documents_it() -> None:
    from pipeline.sender import call_blocking  # noqa: PLC0415

    assert pipeline.call_blocking is call_blocking
    assert "call_blocking" in pipeline.__all__


def test_every_name_in_all_resolves_and_shows_in_dir() -> None:
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
    assert set(pipeline.__all__) <= set(dir(pipeline))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        pipeline.no_such_thing  # noqa: B018
