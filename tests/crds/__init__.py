"""Published CRDs the chart renders objects of, as JSON schemas the way an API server applies them.

A CRD's ``openAPIV3Schema`` lets unknown fields through (the server prunes them, or refuses them
under strict field validation), so a misspelt field would pass a plain JSON-schema check.
:func:`crd_schema` closes every object that lists its properties, as ``kubectl apply
--validate=strict`` does, except where the CRD keeps unknown fields on purpose.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parent


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    if schema.get("properties") is not None:
        closed["properties"] = {
            name: _strict(value) for name, value in schema["properties"].items()
        }
    return closed


@functools.cache
def crd_schema(file: str) -> dict[str, Any]:
    """The strict JSON schema of the (only) served version of the CRD in ``file``."""
    crd = yaml.safe_load((CRD_DIR / file).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    schema: dict[str, Any] = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, left open by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema
