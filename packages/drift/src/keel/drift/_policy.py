"""DriftPolicy: a pure function from one window's results (and the history) to a decision.

    decision = policy.decide(result, history)     # history: earlier PolicyDecisions, oldest first

Per feature, the statistic of its method (``FeatureThreshold``; default PSI with
the usual 0.1 / 0.25 bands) is compared with its warn and drift thresholds.
Features with fewer than ``min_samples`` current values are not judged. The
window's *level* is DRIFT when the importance-weighted share of drifted
features reaches ``drift_share`` (or any feature with ``critical=True`` drifts,
or, with ``use_multivariate``, the domain classifier detects drift), WARN when
the weighted share at warn-or-worse reaches ``warn_share``, else NONE. The
*decision* is DRIFT only after ``consecutive`` DRIFT-level windows in a row
(earlier ones are WARN), so one noisy window does not trigger retraining.
Windows with fewer than ``min_samples`` rows are INSUFFICIENT: decision NONE,
and they neither extend nor break a streak.

Episodes: a drift episode starts at the first DRIFT decision and lasts until a
window decides NONE; ``episode_start`` marks the one window that should emit a
``drift.detected`` event (dedup per episode, not per window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from keel.drift._check import METHODS, DriftResult
from keel.drift._errors import InvalidInputError


class Level(StrEnum):
    NONE = "none"
    WARN = "warn"
    DRIFT = "drift"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class FeatureThreshold:
    """Which statistic judges a feature and at which values it warns / drifts."""

    method: str = "psi"
    warn: float = 0.1
    drift: float = 0.25
    critical: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if not 0 <= self.warn <= self.drift:
            raise InvalidInputError(
                f"thresholds must satisfy 0 <= warn <= drift, got {self.warn}, {self.drift}"
            )


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy decided for one window, and why."""

    decision: Level
    level: Level
    streak: int
    in_episode: bool
    episode_start: bool
    drift_share: float
    warn_share: float
    drifted: tuple[str, ...]
    warned: tuple[str, ...]
    scores: Mapping[str, float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.value,
            "level": self.level.value,
            "streak": self.streak,
            "in_episode": self.in_episode,
            "episode_start": self.episode_start,
            "drift_share": self.drift_share,
            "warn_share": self.warn_share,
            "drifted": list(self.drifted),
            "warned": list(self.warned),
            "scores": dict(self.scores),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DriftPolicy:
    """Thresholds, minimum sample size, consecutive-window rule and importance weights."""

    numeric: FeatureThreshold = field(default_factory=FeatureThreshold)
    categorical: FeatureThreshold = field(default_factory=FeatureThreshold)
    per_feature: Mapping[str, FeatureThreshold] = field(default_factory=dict)
    importance: Mapping[str, float] = field(default_factory=dict)
    min_samples: int = 200
    drift_share: float = 0.3
    warn_share: float = 0.1
    consecutive: int = 2
    use_multivariate: bool = False

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise InvalidInputError("min_samples must be >= 1")
        if self.consecutive < 1:
            raise InvalidInputError("consecutive must be >= 1")
        for name in ("drift_share", "warn_share"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise InvalidInputError(f"{name} must be in (0, 1], got {v}")
        bad = {k: v for k, v in self.importance.items() if not v >= 0}
        if bad:
            raise InvalidInputError(f"importance weights must be >= 0: {bad}")

    def threshold_for(self, name: str, kind: str) -> FeatureThreshold:
        if name in self.per_feature:
            return self.per_feature[name]
        return self.numeric if kind == "numeric" else self.categorical

    def scores(self, result: DriftResult) -> dict[str, float]:
        """Each judged feature's statistic under its method (the "drift score")."""
        out: dict[str, float] = {}
        for name, fd in result.features.items():
            stat = fd.statistic(self.threshold_for(name, fd.kind).method)
            if stat is not None and math.isfinite(stat) and fd.n_cur >= self.min_samples:
                out[name] = float(stat)
        return out

    def decide(self, result: DriftResult, history: Sequence[PolicyDecision] = ()) -> PolicyDecision:
        prev = history[-1] if history else None
        prev_streak = prev.streak if prev else 0
        prev_episode = prev.in_episode if prev else False
        if result.n_rows < self.min_samples:
            return PolicyDecision(
                Level.NONE,
                Level.INSUFFICIENT,
                prev_streak,
                prev_episode,
                False,
                0.0,
                0.0,
                (),
                (),
                {},
                f"{result.n_rows} rows < min_samples {self.min_samples}: not judged",
            )
        scores = self.scores(result)
        drifted, warned = [], []
        total_w = drift_w = warn_w = 0.0
        critical_hit = []
        for name, stat in scores.items():
            th = self.threshold_for(name, result.features[name].kind)
            w = float(self.importance.get(name, 1.0))
            total_w += w
            if stat >= th.drift:
                drifted.append(name)
                drift_w += w
                warn_w += w
                if th.critical:
                    critical_hit.append(name)
            elif stat >= th.warn:
                warned.append(name)
                warn_w += w
        d_share = drift_w / total_w if total_w else 0.0
        w_share = warn_w / total_w if total_w else 0.0
        multi = (
            self.use_multivariate and result.multivariate is not None and result.multivariate.drift
        )
        reasons = []
        if d_share >= self.drift_share:
            reasons.append(f"weighted drift share {d_share:.0%} >= {self.drift_share:.0%}")
        if critical_hit:
            reasons.append(f"critical features drifted: {', '.join(critical_hit)}")
        if multi:
            reasons.append("domain classifier separates reference and current")
        if reasons:
            level = Level.DRIFT
        elif w_share >= self.warn_share:
            level = Level.WARN
            reasons.append(
                f"weighted share at warn or worse {w_share:.0%} >= {self.warn_share:.0%}"
            )
        else:
            level = Level.NONE
            reasons.append(f"weighted drift share {d_share:.0%}, warn share {w_share:.0%}")
        streak = prev_streak + 1 if level is Level.DRIFT else 0
        if level is Level.DRIFT and streak < self.consecutive:
            decision = Level.WARN
            reasons.append(f"drift window {streak} of {self.consecutive} required in a row")
        else:
            decision = level
        in_episode = decision is Level.DRIFT or (prev_episode and decision is not Level.NONE)
        episode_start = decision is Level.DRIFT and not prev_episode
        # order features by score, most drifted first
        drifted.sort(key=lambda n: -scores[n])
        warned.sort(key=lambda n: -scores[n])
        return PolicyDecision(
            decision,
            level,
            streak,
            in_episode,
            episode_start,
            d_share,
            w_share,
            tuple(drifted),
            tuple(warned),
            scores,
            "; ".join(reasons),
        )
