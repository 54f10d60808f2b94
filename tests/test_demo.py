"""``space-pipeline demo``, the README's first command, works and checks itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_delivers_everything_in_order_and_says_so(tmp_path):
    """A short demo (own embedded broker, stub API, stage) exits 0 with every check passed."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--records", "200", "--latency-ms", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "200 / 200" in result.stdout
    assert "all checks passed" in result.stdout
    # 200 records take well under the 3 s before the demo's outage starts: none is claimed.
    assert "fault not met" in result.stdout
    assert "fault ridden out" not in result.stdout
