"""Settings for stages under test, named through :mod:`pipeline.config` so that a renamed setting
breaks here, once, rather than in every test that starts a stage."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ENV_PREFIX, Settings, env_name

# tansu holds a JoinGroup for about half the session timeout before it answers: with the default
# 10 s every stage start would wait 5 s. The tests run with a short session instead.
QUICK_JOIN = {"kafka_session_timeout_ms": 3_000, "kafka_heartbeat_interval_ms": 1_000}


def environment(**fields: Any) -> dict[str, str]:
    """The environment variables of the given settings (``kafka_topics=...``), values as text."""
    for name in fields:
        assert name in Settings.model_fields, f"{name} is not a setting"
    return {env_name(name): str(value) for name, value in fields.items()}


# The fewest settings ``space-pipeline`` starts with (nobody listens at these addresses).
VALID = environment(
    kafka_bootstrap_servers="127.0.0.1:1",
    kafka_topics="t",
    space_api_url="http://127.0.0.1:1/items",
)


def clean_env() -> dict[str, str]:
    """This process's environment without any ``PIPELINE_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def only_settings(
    monkeypatch: pytest.MonkeyPatch, directory: Path, settings: Mapping[str, str]
) -> pytest.MonkeyPatch:
    """This process's environment with exactly ``settings`` as its ``PIPELINE_*`` variables, in
    ``directory`` (no ``.env`` there): what loading the settings then sees is all the test says.
    """
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(directory)
    return monkeypatch
