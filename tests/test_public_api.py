"""The package's public surface is exactly what ``__all__`` says."""

from __future__ import annotations

import pipeline


def test_every_public_name_is_exported_and_sorted():
    """``pipeline.__all__`` lists every public class and function, in sorted order."""
    public = {
        name
        for name, value in vars(pipeline).items()
        if not name.startswith("_")
        and not isinstance(value, type(pipeline))
        and name != "annotations"  # from __future__
    }
    assert sorted(public | {"__version__"}, key=str.casefold) == sorted(
        pipeline.__all__, key=str.casefold
    )
    assert sorted(pipeline.__all__, key=str.casefold) == pipeline.__all__
