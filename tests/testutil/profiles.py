"""Hypothesis profiles: `fast` for every run (default),
`expensive` for nightly/bench runs, picked by KEEL_HYPOTHESIS_PROFILE."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FAST = "fast"
EXPENSIVE = "expensive"


def register_profiles() -> str:
    """Register both profiles and load the one the environment asks for."""
    settings.register_profile(
        FAST,
        max_examples=50,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    settings.register_profile(
        EXPENSIVE,
        max_examples=2000,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    name = os.environ.get("KEEL_HYPOTHESIS_PROFILE", FAST)
    if name not in (FAST, EXPENSIVE):
        raise ValueError(f"KEEL_HYPOTHESIS_PROFILE={name!r}: expected {FAST!r} or {EXPENSIVE!r}")
    settings.load_profile(name)
    return name
