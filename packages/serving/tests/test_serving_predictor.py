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


@pytest.mark.parametrize(
    "args",
    [
        {"n_in": 5, "hidden": [8, 4], "n_out": 1, "out_activation": "sigmoid"},
        {"n_in": 5, "hidden": 6, "n_out": 3, "activation": "tanh", "out_activation": "softmax"},
        {"n_in": 5, "hidden": [7], "n_out": 2, "activation": "silu", "dropout": 0.2},
    ],
)
def test_numpy_forward_of_the_builtin_mlp_matches_torch(args: dict[str, Any]) -> None:
    import torch

    from keel.serving import build_mlp
    from keel.serving._predictor import _numpy_forward

    torch.manual_seed(0)
    model = build_mlp(**args).eval()
    fast = _numpy_forward(model, 5)
    assert fast is not None
    x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32) * 4
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = fast(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_numpy_forward_refuses_what_it_cannot_compute() -> None:
    import torch

    from keel.serving import build_mlp
    from keel.serving._predictor import _numpy_forward

    assert _numpy_forward(build_mlp(n_in=3, hidden=4, activation="gelu").eval(), 3) is None
    assert _numpy_forward(torch.nn.Sequential(torch.nn.LayerNorm(3)), 3) is None
    assert _numpy_forward(torch.nn.Linear(3, 1), 3) is None  # not a Sequential


def test_loaded_mlp_runs_the_numpy_path_unless_the_model_is_replaced(
    tmp_path: Path, keys: Keys
) -> None:
    path, model = make_artifact(tmp_path, keys, seed=4)
    p = load_predictor(path, keys.policy, threads=1, device="cpu")
    assert p.fast is not None and p.fast_of is p.model and p.light
    x = np.random.default_rng(1).normal(size=(6, len(p.inputs))).astype(np.float32)
    y = p.predict(x)
    assert y.shape == (6, 1)
    assert y[:, 0].tolist() == pytest.approx(reference(model, x.tolist()), abs=1e-6)
    calls: list[int] = []
    real = p.model

    def spy(t: Any) -> Any:
        calls.append(1)
        return real(t)

    p.model = spy  # a replaced model is called, never the stale fast path
    assert not p.light  # nor run inline on the event loop by default
    assert p.predict(x)[:, 0].tolist() == pytest.approx(y[:, 0].tolist(), abs=1e-6)
    assert calls == [1]


def test_all_float_schemas_encode_fast_exactly_like_the_checked_path() -> None:
    from types import SimpleNamespace

    from keel.serving import InputSchema, compile_fields

    def spec(name: str, dtype: str, lo: float | None = None, hi: float | None = None) -> Any:
        return SimpleNamespace(
            name=name, dtype=dtype, min=lo, max=hi, categories=None, nullable=False
        )

    specs = [spec("a", "float32"), spec("b", "float64", 0.0, 10.0), spec("c", "float32", -1.0)]
    fast = InputSchema(compile_fields(specs, role="input"))
    slow = InputSchema(compile_fields(specs, role="input"))
    slow._all_float = False
    good = [{"a": 1.5, "b": 3, "c": -1.0}, {"c": 2.25, "a": -7, "b": 10.0}]
    assert fast._encode_floats(good) is not None
    assert np.array_equal(fast.encode_rows(good), slow.encode_rows(good))
    assert fast.encode_rows(good).dtype == np.float32
    bad_rows: list[Any] = [
        {"a": True, "b": 1.0, "c": 0.0},  # a bool is not a number
        {"a": None, "b": 1.0, "c": 0.0},
        {"a": "1", "b": 1.0, "c": 0.0},
        {"a": math.nan, "b": 1.0, "c": 0.0},
        {"a": math.inf, "b": 1.0, "c": 0.0},
        {"a": 1e39, "b": 1.0, "c": 0.0},  # beyond float32
        {"a": 10**400, "b": 1.0, "c": 0.0},
        {"a": 0.0, "b": 10.5, "c": 0.0},  # above max
        {"a": 0.0, "b": 1.0, "c": -2.0},  # below min
        {"a": 0.0, "b": 1.0},  # missing
        {"a": 0.0, "b": 1.0, "c": 0.0, "d": 1.0},  # extra
        {"a": 0.0, "b": 1.0, "x": 0.0},  # missing + extra, same size
        [0.0, 1.0, 0.0],
    ]
    for row in bad_rows:
        assert fast._encode_floats([good[0], row]) is None, row
        with pytest.raises(InvalidInputError) as fe:
            fast.encode_rows([good[0], row])
        with pytest.raises(InvalidInputError) as se:
            slow.encode_rows([good[0], row])
        assert fe.value.errors == se.value.errors and fe.value.errors
