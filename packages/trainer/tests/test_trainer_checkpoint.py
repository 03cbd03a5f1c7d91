"""Checkpoint commit protocol: only committed, intact checkpoints are ever restored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from keel.trainer import CheckpointStore
from keel.trainer import _checkpoint as ck


def _write(store: CheckpointStore, step: int, value: float, commit: bool = True) -> Path:
    p = store.begin(step)
    ck.write_file(p / ck.STATE_TENSORS, ck.tensors_to_bytes({"w": torch.full((3,), value)}))
    ck.write_file(p / ck.STATE_JSON, json.dumps({"step": step}).encode())
    ck.write_file(p / ck.rng_file(0), ck.tensors_to_bytes({"cpu": torch.get_rng_state()}))
    if commit:
        return store.commit(p, step, {"job_digest": "d", "world_size": 1})
    return p


def _value(c: ck.Committed) -> float:
    return float(ck.tensors_from_bytes(c.read(ck.STATE_TENSORS))["w"][0])


def test_latest_committed_wins_and_partials_are_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 10, 1.0)
    _write(store, 20, 2.0)
    partial = _write(store, 30, 3.0, commit=False)  # a writer killed before its marker
    assert partial.name.startswith(".partial") and partial.exists()
    latest = store.latest()
    assert latest is not None and latest.step == 20 and _value(latest) == 2.0
    assert store.committed_steps() == [10, 20]


def test_a_final_name_without_marker_is_never_restored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 10, 1.0)
    bad = _write(store, 20, 2.0, commit=False)
    bad.rename(store.final_dir(20))  # someone renamed a partial by hand
    latest = store.latest()
    assert latest is not None and latest.step == 10


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "marker"])
def test_damaged_committed_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, damage: str
) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 10, 1.0)
    final = _write(store, 20, 2.0)
    f = final / ck.STATE_TENSORS
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-4])
    elif damage == "delete":
        f.unlink()
    else:
        (final / ck.COMMIT_FILE).write_text("{not json")
    latest = store.latest()
    assert latest is not None and latest.step == 10 and _value(latest) == 1.0


def test_read_rechecks_the_bytes_it_returns(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 10, 1.0)
    c = store.latest()
    assert c is not None
    (c.path / ck.STATE_JSON).write_text('{"step": 99}')  # changed after verification
    with pytest.raises(ck.CheckpointError, match="changed after"):
        c.read(ck.STATE_JSON)


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for s in (10, 20, 30):
        _write(store, s, float(s))
    _write(store, 40, 4.0, commit=False)
    store.prune(2)
    assert store.committed_steps() == [20, 30]
    assert not list(tmp_path.glob(".partial-*"))


def test_optimizer_and_scheduler_state_round_trip_bitwise() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
    tensors: dict[str, torch.Tensor] = {}
    structure = json.loads(
        json.dumps(
            {
                "o": ck.flatten(opt.state_dict(), "o", tensors),
                "s": ck.flatten(sched.state_dict(), "s", tensors),
            }
        )
    )
    loaded = ck.tensors_from_bytes(ck.tensors_to_bytes(tensors))
    model2 = torch.nn.Linear(4, 2)
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    opt2.load_state_dict(ck.unflatten(structure["o"], loaded))
    sched2.load_state_dict(ck.unflatten(structure["s"], loaded))
    x = torch.randn(5, 4)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
        s.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_flatten_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(ck.CheckpointError, match="cannot checkpoint"):
        ck.flatten({"f": object()}, "x", {})
