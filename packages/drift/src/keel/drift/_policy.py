"""DriftPolicy: a pure function from one window's results (and the history) to a decision.

    decision = policy.decide(result, history)     # history: earlier PolicyDecisions, oldest first

One function serves every caller: ``keel drift check`` calls ``DriftPolicy().decide(result, [])``,
the streaming monitor steps it window by window with its own history.

**Per feature** two things must hold before a feature counts as drifted: the *effect* is
large enough - the statistic of its method (``FeatureThreshold``; default the normalised
Wasserstein distance for numeric columns and the Jensen-Shannon distance for categorical
ones, warn 0.05 / drift 0.1) reaches the threshold - and the change is *significant*: the
feature's test p-value (KS for numeric, chi-squared for categorical), adjusted for testing
every feature of the window at once (Benjamini-Hochberg by default, or Holm), is at most
``alpha``. The effect gate keeps huge windows from alerting on negligible shifts; the
significance gate keeps small windows from alerting on noise.

**The window's level** is DRIFT when the importance-weighted share of drifted features
reaches ``drift_share``, or a feature with ``critical=True`` drifts, or the multivariate
domain classifier separates reference and current (p-value < ``multivariate_alpha`` *and*
AUC >= ``multivariate_auc``); WARN when the weighted share at warn-or-worse reaches
``warn_share``; else NONE.

**The decision** fails closed. It is:

* ``NOT_JUDGED`` when the window cannot be judged: fewer than ``min_samples`` rows (level
  ``INSUFFICIENT``), or no feature could be compared (level ``NOT_JUDGED``: a profile of
  another schema, every column missing or empty);
* ``ERROR`` when the data has data-quality errors (a profiled column missing, a column
  whose kind changed - numbers stored as strings, words in a numeric column -, a column
  with no values, a null-rate jump); ``level`` still says what the judgeable features show;
* else the level, except that DRIFT needs ``consecutive`` DRIFT-level windows in a row
  (earlier ones decide WARN), so one noisy window need not trigger retraining. The default
  ``consecutive=1`` judges a window on its own, as ``keel drift check`` does; a streaming
  monitor typically passes 2.

``PolicyDecision.ok`` is True only for NONE; ``fails(on)`` is the exit rule of
``keel drift check --fail-on``. NOT_JUDGED and ERROR windows neither extend nor break a
streak, and do not end an episode.

**History**: the decisions this policy returned for the earlier windows of the same stream,
oldest first (only the last one is read: its ``streak`` and ``in_episode``). Pass ``[]`` (or
nothing) for a one-off check. Episodes: a drift episode starts at the first DRIFT decision
and lasts until a window decides NONE; ``episode_start`` marks the one window that should
emit a ``drift.detected`` event (dedup per episode, not per window).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from keel.drift._check import METHODS, DriftResult, FeatureDrift
from keel.drift._errors import InvalidInputError


class Level(StrEnum):
    """A window's level or decision. ``NOT_JUDGED``/``ERROR`` are decisions that fail closed."""

    NONE = "none"
    WARN = "warn"
    DRIFT = "drift"
    ERROR = "error"  # data-quality or schema errors: fix the data before trusting a verdict
    NOT_JUDGED = "not_judged"  # too few rows, or nothing comparable
    INSUFFICIENT = "insufficient"  # the *level* of a window below min_samples (decision NOT_JUDGED)


#: ``--fail-on`` values and the decisions each fails on (NOT_JUDGED and ERROR always fail).
FAIL_ON: Mapping[str, frozenset[Level]] = {
    "warn": frozenset({Level.WARN, Level.DRIFT, Level.ERROR, Level.NOT_JUDGED}),
    "drift": frozenset({Level.DRIFT, Level.ERROR, Level.NOT_JUDGED}),
    "never": frozenset(),
}

Correction = Literal["bh", "holm", "none"]


def adjust_pvalues(p_values: Mapping[str, float], correction: Correction) -> dict[str, float]:
    """Multiple-testing adjusted p-values: Benjamini-Hochberg (FDR), Holm (FWER) or none.

    Equal to ``statsmodels.stats.multitest.multipletests(p, method="fdr_bh" | "holm")[1]``.
    Ties are ordered by name, so the result never depends on the mapping's order.
    """
    names = sorted(p_values, key=lambda n: (p_values[n], n))
    p = np.array([p_values[n] for n in names], dtype=np.float64)
    m = len(p)
    if not m or correction == "none":
        return {n: float(v) for n, v in zip(names, p, strict=True)}
    if correction == "bh":
        adj = np.minimum.accumulate((p * m / np.arange(1, m + 1))[::-1])[::-1]
    elif correction == "holm":
        adj = np.maximum.accumulate(p * (m - np.arange(m)))
    else:
        raise InvalidInputError(f"unknown correction {correction!r}; expected bh, holm or none")
    return {n: float(v) for n, v in zip(names, np.minimum(adj, 1.0), strict=True)}


def _test_pvalue(fd: FeatureDrift) -> float | None:
    """The feature's significance test: KS for numeric, chi-squared for categorical."""
    return fd.ks_pvalue if fd.kind == "numeric" else fd.chi2_pvalue


@dataclass(frozen=True)
class FeatureThreshold:
    """Which statistic judges a feature and at which values it warns / drifts.

    The defaults (normalised Wasserstein 0.05 / 0.1) are for numeric columns;
    ``DriftPolicy.categorical`` defaults to the Jensen-Shannon distance with the same bands.
    ``significance=False`` drops the p-value gate for this feature (effect size alone).
    """

    method: str = "wasserstein"
    warn: float = 0.05
    drift: float = 0.1
    critical: bool = False
    significance: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if not 0 <= self.warn <= self.drift:
            raise InvalidInputError(
                f"thresholds must satisfy 0 <= warn <= drift, got {self.warn}, {self.drift}"
            )


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy decided for one window, and why.

    ``decision``: NONE / WARN / DRIFT, or NOT_JUDGED / ERROR (fail closed; see the module).
    ``level``: what the judged features and the multivariate test show (INSUFFICIENT when
    the window has fewer than ``min_samples`` rows). ``scores``: each judged feature's
    effect statistic; ``p_values``: its adjusted test p-value; ``not_judged``: features
    that could not be judged (too few values, no values, kind changed); ``errors``: the
    data-quality errors behind an ERROR decision.
    """

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
    p_values: Mapping[str, float] = field(default_factory=dict)
    not_judged: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    multivariate_drift: bool = False

    @property
    def judged(self) -> bool:
        """False when the window could not be judged (too few rows, nothing comparable)."""
        return self.decision is not Level.NOT_JUDGED

    @property
    def ok(self) -> bool:
        """True only for a judged window with no drift, no warning and no data errors."""
        return self.decision is Level.NONE

    def fails(self, on: str = "drift") -> bool:
        """The ``--fail-on`` rule: does this decision fail a gate set to ``on``?"""
        try:
            return self.decision in FAIL_ON[on]
        except KeyError:
            raise InvalidInputError(
                f"fail-on must be one of {', '.join(FAIL_ON)}, got {on!r}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.value,
            "level": self.level.value,
            "judged": self.judged,
            "ok": self.ok,
            "streak": self.streak,
            "in_episode": self.in_episode,
            "episode_start": self.episode_start,
            "drift_share": self.drift_share,
            "warn_share": self.warn_share,
            "drifted": list(self.drifted),
            "warned": list(self.warned),
            "not_judged": list(self.not_judged),
            "errors": list(self.errors),
            "multivariate_drift": self.multivariate_drift,
            "scores": dict(self.scores),
            "p_values": dict(self.p_values),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyDecision:
        """Rebuild a decision from :meth:`to_dict` (derived keys such as ``judged``/``ok``
        are recomputed, not read); unknown keys are refused."""
        derived = {"judged", "ok"}
        known = {f for f in cls.__dataclass_fields__} | derived
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInputError(f"unknown policy decision field(s): {', '.join(unknown)}")
        fields = {k: v for k, v in d.items() if k not in derived}
        for k in ("decision", "level"):
            fields[k] = Level(str(fields[k]))
        for k in ("drifted", "warned", "not_judged", "errors"):
            if k in fields:
                fields[k] = tuple(fields[k])
        for k in ("scores", "p_values"):
            if k in fields:
                fields[k] = {str(n): float(v) for n, v in dict(fields[k]).items()}
        return cls(**fields)


def _categorical_default() -> FeatureThreshold:
    return FeatureThreshold(method="js")


@dataclass(frozen=True)
class DriftPolicy:
    """Effect thresholds, significance (with multiple-testing control), the multivariate
    rule, minimum sample size, consecutive-window rule and importance weights."""

    numeric: FeatureThreshold = field(default_factory=FeatureThreshold)
    categorical: FeatureThreshold = field(default_factory=_categorical_default)
    per_feature: Mapping[str, FeatureThreshold] = field(default_factory=dict)
    importance: Mapping[str, float] = field(default_factory=dict)
    min_samples: int = 200
    drift_share: float = 0.3
    warn_share: float = 0.1
    consecutive: int = 1
    alpha: float = 0.05
    correction: Correction = "bh"
    use_multivariate: bool = True
    multivariate_alpha: float = 0.01
    multivariate_auc: float = 0.55

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise InvalidInputError("min_samples must be >= 1")
        if self.consecutive < 1:
            raise InvalidInputError("consecutive must be >= 1")
        for name in ("drift_share", "warn_share", "alpha", "multivariate_alpha"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise InvalidInputError(f"{name} must be in (0, 1], got {v}")
        if not 0.5 <= self.multivariate_auc <= 1:
            raise InvalidInputError(
                f"multivariate_auc must be in [0.5, 1], got {self.multivariate_auc}"
            )
        if self.correction not in ("bh", "holm", "none"):
            raise InvalidInputError(f"correction must be bh, holm or none, got {self.correction!r}")
        bad = {k: v for k, v in self.importance.items() if not v >= 0}
        if bad:
            raise InvalidInputError(f"importance weights must be >= 0: {bad}")

    def threshold_for(self, name: str, kind: str) -> FeatureThreshold:
        if name in self.per_feature:
            return self.per_feature[name]
        return self.numeric if kind == "numeric" else self.categorical

    def scores(self, result: DriftResult) -> dict[str, float]:
        """Each judged feature's effect statistic under its method (the "drift score")."""
        out: dict[str, float] = {}
        for name in sorted(result.features):
            fd = result.features[name]
            stat = fd.statistic(self.threshold_for(name, fd.kind).method)
            if stat is not None and math.isfinite(stat) and fd.n_cur >= self.min_samples:
                out[name] = float(stat)
        return out

    def p_values(self, result: DriftResult, judged: Sequence[str]) -> dict[str, float]:
        """Adjusted test p-values of the judged features that have one (see ``correction``)."""
        raw: dict[str, float] = {}
        for name in judged:
            p = _test_pvalue(result.features[name])
            if p is not None and math.isfinite(p):
                raw[name] = float(p)
        return adjust_pvalues(raw, self.correction)

    def multivariate_drift(self, result: DriftResult) -> bool:
        """The domain classifier separates the samples: significant *and* a real effect."""
        mv = result.multivariate
        return bool(
            self.use_multivariate
            and mv is not None
            and math.isfinite(mv.p_value)
            and mv.p_value < self.multivariate_alpha
            and mv.auc >= self.multivariate_auc
        )

    def decide(self, result: DriftResult, history: Sequence[PolicyDecision] = ()) -> PolicyDecision:
        """Decide one window. ``history``: this policy's earlier decisions for the same
        stream, oldest first (only the last is read); ``[]`` for a one-off check."""
        prev = history[-1] if history else None
        prev_streak = prev.streak if prev else 0
        prev_episode = prev.in_episode if prev else False
        errors = tuple(f"{q.kind}: {q.message}" for q in result.quality if q.severity == "error")
        if result.n_rows < self.min_samples:
            return PolicyDecision(
                Level.NOT_JUDGED,
                Level.INSUFFICIENT,
                prev_streak,
                prev_episode,
                False,
                0.0,
                0.0,
                (),
                (),
                {},
                f"not judged: {result.n_rows} rows < min_samples {self.min_samples}",
                not_judged=tuple(sorted(result.features)),
                errors=errors,
            )
        scores = self.scores(result)
        not_judged = tuple(sorted(n for n in result.features if n not in scores))
        p_adj = self.p_values(result, list(scores))
        drifted, warned = [], []
        total_w = drift_w = warn_w = 0.0
        critical_hit = []
        for name, stat in scores.items():
            th = self.threshold_for(name, result.features[name].kind)
            w = float(self.importance.get(name, 1.0))
            total_w += w
            p = p_adj.get(name)
            significant = not th.significance or (p is not None and p <= self.alpha)
            if not significant:
                continue
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
        multi = self.multivariate_drift(result)
        # order features by score, most drifted first (ties by name: stable output)
        drifted.sort(key=lambda n: (-scores[n], n))
        warned.sort(key=lambda n: (-scores[n], n))
        if not scores and not multi:
            return PolicyDecision(
                Level.NOT_JUDGED,
                Level.NOT_JUDGED,
                prev_streak,
                prev_episode,
                False,
                0.0,
                0.0,
                (),
                (),
                {},
                "not judged: no feature could be compared with the profile"
                + (f" ({len(errors)} data-quality errors)" if errors else ""),
                not_judged=not_judged,
                errors=errors,
            )
        reasons = []
        if d_share >= self.drift_share and drifted:
            reasons.append(f"weighted drift share {d_share:.0%} >= {self.drift_share:.0%}")
        if critical_hit:
            reasons.append(f"critical features drifted: {', '.join(critical_hit)}")
        if multi:
            mv = result.multivariate
            assert mv is not None
            reasons.append(
                f"domain classifier separates reference and current (AUC {mv.auc:.3f}, p={mv.p_value:.2g})"
            )
        if reasons:
            level = Level.DRIFT
        elif w_share >= self.warn_share and (drifted or warned):
            level = Level.WARN
            reasons.append(
                f"weighted share at warn or worse {w_share:.0%} >= {self.warn_share:.0%}"
            )
        else:
            level = Level.NONE
            reasons.append(f"weighted drift share {d_share:.0%}, warn share {w_share:.0%}")
        if errors:
            reasons.insert(0, f"{len(errors)} data-quality errors ({errors[0]})")
            return PolicyDecision(
                Level.ERROR,
                level,
                prev_streak,
                prev_episode,
                False,
                d_share,
                w_share,
                tuple(drifted),
                tuple(warned),
                scores,
                "; ".join(reasons),
                p_adj,
                not_judged,
                errors,
                multi,
            )
        streak = prev_streak + 1 if level is Level.DRIFT else 0
        if level is Level.DRIFT and streak < self.consecutive:
            decision = Level.WARN
            reasons.append(f"drift window {streak} of {self.consecutive} required in a row")
        else:
            decision = level
        in_episode = decision is Level.DRIFT or (prev_episode and decision is not Level.NONE)
        episode_start = decision is Level.DRIFT and not prev_episode
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
            p_adj,
            not_judged,
            (),
            multi,
        )
