"""The stub Space API, a reference receiver for the demo, the benchmark and the tests.

:mod:`~pipeline.dev.stub_api.server` tells what it serves and how it judges; the settings are
:class:`StubConfig` (:mod:`~pipeline.dev.stub_api.config`), the findings :class:`StubStats`
(:mod:`~pipeline.dev.stub_api.stats`), and ``space-pipeline stub-api`` is built from the former
(:mod:`~pipeline.dev.stub_api.cli`).
"""

from pipeline.dev.stub_api.cli import add_arguments, config_from_args
from pipeline.dev.stub_api.config import REDIRECT_LOCATION, FaultKind, FaultWindow, StubConfig
from pipeline.dev.stub_api.server import StubServer, serve
from pipeline.dev.stub_api.stats import PartitionStats, StubStats

__all__ = [
    "REDIRECT_LOCATION",
    "FaultKind",
    "FaultWindow",
    "PartitionStats",
    "StubConfig",
    "StubServer",
    "StubStats",
    "add_arguments",
    "config_from_args",
    "serve",
]
