"""The package's public surface is exactly what ``__all__`` says (ruff's RUF022 keeps it sorted)."""

from __future__ import annotations

import pipeline


def test_every_public_name_is_exported():
    """``pipeline.__all__`` lists every public class and function the package defines."""
    public = {
        name
        for name, value in vars(pipeline).items()
        if not name.startswith("_")
        and not isinstance(value, type(pipeline))
        and name != "annotations"  # from __future__
    }
    assert public | {"__version__"} == set(pipeline.__all__)
