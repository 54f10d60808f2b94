"""The stub Space API (see :mod:`pipeline.dev.stub_api.server`)."""

from pipeline.dev.stub_api.server import (
    REDIRECT_LOCATION,
    FaultWindow,
    PartitionStats,
    StubConfig,
    StubServer,
    StubStats,
    add_arguments,
    config_from_args,
    serve,
)

__all__ = [
    "REDIRECT_LOCATION",
    "FaultWindow",
    "PartitionStats",
    "StubConfig",
    "StubServer",
    "StubStats",
    "add_arguments",
    "config_from_args",
    "serve",
]
