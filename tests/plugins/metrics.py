"""Reading a stage's ``/metrics`` as Prometheus would, with ``prometheus_client``'s own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def metric_value(url: str, name: str, **labels: str) -> float | None:
    """Read one sample from a Prometheus text endpoint (``None`` when absent)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(url)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None
