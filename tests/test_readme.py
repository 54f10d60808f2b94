"""The README says what the stage does: its settings table matches the settings themselves."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import Settings, as_text, env_name

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_table() -> dict[str, str]:
    """Variable -> default cell, from the README's "Settings" table."""
    text = README.read_text()
    section = text.split("### Settings", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(PIPELINE_[A-Z0-9_]+)` \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_the_settings_table_names_every_setting_and_nothing_else() -> None:
    """One row per setting: a new setting without a row, or a row for one that is gone, fails."""
    assert {env_name(field) for field in Settings.model_fields} == set(settings_table())


def same(documented: str, actual: str) -> bool:
    try:
        return float(documented) == float(actual)
    except ValueError:
        return documented.lower() == actual.lower()


def test_every_documented_default_is_the_real_one() -> None:
    """A default written as a literal (`` `10000` ``) is what the stage really uses."""
    table = settings_table()
    for field, info in Settings.model_fields.items():
        cell = table[env_name(field)]
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if info.is_required():
            assert cell.startswith("required"), (field, cell)
        elif literal:
            actual = as_text(info.get_default(call_default_factory=True))
            assert same(literal.group(1), actual), (field, cell, actual)
        else:
            assert cell in ("\u2013", "-") or cell.startswith("required"), (field, cell)
