"""Following a registry alias: ``credit@champion`` loaded, verified, and hot-swapped when
the alias moves.

``AliasFollower`` runs one thread. Each tick it asks the registry (keel.registry_client,
opened in that thread: one Registry per thread) which version the alias points at; when
that changed it downloads the version, verifies and loads it (``load_predictor`` with the
trust policy), warms it up, and only then hands it to ``on_load`` — the old model serves
until the new one is ready, so a swap fails no request. A version that fails to load is
refused, counted, remembered (not retried every tick) and the current model keeps serving.
Ticks happen every ``poll_s`` and at once when a ``model.alias_moved`` event for the model
arrives on the optional ``events`` consumer.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.artifacts import TrustPolicy
from keel.serving._errors import ConfigError, ModelLoadError, NotFoundError, UnavailableError
from keel.serving._predictor import Predictor, load_predictor
from keel.serving._telemetry import ServingTelemetry

log = logging.getLogger("keel.serving.follow")
ALIAS_MOVED = "model.alias_moved"


@dataclass(frozen=True)
class ModelRef:
    """``name@alias`` (registry) or a filesystem path to an artifact."""

    name: str
    alias: str

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, sep, alias = text.partition("@")
        if not sep or not name or not alias:
            raise ConfigError(
                f"model reference {text!r}: expected name@alias (e.g. credit@champion)"
            )
        return cls(name, alias)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}"


def download_from_registry(
    registry: Any, ref: ModelRef, *, workdir: Path, version: int | None = None
) -> tuple[int, Path]:
    """Resolve ``ref`` (or take ``version``) and download its archive under ``workdir``
    (not verified yet: ``load_predictor`` does that). Registry errors are translated: an
    unset alias is NotFoundError, an unreachable store UnavailableError."""
    from keel.registry_client import NotFoundError as RegNotFound
    from keel.registry_client import RegistryError

    try:
        if version is None:
            version = registry.get_by_alias(ref.name, ref.alias).version
        dst = Path(tempfile.mkdtemp(prefix=f"v{version}-", dir=workdir))
        archive = registry.download_archive(ref.name, version, dst)
    except RegNotFound as e:
        raise NotFoundError(f"{ref}: {e}") from None
    except RegistryError as e:
        raise UnavailableError(f"registry: {e}") from None
    return version, Path(archive)


def load_from_registry(
    registry: Any,
    ref: ModelRef,
    policy: TrustPolicy,
    *,
    workdir: Path,
    version: int | None = None,
    **load_kw: Any,
) -> tuple[int, Predictor]:
    """Resolve ``ref`` (or take ``version``), download, verify and load it."""
    version, archive = download_from_registry(registry, ref, workdir=workdir, version=version)
    p = load_predictor(archive, policy, version=str(version), **load_kw)
    return version, p


class AliasFollower:
    """Keeps ``on_load(predictor)`` fed with the version ``ref`` points at."""

    def __init__(
        self,
        open_registry: Callable[[], Any],
        ref: ModelRef,
        policy: TrustPolicy,
        on_load: Callable[[Predictor], None],
        *,
        workdir: Path,
        poll_s: float = 5.0,
        events: Any = None,
        telemetry: ServingTelemetry | None = None,
        load_kw: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if poll_s <= 0:
            raise ConfigError(f"poll_s must be > 0, got {poll_s}")
        self.open_registry = open_registry
        self.ref = ref
        self.policy = policy
        self.on_load = on_load
        self.workdir = workdir
        self.poll_s = poll_s
        self.events = events
        self.telemetry = telemetry
        self.load_kw = load_kw or {}
        self._clock = clock
        self.version: int | None = None
        self.refused: set[int] = set()
        self.last_error: str | None = None
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: Any = None

    def tick(self) -> bool:
        """One check; True when a new version was loaded and handed over."""
        if self._registry is None:
            self._registry = self.open_registry()
        reg = self._registry
        try:
            target = reg.get_by_alias(self.ref.name, self.ref.alias).version
        except Exception as e:  # alias unset / registry down: keep serving what we have
            self.last_error = f"{self.ref}: {type(e).__name__}: {e}"
            return False
        if target == self.version or target in self.refused:
            return False
        t0 = self._clock()
        try:
            _, p = load_from_registry(
                reg, self.ref, self.policy, workdir=self.workdir, version=target, **self.load_kw
            )
        except (ModelLoadError, NotFoundError, UnavailableError) as e:
            self.refused.add(target) if isinstance(e, ModelLoadError) else None
            self.last_error = str(e)
            log.error("refused %s version %s: %s", self.ref, target, e)
            if self.telemetry is not None:
                self.telemetry.model_loads.labels(model=self.ref.name, outcome="refused").inc()
            return False
        if self.telemetry is not None:
            self.telemetry.model_loads.labels(model=self.ref.name, outcome="ok").inc()
            self.telemetry.model_load_seconds.labels(model=self.ref.name).observe(
                self._clock() - t0
            )
        self.version = target
        self.last_error = None
        self.on_load(p)
        log.info("serving %s version %s (%s)", self.ref, target, p.digest)
        return True

    def _wait(self) -> None:
        if self.events is None:
            self.stop.wait(self.poll_s)
            return
        try:
            got = self.events.fetch(max_messages=100, timeout_s=self.poll_s)
        except Exception:
            self.stop.wait(self.poll_s)
            return
        for d in got:
            try:
                ev = d.event
                body = ev.json() if ev.type == ALIAS_MOVED else None
            except Exception:
                body = None
            d.ack()
            if (
                isinstance(body, dict)
                and body.get("model") == self.ref.name
                and body.get("alias") == self.ref.alias
            ):
                return  # tick now

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as e:  # never let the watcher die
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("alias follower tick failed")
            self._wait()
        if self._registry is not None:
            with contextlib.suppress(Exception):
                self._registry.close()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"keel-follow-{self.ref}", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
