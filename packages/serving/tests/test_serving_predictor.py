"""Predictor core: verification before load, builders, schema validation, outputs."""

from __future__ import annotations

import math
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testutil.serving_artifacts import Keys, credit_spec, make_artifact, reference

from keel.artifacts import TrustPolicy, build_artifact
from keel.serving import (
    InvalidInputError,
    ModelLoadError,
    load_predictor,
    resolve_builders,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def test_loaded_predictor_matches_the_reference_model(tmp_path: Path, keys: Keys) -> None:
    path, model = make_artifact(tmp_path, keys, seed=3)
    p = load_predictor(path, keys.policy, threads=1)
    rows = [
        {"f0": 1.0, "f1": -2.0, "f2": 0.5, "channel": "pos"},
        {"f0": 0, "f1": 0, "f2": 0, "channel": "web"},
    ]
    x = p.inputs.encode_rows(rows)
    assert x.tolist() == [[1.0, -2.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]
    y = p.outputs.decode(p.predict(x))["p_default"]
    assert y == pytest.approx(reference(model, x.tolist()), abs=1e-6)
    assert p.digest.startswith("sha256:") and p.signer is not None


def test_untrusted_signer_is_refused_before_load(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys)
    with pytest.raises(ModelLoadError, match="refused artifact.*Untrusted"):
        load_predictor(path, Keys().policy)


def test_unsigned_artifact_is_refused_unless_policy_allows(tmp_path: Path) -> None:
    path, _ = make_artifact(tmp_path, None)
    with pytest.raises(ModelLoadError, match="Unsigned"):
        load_predictor(path, TrustPolicy((Keys().pub,)))
    assert load_predictor(path, TrustPolicy.unsigned_ok()).name == "credit"


def test_tampered_weights_are_refused(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys)
    d = tmp_path / "x"
    with tarfile.open(path) as tf:
        tf.extractall(d, filter="data")
    w = next(d.rglob("weights.safetensors"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="Integrity"):
        load_predictor(w.parent, keys.policy)


def test_unknown_builder_and_misfit_weights_are_named(tmp_path: Path, keys: Keys) -> None:
    import torch

    spec = credit_spec()
    from keel.artifacts import Architecture

    bad = spec.__class__(
        **{
            **{f: getattr(spec, f) for f in spec.__struct_fields__},
            "architecture": Architecture(builder="nope", args={}),
        }
    )
    build_artifact(tmp_path / "a", bad, {"w": torch.zeros(1)}, signing_key=keys.key)
    with pytest.raises(ModelLoadError, match="'nope'"):
        load_predictor(tmp_path / "a", keys.policy)
    build_artifact(tmp_path / "b", spec, {"0.weight": torch.zeros(2, 2)}, signing_key=keys.key)
    with pytest.raises(ModelLoadError, match="weights do not fit"):
        load_predictor(tmp_path / "b", keys.policy)


def test_builders_resolve_builtin_and_extra() -> None:
    b = resolve_builders({"custom": lambda: None})
    assert "mlp" in b and "custom" in b


def test_validation_names_every_bad_field(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys)
    p = load_predictor(path, keys.policy)
    rows: list[dict[str, Any]] = [
        {"f0": "1", "f1": math.nan, "f2": 1e7, "channel": "fax", "zzz": 1},
        {"f0": True, "f1": math.inf, "channel": 3},
    ]
    with pytest.raises(InvalidInputError) as ei:
        p.inputs.encode_rows(rows)
    got = {(e["instance"], e["field"]) for e in ei.value.errors}
    assert got == {
        (0, "f0"),
        (0, "f1"),
        (0, "f2"),
        (0, "channel"),
        (0, "zzz"),
        (1, "f0"),
        (1, "f1"),
        (1, "f2"),
        (1, "channel"),
    }
    msgs = {(e["instance"], e["field"]): e["error"] for e in ei.value.errors}
    assert "finite" in msgs[(0, "f1")] and "<= 1000000" in msgs[(0, "f2")]
    assert "missing" in msgs[(1, "f2")] and "not an input" in msgs[(0, "zzz")]


def test_columns_encode_like_rows(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys)
    p = load_predictor(path, keys.policy)
    rows = [
        {"f0": i, "f1": -i, "f2": 0.5 * i, "channel": ["web", "pos", "atm"][i % 3]}
        for i in range(5)
    ]
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    assert np.array_equal(p.inputs.encode_columns(cols, 5), p.inputs.encode_rows(rows))


def test_directory_and_archive_load_the_same(tmp_path: Path, keys: Keys) -> None:
    path, _ = make_artifact(tmp_path, keys)
    d = tmp_path / "copy"
    shutil.copytree(path.with_suffix(""), d)
    assert load_predictor(d, keys.policy).digest == load_predictor(path, keys.policy).digest
