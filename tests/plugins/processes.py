"""``space-pipeline`` as real child processes: one-shot commands, and stages for signals and
crashes, each given only the settings the test names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import env_name
from tests.plugins.environment import clean_env


def command(
    cwd: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``space-pipeline ARGS`` (fed ``stdin``) with only the given ``PIPELINE_*`` settings,
    to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        input=stdin,
        env=clean_env() | env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def run_once(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``space-pipeline run`` with only the given ``PIPELINE_*`` settings, to its exit."""
    return command(cwd, "run", **env)


@dataclass
class StageProcess:
    """``space-pipeline run`` as a real child process, for signals and crashes."""

    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> StageProcess:
        """Start the process; its JSON logs go to ``log_path``."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
        )
        return self

    @property
    def ops_url(self) -> str:
        """Where its ``/metrics``, ``/healthz`` and ``/readyz`` are served."""
        return f"http://127.0.0.1:{self.env[env_name('metrics_port')]}"

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its code."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def logs(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Stop it if it still runs (test teardown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def stage_process(tmp_path: Path) -> Iterator[Callable[..., StageProcess]]:
    """Start ``space-pipeline run`` processes; any left running are killed at teardown."""
    started: list[StageProcess] = []

    def start(env: dict[str, str], cwd: Path | None = None) -> StageProcess:
        proc = StageProcess(env, tmp_path / f"stage-{len(started)}.log", cwd).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
