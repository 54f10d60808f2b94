"""The injected faults: which answer a request that passed method, auth and headers gets.

One :class:`Faults` holds what a fault decision depends on besides the config: the random draws,
the burst count and the fault clock, which ``set_config`` restarts while the stats go on.
"""

from __future__ import annotations

import random

from pipeline.dev.stub_api.config import FaultWindow, StubConfig
from pipeline.dev.stub_api.delivery import Target


class Faults:
    """The fault state of one run; also the source of the latency jitter, so a seed covers both."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._burst_seq = 0
        self._clock: float | None = None  # first API request since start/reset/set_config

    def restart(self, config: StubConfig) -> None:
        """Take a new config: bursts and fault windows count again, draws go on unless re-seeded."""
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.config = config
        self._burst_seq = 0
        self._clock = None

    def clock(self, now: float) -> float:
        """Where ``now`` is on the fault clock, which starts at the first API request."""
        if self._clock is None:
            self._clock = now
        return now - self._clock

    def decide(self, target: Target, fault_s: float) -> tuple[int, str]:
        """The status and reason for a request that arrived ``fault_s`` into the fault clock."""
        cfg = self.config
        if cfg.faults:
            window = next((w for w in cfg.faults if w.covers(fault_s)), None)
            if window is not None:
                return self._window_status(window), f"{window.kind} fault window"
        seq = self._burst_seq
        self._burst_seq += 1
        if seq < cfg.error_burst:
            return 500, f"error burst ({seq + 1} of {cfg.error_burst})"
        if seq < cfg.error_burst + cfg.throttle_burst:
            return 429, f"throttle burst ({seq + 1 - cfg.error_burst} of {cfg.throttle_burst})"
        if (listed := self._by_key(target)) is not None:
            return listed
        if cfg.error_rate or cfg.throttle_rate or cfg.reject_rate:
            return self._draw(cfg)
        return 204, ""

    def _window_status(self, window: FaultWindow) -> int:
        if window.kind == "outage":
            return 503
        if window.kind == "throttle":
            return 429
        if window.kind == "redirect":
            return 307
        return self.config.auth_status

    def _by_key(self, target: Target) -> tuple[int, str] | None:
        """422 for a key on the reject list, 503 for one on the unavailable list."""
        cfg = self.config
        if cfg.reject_keys and (rejected := target.listed(cfg.reject_keys)) is not None:
            return 422, f"idempotency key {rejected} is on the stub's reject list"
        if cfg.unavailable_keys and (down := target.listed(cfg.unavailable_keys)):
            return 503, f"idempotency key {down} is on the stub's unavailable list"
        return None

    def _draw(self, cfg: StubConfig) -> tuple[int, str]:
        draw = self.rng.random()
        if draw < cfg.error_rate:
            return self.rng.choice((500, 503)), f"random error (error_rate={cfg.error_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate:
            return 429, f"random throttle (throttle_rate={cfg.throttle_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate + cfg.reject_rate:
            return 422, f"random rejection (reject_rate={cfg.reject_rate})"
        return 204, ""
