"""The in-flight limit of the server's door: fixed, or adaptive on the admitted latency.

Admitted requests wait, by Little's law, about ``in_flight / throughput``. A fixed limit
sized for normal load becomes a long queue when throughput falls (a surge whose refusals
eat CPU, a busy host), and the admitted requests lose their latency. ``AdaptiveLimit`` is a
pure policy (no clock, no I/O: the door feeds it samples), gradient-style like Netflix's
concurrency-limits: every ``window`` admitted requests it takes the window's median latency
(``short``) and compares it with the server's usual latency (``baseline_s``: an average
that follows a fall within a few windows and a rise only slowly, ``drift`` per window), so
the latency the server has under its normal load is the reference, not its idle latency.
When ``short`` exceeds ``target`` (``target_s`` if set, else ``tolerance`` x the baseline)
the limit is multiplied by ``target / short`` (at least ``backoff``): fewer admitted at once,
each waits less. When the target is met while the limit was binding (a request was refused
or took the last slot) the limit grows by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keel.serving._errors import ConfigError


@dataclass(frozen=True)
class LimitConfig:
    """``initial``/``min_limit``/``max_limit``: in-flight requests; ``target_s``: a fixed
    latency target (None: ``tolerance`` x the usual median latency, at least
    ``min_target_s``); ``window``: samples per decision; ``warmup``: windows that only learn
    the baseline; ``patience``: windows over the target (with refusals) before a decrease;
    ``backoff``: the smallest factor of one decrease; ``recover``/``drift``: how fast the
    baseline follows a fall/a rise."""

    initial: int = 32
    min_limit: int = 2
    max_limit: int = 128
    target_s: float | None = None
    tolerance: float = 2.0
    min_target_s: float = 0.002
    window: int = 50
    backoff: float = 0.5
    drift: float = 0.01
    recover: float = 0.3
    warmup: int = 3
    patience: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial <= self.max_limit:
            raise ConfigError(
                "limit: need 1 <= min_limit <= initial <= max_limit, got "
                f"{self.min_limit}, {self.initial}, {self.max_limit}"
            )
        if self.target_s is not None and not self.target_s > 0:
            raise ConfigError(f"limit: target_s must be > 0 seconds, got {self.target_s}")
        if not self.tolerance >= 1:
            raise ConfigError(f"limit: tolerance must be >= 1, got {self.tolerance}")
        if not self.min_target_s >= 0:
            raise ConfigError(f"limit: min_target_s must be >= 0, got {self.min_target_s}")
        if self.window < 1:
            raise ConfigError(f"limit: window must be >= 1, got {self.window}")
        if not 0 < self.backoff < 1:
            raise ConfigError(f"limit: backoff must be in (0, 1), got {self.backoff}")
        if not 0 <= self.drift < 1:
            raise ConfigError(f"limit: drift must be in [0, 1), got {self.drift}")
        if self.warmup < 1 or self.patience < 1:
            raise ConfigError(
                f"limit: warmup and patience must be >= 1, got {self.warmup}, {self.patience}"
            )
        if not 0 < self.recover <= 1:
            raise ConfigError(f"limit: recover must be in (0, 1], got {self.recover}")


class FixedLimit:
    """A constant in-flight limit (the door's default)."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or limit < 1:
            raise ValueError(f"max_in_flight must be >= 1 or None, got {limit}")
        self.limit = limit

    def on_binding(self) -> None:
        pass

    def on_refused(self) -> None:
        pass

    def on_sample(self, latency_s: float) -> None:
        pass


class AdaptiveLimit:
    """AIMD on the admitted latency (see the module docstring). ``limit`` is read by the
    door on every request; ``on_sample`` gets each admitted request's latency and
    ``on_binding`` is told when the limit refused or filled up."""

    def __init__(self, config: LimitConfig | None = None) -> None:
        self.config = config or LimitConfig()
        self._value = float(self.config.initial)
        self.limit = self.config.initial
        self.baseline_s = math.inf
        self._window: list[float] = []
        self._binding = False
        self._over = 0
        self._refused = False
        self.decisions = 0

    @property
    def target_s(self) -> float:
        c = self.config
        if c.target_s is not None:
            return c.target_s
        if math.isinf(self.baseline_s):
            return math.inf
        return max(c.min_target_s, c.tolerance * self.baseline_s)

    def on_binding(self) -> None:
        self._binding = True

    def on_refused(self) -> None:
        self._binding = True
        self._refused = True

    def on_sample(self, latency_s: float) -> None:
        w = self._window
        w.append(latency_s)
        if len(w) >= self.config.window:
            self._decide()

    def _decide(self) -> None:
        c = self.config
        w = sorted(self._window)
        self._window = []
        short = w[(len(w) - 1) // 2]
        base = self.baseline_s
        self.decisions += 1
        if self.decisions <= c.warmup:  # the first windows only learn the baseline
            self.baseline_s = short if math.isinf(base) else min(base, short)
            self._binding = self._refused = False
            return
        if math.isinf(base):
            base = short
        elif short < base:  # faster: follow within a few windows
            base += (short - base) * c.recover
        else:  # slower: follow only slowly, or a lasting overload would become the norm
            base += (short - base) * c.drift
        self.baseline_s = base
        target = self.target_s
        # only an overload (requests refused at the door) lowers the limit: at or under
        # capacity a slow window is the host's noise, and refusing then would only add load
        self._over = self._over + 1 if short > target and self._refused else 0
        if self._over >= c.patience:  # a lasting overshoot, not one slow window
            self._value = max(float(c.min_limit), self._value * max(c.backoff, target / short))
        elif short <= target and self._binding:
            self._value = min(float(c.max_limit), self._value + 1)
        self._binding = self._refused = False
        self.limit = max(c.min_limit, int(self._value))
