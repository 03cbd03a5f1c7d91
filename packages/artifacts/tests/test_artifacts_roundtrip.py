"""Build -> verify -> load round trips, contracts, runtime config, diff, metrics."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from artifacts_testdata import PICKLE_DICT, Keys, build, spec, tensors
from prometheus_client import CollectorRegistry

from keel.artifacts import (
    ArtifactMetrics,
    ForbiddenPayloadError,
    IncompatibleArtifactError,
    InvalidInputError,
    ManifestError,
    Requirements,
    RuntimeConfigError,
    TrustPolicy,
    UntrustedSignerError,
    archive_artifact,
    build_artifact,
    canonical_dumps,
    canonical_loads,
    diff_manifests,
    load_artifact,
    verify_artifact,
)

CFG = {"feature_url": "redis://127.0.0.1:6379/0"}


def test_torch_is_the_cpu_build() -> None:
    assert torch.__version__.endswith("+cpu")


def test_round_trip_directory_and_archive(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys, archive=tmp_path / "a.tar")
    v_dir = verify_artifact(d, keys.policy)
    v_tar = verify_artifact(tmp_path / "a.tar", keys.policy)
    assert v_dir.digest == v_tar.digest and v_dir.digest.startswith("sha256:")
    assert v_dir.signer is not None
    loaded = load_artifact(
        tmp_path / "a.tar", keys.policy, runtime_config=CFG, read_files=["profile.json"]
    )
    for name, arr in tensors().items():
        assert torch.equal(loaded.tensors[name], torch.from_numpy(arr))
    assert loaded.files == {"profile.json": b"{}"}
    for engine in ("keel", "safetensors"):
        np_loaded = load_artifact(
            d, keys.policy, framework="numpy", engine=engine, runtime_config=CFG
        )
        for name, arr in tensors().items():
            assert np.array_equal(np_loaded.tensors[name], arr)
        st = load_artifact(d, keys.policy, engine=engine, runtime_config=CFG)
        assert all(torch.equal(st.tensors[k], loaded.tensors[k]) for k in loaded.tensors)


def test_torch_tensors_build_and_registered_builder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    state = {k: v.to(torch.bfloat16) if k == "0.bias" else v for k, v in model.state_dict().items()}
    keys = Keys()
    d = build(tmp_path, keys, weights=state)
    loaded = load_artifact(d, keys.policy, runtime_config=CFG)
    assert loaded.tensors["0.bias"].dtype == torch.bfloat16
    via_st = load_artifact(d, keys.policy, engine="safetensors", runtime_config=CFG)
    assert all(torch.equal(via_st.tensors[k], v) for k, v in loaded.tensors.items())
    loaded.tensors["0.weight"].add_(0)  # writable views of a private buffer

    def mlp(n_in: int, hidden: int, n_out: int) -> torch.nn.Module:
        m = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
        )
        m[0].bias.data = m[0].bias.data.to(torch.bfloat16)
        return m

    built = loaded.build_model({"mlp": mlp})
    assert torch.equal(built[0].weight, model[0].weight)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no model builder"):
        loaded.build_model({})


def test_weights_from_an_existing_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(tensors(), str(tmp_path / "w.safetensors"))
    d = build(tmp_path, None, weights=tmp_path / "w.safetensors")
    loaded = load_artifact(d, TrustPolicy.unsigned_ok(), framework="numpy", runtime_config=CFG)
    assert set(loaded.tensors) == set(tensors())


def test_unaligned_third_party_layout_loads_by_copy(tmp_path: Path) -> None:
    from artifacts_testdata import raw_safetensors

    hdr = {
        "flag": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    f = tmp_path / "odd.safetensors"
    f.write_bytes(raw_safetensors(hdr, b"\x01" + np.array([1.5, -2.0], dtype=np.float32).tobytes()))
    d = build(tmp_path, None, weights=f)
    for framework in ("torch", "numpy"):
        t = load_artifact(
            d, TrustPolicy.unsigned_ok(), framework=framework, runtime_config=CFG
        ).tensors  # type: ignore[arg-type]
        assert [float(x) for x in t["w"]] == [1.5, -2.0] and int(t["flag"][0]) == 1


def test_runtime_config_is_validated_and_never_changes_the_digest(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    a = load_artifact(
        d, keys.policy, framework="numpy", runtime_config={**CFG, "threads": 8, "device": "cuda"}
    )
    b = load_artifact(d, keys.policy, framework="numpy", runtime_config=CFG)
    assert a.digest == b.digest
    assert a.runtime_config["threads"] == 8 and b.runtime_config["threads"] == 1
    assert b.runtime_config["timeout_s"] == 1.0 and isinstance(b.runtime_config["timeout_s"], float)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    with pytest.raises(RuntimeConfigError) as e:
        load_artifact(
            d,
            keys.policy,
            framework="numpy",
            runtime_config={"threads": 0, "device": "tpu", "colour": "red", "batch_size": "8"},
        )
    msg = str(e.value)
    for part in ("threads", "device", "colour", "batch_size", "feature_url: required"):
        assert part in msg


def test_compatibility_lists_every_mismatch(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    ok = Requirements(
        keel_version="0.3.0",
        feature_views={"card_stats": "v3-7f2a"},
        input_columns={"amount": "float64", "country": "string", "n_tx_1h": "int32"},
    )
    load_artifact(d, keys.policy, framework="numpy", requirements=ok, runtime_config=CFG)
    bad = Requirements(
        keel_version="1.2.0",
        feature_views={"card_stats": "v2"},
        input_columns={"amount": "string", "extra": "int64"},
    )
    with pytest.raises(IncompatibleArtifactError) as e:
        load_artifact(d, keys.policy, framework="numpy", requirements=bad, runtime_config=CFG)
    m = e.value.mismatches
    assert (
        len(m) == 6
    ), m  # keel range, view version, amount dtype, country + n_tx_1h missing, extra
    assert any("1.2.0" in x for x in m) and any("card_stats" in x for x in m)
    assert any("'extra'" in x for x in m)


def test_diff_names_what_changed(tmp_path: Path) -> None:
    a = build(tmp_path, None, name="a")
    b = build(
        tmp_path,
        None,
        name="b",
        spec=spec(
            metrics={"auc": 0.93, "brier": 0.071}, dependency_lock_hash="sha256:" + "ee" * 32
        ),
        weights=tensors(seed=1),
    )
    ma = verify_artifact(a, TrustPolicy.unsigned_ok()).manifest
    mb = verify_artifact(b, TrustPolicy.unsigned_ok()).manifest
    sections = {(c.section, c.key) for c in diff_manifests(ma, mb)}
    assert ("metrics", "metrics.auc") in sections
    assert ("dependencies", "dependency_lock_hash") in sections
    assert ("files", "files.weights.safetensors") in sections
    assert not any(s == "data" for s, _ in sections)
    assert diff_manifests(ma, ma) == []


def test_metrics_count_verifications_and_refusals(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys)
    metrics = ArtifactMetrics(CollectorRegistry())
    load_artifact(d, keys.policy, framework="numpy", runtime_config=CFG, metrics=metrics)
    with pytest.raises(UntrustedSignerError):
        verify_artifact(d, TrustPolicy(), metrics=metrics)
    reg = metrics.registry
    assert reg.get_sample_value("keel_artifacts_load_seconds_count") == 1
    assert reg.get_sample_value("keel_artifacts_verified_total", {"signed": "true"}) == 1
    assert (
        reg.get_sample_value("keel_artifacts_refusals_total", {"reason": "untrusted_signer"}) == 1
    )
    assert (reg.get_sample_value("keel_artifacts_verified_bytes_total") or 0) > 0


def test_unsigned_allowed_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = build(tmp_path, None)
    with caplog.at_level("WARNING", logger="keel.artifacts"):
        verify_artifact(d, TrustPolicy.unsigned_ok())
    assert "UNSIGNED" in caplog.text


def test_builder_refuses_pickle_and_reserved_names(tmp_path: Path) -> None:
    with pytest.raises(ForbiddenPayloadError):
        build(tmp_path, None, name="p", files={"state.bin": PICKLE_DICT})
    with pytest.raises(ForbiddenPayloadError):
        build(tmp_path, None, name="q", files={"optim.pt": b"zip"})
    with pytest.raises(InvalidInputError):
        build(tmp_path, None, name="r", files={"manifest.json": b"{}"})
    with pytest.raises(InvalidInputError, match="already exists"):
        build_artifact(tmp_path, spec(), tensors())


def test_archive_of_existing_directory_matches_build_archive(tmp_path: Path) -> None:
    keys = Keys()
    d = build(tmp_path, keys, archive=tmp_path / "a.tar")
    archive_artifact(d, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        names = tf.getnames()
    assert names == sorted(names)


def test_canonical_json_rules() -> None:
    v = {"b": [1.0, 1e-7, 1e20, 0.1, -0.0, 2**60], "a": "é\n", "c": {"y": None, "x": True}}
    out = canonical_dumps(v)
    assert (
        out
        == b'{"a":"\xc3\xa9\\n","b":[1,1e-7,1e20,0.1,0,1152921504606846976],"c":{"x":true,"y":null}}'
    )
    assert canonical_loads(out) == canonical_loads(canonical_dumps(canonical_loads(out)))
    for bad in (b'{"a":1, "b":2}', b'{"a":1,"a":2}', b'{"a":NaN}', b"[1]x"):
        with pytest.raises(ManifestError):
            canonical_loads(bad)
    with pytest.raises(ManifestError):
        canonical_dumps({"x": float("inf")})
