"""The package's public surface is exactly what ``__all__`` says (ruff's RUF022 keeps it sorted)."""

from __future__ import annotations

from types import ModuleType

import pipeline


def test_every_public_name_is_exported():
    """``pipeline.__all__`` lists every public class and function the package defines, and each
    of them loads (on first use: importing the package loads none of them)."""
    public = {
        name
        for name in dir(pipeline)
        if not name.startswith("_")
        and not isinstance(getattr(pipeline, name), ModuleType)
        and name != "annotations"  # from __future__
    }
    assert public | {"__version__"} == set(pipeline.__all__)
