"""The suite's shared setup lives in ``tests/plugins``, one concern a module; this file loads them
and holds what is truly global."""

from __future__ import annotations

import hypothesis

# Every module of tests/plugins, each before those importing it, so that pytest rewrites the
# asserts of all of them.
pytest_plugins = [
    "tests.plugins.environment",
    "tests.plugins.waiting",
    "tests.plugins.metrics",
    "tests.plugins.stage",
    "tests.plugins.processes",
    "tests.plugins.stub",
    "tests.plugins.broker",
]

# The suite runs beside brokers and child processes on two cores: data generation may be slow
# there, which says nothing about the properties under test.
hypothesis.settings.register_profile(
    "suite", suppress_health_check=[hypothesis.HealthCheck.too_slow], deadline=None
)
hypothesis.settings.load_profile("suite")
