"""Following a registry alias (embedded MLflow registry): load by alias, hot swap on a
move, refuse (and keep serving) a version signed by an untrusted key."""

from __future__ import annotations

from pathlib import Path

import pytest
from testutil.serving_artifacts import Keys, make_artifact

from keel.registry_client import Decision, open_registry
from keel.serving import AliasFollower, ModelRef, NotFoundError, Predictor, load_from_registry

DECIDED = Decision(who="test", why="follow test", evidence_digest="sha256:" + "1" * 64)


@pytest.mark.slow
def test_follower_loads_swaps_and_refuses_untrusted(tmp_path: Path) -> None:
    keys, stranger = Keys(), Keys()
    home = tmp_path / "home"
    v1, _ = make_artifact(tmp_path, keys, seed=1)
    v2, _ = make_artifact(tmp_path, stranger, seed=2)  # signed by a key the server does not trust
    v3, _ = make_artifact(tmp_path, keys, seed=3)
    with open_registry(home) as reg:
        reg.register(v1, trust=keys.policy)
        reg.register(v2, trust=stranger.policy)
        reg.register(v3, trust=keys.policy)
        reg.promote("credit", "champion", 1, DECIDED)
        with pytest.raises(NotFoundError, match="credit@nope"):
            load_from_registry(reg, ModelRef("credit", "nope"), keys.policy, workdir=tmp_path)
    loaded: list[Predictor] = []
    work = tmp_path / "work"
    work.mkdir()
    f = AliasFollower(
        lambda: open_registry(home),
        ModelRef.parse("credit@champion"),
        keys.policy,
        loaded.append,
        workdir=work,
    )
    try:
        assert f.tick() and f.version == 1 and loaded[-1].version == "1"
        assert not f.tick()  # nothing moved
        with open_registry(home) as reg:
            reg.promote("credit", "champion", 2, DECIDED)
        assert not f.tick()
        assert f.version == 1 and 2 in f.refused and "Untrusted" in (f.last_error or "")
        assert len(loaded) == 1  # version 1 keeps serving
        with open_registry(home) as reg:
            reg.promote("credit", "champion", 3, DECIDED)
        assert f.tick() and f.version == 3 and loaded[-1].version == "3"
    finally:
        f.close()
        if f._registry is not None:
            f._registry.close()


@pytest.mark.slow
def test_alias_moved_event_triggers_the_swap_without_waiting_for_the_poll(tmp_path: Path) -> None:
    import dataclasses
    import threading
    from datetime import UTC, datetime

    from keel.events import Event, open_bus

    keys = Keys()
    home = tmp_path / "home"
    v1, _ = make_artifact(tmp_path, keys, seed=1)
    v2, _ = make_artifact(tmp_path, keys, seed=2)
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")

    def publish(moved: object) -> None:
        payload = dataclasses.asdict(moved)  # type: ignore[call-overload]
        bus.publish(
            "models",
            Event.create(
                type=payload["type"],
                key=payload["model"],
                event_time=datetime.now(UTC),
                payload=payload,
            ),
        )

    with open_registry(home, publisher=publish) as reg:
        reg.register(v1, trust=keys.policy)
        reg.register(v2, trust=keys.policy)
        reg.promote("credit", "champion", 1, DECIDED)
    swapped = threading.Event()
    loaded: list[Predictor] = []

    def on_load(p: Predictor) -> None:
        loaded.append(p)
        if p.version == "2":
            swapped.set()

    work = tmp_path / "work"
    work.mkdir()
    f = AliasFollower(
        lambda: open_registry(home),
        ModelRef("credit", "champion"),
        keys.policy,
        on_load,
        workdir=work,
        poll_s=600.0,  # the poll alone would not see the move within this test
        events=bus.consumer("models", durable="serve-credit"),
    )
    f.start()
    try:
        deadline = threading.Event()
        for _ in range(600):
            if loaded:
                break
            deadline.wait(0.05)
        assert loaded and loaded[0].version == "1"
        with open_registry(home, publisher=publish) as reg:
            reg.promote("credit", "champion", 2, DECIDED)
        assert swapped.wait(60), f.last_error
        assert [p.version for p in loaded] == ["1", "2"]
    finally:
        f.close()
        bus.close()
