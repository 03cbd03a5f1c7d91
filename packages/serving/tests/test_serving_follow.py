"""Following a registry alias (embedded MLflow registry): load by alias, hot swap on a
move, refuse (and keep serving) a version signed by an untrusted key."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_testdata import Keys, make_artifact

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
