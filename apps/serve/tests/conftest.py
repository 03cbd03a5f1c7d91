"""Fixtures for the serve app tests: tiny signed artifacts (tests/testutil/serving_artifacts.py,
shared with keel.serving's tests), exposed as the `td` fixture."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from testutil.serving_artifacts import Keys, make_artifact, reference


@pytest.fixture()
def td() -> SimpleNamespace:
    return SimpleNamespace(Keys=Keys, make_artifact=make_artifact, reference=reference)
