"""The canary guard: a pure policy over the canary's recent requests.

``CanaryPolicy.decide(window)`` looks at the last ``window`` canary requests and says stop
when, with at least ``min_requests`` of them, the error rate exceeds ``max_error_rate`` or
the p99 latency exceeds ``max_p99_s``. The service applies a stop at once (traffic returns
to the primary) and publishes ``canary.failed``; moving aliases is the retrain
controller's job — serving never promotes or rolls back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from keel.serving._errors import ConfigError

CANARY_FAILED = "canary.failed"


@dataclass(frozen=True)
class CanaryPolicy:
    max_error_rate: float = 0.01
    max_p99_s: float = 0.05
    min_requests: int = 50
    window: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.max_p99_s <= 0:
            raise ConfigError(f"max_p99_s must be > 0, got {self.max_p99_s}")
        if not 1 <= self.min_requests <= self.window:
            raise ConfigError("need 1 <= min_requests <= window")

    def decide(self, outcomes: CanaryWindow) -> str | None:
        """None to keep going, else the reason to stop (names the breached SLO)."""
        n = len(outcomes.ok)
        if n < self.min_requests:
            return None
        errors = n - sum(outcomes.ok)
        rate = errors / n
        if rate > self.max_error_rate:
            return (
                f"error rate {rate:.3f} over the last {n} requests exceeds "
                f"max_error_rate {self.max_error_rate}"
            )
        p99 = float(np.quantile(np.fromiter(outcomes.latency, float), 0.99))
        if p99 > self.max_p99_s:
            return f"p99 latency {p99 * 1e3:.1f} ms over the last {n} requests exceeds {self.max_p99_s * 1e3:.1f} ms"
        return None


class CanaryWindow:
    """The last ``size`` canary outcomes (ok flag, latency seconds)."""

    def __init__(self, size: int) -> None:
        self.ok: deque[bool] = deque(maxlen=size)
        self.latency: deque[float] = deque(maxlen=size)

    def add(self, ok: bool, latency_s: float) -> None:
        self.ok.append(ok)
        self.latency.append(latency_s)
