"""The package's public surface is exactly what ``__all__`` says (ruff's RUF022 keeps it sorted).

The names load lazily, so the surface is stated three times in ``pipeline/__init__.py``: the
imports the type checker reads, ``__all__``, and the table of modules the names load from. These
specs keep the three in step.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pipeline


def type_checker_imports() -> dict[str, str]:
    """Each name imported under ``if TYPE_CHECKING:``, with its module."""
    tree = ast.parse(Path(pipeline.__file__).read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module or ""
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_public_name_is_exported():
    """``pipeline.__all__`` lists every public class and function the package offers."""
    public = {
        name
        for name in dir(pipeline)
        if not name.startswith("_") and not isinstance(getattr(pipeline, name), ModuleType)
    }
    assert public | {"__version__"} == set(pipeline.__all__)


def test_the_type_checker_sees_the_names_the_package_loads():
    """What mypy reads under ``TYPE_CHECKING`` is ``__all__``, and each name loads from there."""
    imports = type_checker_imports()
    assert set(imports) | {"__version__"} == set(pipeline.__all__)
    for name, module in imports.items():
        assert getattr(pipeline, name) is getattr(importlib.import_module(module), name), name
