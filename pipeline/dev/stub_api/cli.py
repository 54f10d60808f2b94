"""``space-pipeline stub-api``: its options are :class:`StubConfig`'s fields, read one by one.

Only ``--host`` and ``--port`` are the command's own; every other flag, its help, default and
parsing come from the field's :class:`~pipeline.dev.stub_api.config.Option` metadata, so the flags
and the config cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import Field, fields
from typing import Any

from pipeline.dev.stub_api.config import Option, StubConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline stub-api`` options, one per :class:`StubConfig` field."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    add("--port", type=int, default=8080, help="port to bind, 0 for any (default: %(default)s)")
    for config_field, cli in _options():
        parse = cli.parse or type(config_field.default)
        extra: dict[str, Any] = {"type": _argument_type(parse)}
        if cli.collect is None:
            extra["default"] = config_field.default
        else:
            extra.update(action="append", default=[])
        if cli.metavar is not None:
            extra["metavar"] = cli.metavar
        if cli.choices is not None:
            extra["choices"] = cli.choices
        add(_flag(config_field, cli), *cli.aliases, help=cli.help, **extra)


def config_from_args(ns: argparse.Namespace) -> StubConfig:
    """Build the config; raises ``ValueError`` for combinations argparse cannot see (rate sum)."""
    values: dict[str, Any] = {}
    for config_field, cli in _options():
        value = getattr(ns, _flag(config_field, cli).removeprefix("--").replace("-", "_"))
        values[config_field.name] = value if cli.collect is None else cli.collect(value)
    return StubConfig(**values)


def _options() -> Iterator[tuple[Field[Any], Option]]:
    for config_field in fields(StubConfig):
        yield config_field, config_field.metadata["cli"]


def _flag(config_field: Field[Any], cli: Option) -> str:
    return cli.flag or "--" + config_field.name.replace("_", "-")


def _argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Let argparse word the error: its own for a plain type, the parser's message otherwise."""
    if parse in (str, int, float):
        return parse

    def argument(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return argument
