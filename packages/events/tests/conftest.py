"""Fixtures for keel.events tests: one `make_bus` factory parametrised over both backends.

The NATS variant talks to the real JetStream at $KEEL_NATS_URL (default 127.0.0.1:4222);
every test uses streams named by `testutil.isolation.unique_name` and deletes them after.
"""

from __future__ import annotations

from testutil.profiles import register_profiles

register_profiles()

import contextlib  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from testutil.isolation import nats_url, unique_name  # noqa: E402

from keel.events import Bus, NotFoundError, open_bus  # noqa: E402

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("nats", id="nats", marks=pytest.mark.integration),
]


class BusFactory:
    """Opens buses of one backend on one shared location; cleans up streams it named."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.url = f"sqlite://{tmp_path / 'events.db'}" if backend == "sqlite" else nats_url()
        self.buses: list[Bus] = []
        self.streams: list[str] = []

    def __call__(self, **kwargs: Any) -> Bus:
        bus = open_bus(self.url, **kwargs)
        self.buses.append(bus)
        return bus

    def stream(self, prefix: str = "ev") -> str:
        name = unique_name(prefix)
        self.streams.append(name)
        return name

    def close(self) -> None:
        if self.backend == "nats" and self.streams:
            bus = open_bus(self.url)
            for s in self.streams:
                with contextlib.suppress(NotFoundError):
                    bus.delete_stream(s)
            bus.close()
        for b in self.buses:
            b.close()


@pytest.fixture(params=BACKENDS)
def make_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusFactory]:
    factory = BusFactory(request.param, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def bus(make_bus: BusFactory) -> Bus:
    return make_bus()


@pytest.fixture
def stream(make_bus: BusFactory) -> str:
    return make_bus.stream()


Factory = Callable[..., Bus]
