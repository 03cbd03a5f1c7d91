"""`mlflow.pyfunc.load_model("models:/<name>@champion")` on Keel-registered artifacts, both
backends: MLflow's models-from-code (no pickle), the signature verified before loading, the
model rebuilt from the manifest's builder name, predictions equal to a direct keel.artifacts
load (the oracle); tampered, untrusted and unsigned artifacts refused at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from integration.registry.registry_support import (
    LINEAR_BUILDER,
    Backend,
    Signer,
    build_signed,
    make_linear,
)
from mlflow.models import Model

from keel.artifacts import (
    ArchiveError,
    IntegrityError,
    TrustPolicy,
    UnsignedArtifactError,
    UntrustedSignerError,
    load_artifact,
)
from keel.registry_client import (
    Decision,
    InvalidInputError,
    NotFoundError,
    Registry,
    UnverifiedArtifactError,
)
from keel.registry_client.pyfunc import UntrustedLoadError

DECIDED = Decision(who="alice@bank", why="beats champion", evidence_digest="sha256:" + "e" * 64)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def loading_env(
    backend: Backend, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The loading process's configuration: MLflow URIs, trusted key, builders."""
    key = tmp_path / "keys" / "keel.pub"
    key.parent.mkdir()
    key.write_bytes(signer.public_pem)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", backend.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", backend.tracking_uri)
    monkeypatch.setenv("KEEL_TRUSTED_KEYS", str(key))
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", LINEAR_BUILDER)
    monkeypatch.delenv("KEEL_ALLOW_UNSIGNED", raising=False)
    return key


def _oracle(archive: Path, policy: TrustPolicy, x: np.ndarray) -> np.ndarray:
    """A direct keel.artifacts load and forward pass, bypassing MLflow entirely."""
    import torch

    loaded = load_artifact(archive, policy, framework="torch")
    model = loaded.build_model({"linear": make_linear})
    with torch.no_grad():
        return (
            model(torch.from_numpy(np.ascontiguousarray(x)).float())
            .numpy()[:, 0]
            .astype(np.float64)
        )


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, 2))
    # columns in another order than the schema, plus one the model does not use
    return pd.DataFrame({"x1": x[:, 1], "note": ["n"] * n, "x0": x[:, 0]})


def _stored_archive(backend: Backend, run_id: str, name: str) -> Path:
    hits = [p for p in backend.artifacts_root.rglob(name) if run_id in p.parts]
    assert len(hits) == 1, hits
    return hits[0]


def test_models_uri_at_champion_predicts_like_a_direct_load(
    backend: Backend,
    registry: Registry,
    model_name: str,
    signer: Signer,
    loading_env: Path,
    tmp_path: Path,
) -> None:
    built = [build_signed(tmp_path, model_name, i, signer) for i in (1, 2)]
    for b in built:
        assert b.archive is not None
        registry.register(b.archive, trust=signer.policy)
    registry.promote(model_name, "champion", 2, DECIDED)

    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    df = _frame(64)
    got = model.predict(df)
    assert isinstance(got, pd.DataFrame) and list(got.columns) == ["score"]
    x = df[["x0", "x1"]].to_numpy()
    assert built[1].archive is not None and built[0].archive is not None
    want = _oracle(built[1].archive, signer.policy, x)
    np.testing.assert_allclose(got["score"].to_numpy(), want, rtol=0, atol=1e-6)
    w = np.asarray(
        load_artifact(built[1].archive, signer.policy, framework="numpy").tensors["weight"]
    )
    np.testing.assert_allclose(got["score"].to_numpy(), x @ w[0].astype(np.float64), atol=1e-5)
    # the alias decides: version 1 predicts differently
    other = _oracle(built[0].archive, signer.policy, x)
    assert not np.allclose(got["score"].to_numpy(), other, atol=1e-3)
    assert model.metadata.signature.inputs.input_names() == ["x0", "x1"]

    # MLflow's own format, models from code, and nothing pickled anywhere in the version
    mv = registry.get_by_alias(model_name, "champion")
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{model_name}@champion", dst_path=str(tmp_path / "dl")
        )
    )
    flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert flavor["model_code_path"] == "keel_model.py"
    assert "python_model" not in flavor and "cloudpickle_version" not in flavor
    assert flavor["config"]["keel_digest"] == mv.digest
    stored = registry.mlflow_client.list_artifacts(mv.run_id, "keel")
    # Loading from a local (file://) store, MLflow uses the stored folder in place: it adds its
    # `registered_model_meta`, and importing the code file leaves a `__pycache__` there.
    files = sorted(f.path.removeprefix("keel/") for f in stored)
    files = [f for f in files if f not in ("registered_model_meta", "__pycache__")]
    assert files == sorted(
        ["MLmodel", "keel_model.py", "manifest.json", "requirements.txt", built[1].archive.name]
    )
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]


def test_a_tampered_archive_in_the_store_is_refused_at_load(
    backend: Backend,
    registry: Registry,
    model_name: str,
    signer: Signer,
    loading_env: Path,
    tmp_path: Path,
) -> None:
    built = [build_signed(tmp_path, model_name, i, signer) for i in (1, 2)]
    versions = [registry.register(b.archive or b.path, trust=signer.policy) for b in built]
    registry.promote(model_name, "champion", 1, DECIDED)
    assert built[0].archive is not None and built[1].archive is not None
    stored = _stored_archive(backend, versions[0].run_id, built[0].archive.name)
    pristine = stored.read_bytes()
    mlflow.pyfunc.load_model(f"models:/{model_name}@champion")  # loads before tampering

    # 1. a flipped bit in the weights' bytes (the archive is an uncompressed tar)
    weights = (built[0].path / "weights.safetensors").read_bytes()
    at = pristine.find(weights)
    assert at > 0
    data = bytearray(pristine)
    data[at + len(weights) - 1] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(UnverifiedArtifactError) as info:
        mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    assert isinstance(info.value.reason, IntegrityError | ArchiveError), info.value.reason

    # 2. another artifact, validly signed by the trusted key, swapped in (a downgrade/swap)
    shutil.copyfile(built[1].archive, stored)
    with pytest.raises(UnverifiedArtifactError, match="archive was replaced"):
        mlflow.pyfunc.load_model(f"models:/{model_name}@champion")

    # 3. the same artifact re-signed by a key the loader does not trust
    other = build_signed(tmp_path / "o", model_name, 1, Signer())
    assert other.archive is not None
    shutil.copyfile(other.archive, stored)
    with pytest.raises(UnverifiedArtifactError) as info:
        mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    assert isinstance(info.value.reason, UntrustedSignerError)

    stored.write_bytes(pristine)
    assert mlflow.pyfunc.load_model(f"models:/{model_name}@champion").predict(_frame(3)).shape == (
        3,
        1,
    )


def test_loading_needs_a_configured_trust_policy(
    registry: Registry,
    model_name: str,
    signer: Signer,
    loading_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed = build_signed(tmp_path / "s", model_name, 1, signer)
    unsigned = build_signed(tmp_path / "u", model_name, 2, None)
    registry.register(signed.path, trust=signer.policy)
    registry.register(unsigned.path, trust=TrustPolicy.unsigned_ok())
    uri_signed, uri_unsigned = f"models:/{model_name}/1", f"models:/{model_name}/2"

    monkeypatch.delenv("KEEL_TRUSTED_KEYS")
    with pytest.raises(UntrustedLoadError, match="KEEL_TRUSTED_KEYS"):
        mlflow.pyfunc.load_model(uri_signed)
    monkeypatch.setenv("KEEL_TRUSTED_KEYS", str(tmp_path / "missing.pub"))
    with pytest.raises(InvalidInputError, match="no key file"):
        mlflow.pyfunc.load_model(uri_signed)
    stranger = tmp_path / "stranger.pub"
    stranger.write_bytes(Signer().public_pem)
    monkeypatch.setenv("KEEL_TRUSTED_KEYS", str(stranger))
    with pytest.raises(UnverifiedArtifactError) as info:
        mlflow.pyfunc.load_model(uri_signed)
    assert isinstance(info.value.reason, UntrustedSignerError)

    # a folder of keys works; unsigned needs the explicit allowance
    monkeypatch.setenv("KEEL_TRUSTED_KEYS", str(loading_env.parent))
    assert mlflow.pyfunc.load_model(uri_signed).predict(_frame(2)).shape == (2, 1)
    with pytest.raises(UnverifiedArtifactError) as info:
        mlflow.pyfunc.load_model(uri_unsigned)
    assert isinstance(info.value.reason, UnsignedArtifactError)
    monkeypatch.setenv("KEEL_ALLOW_UNSIGNED", "1")
    assert mlflow.pyfunc.load_model(uri_unsigned).predict(_frame(2)).shape == (2, 1)
    monkeypatch.setenv("KEEL_ALLOW_UNSIGNED", "maybe")
    with pytest.raises(InvalidInputError, match="KEEL_ALLOW_UNSIGNED"):
        mlflow.pyfunc.load_model(uri_unsigned)


def test_builder_and_input_errors_are_clear(
    registry: Registry,
    model_name: str,
    signer: Signer,
    loading_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register(build_signed(tmp_path, model_name, 1, signer).path, trust=signer.policy)
    uri = f"models:/{model_name}/1"
    monkeypatch.delenv("KEEL_MODEL_BUILDERS")
    with pytest.raises(NotFoundError, match="no model builder registered as 'linear'"):
        mlflow.pyfunc.load_model(uri)
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", "linear=integration.registry.nowhere:make")
    with pytest.raises(NotFoundError, match="cannot be imported"):
        mlflow.pyfunc.load_model(uri)
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", "linear")
    with pytest.raises(InvalidInputError, match="name=module:attribute"):
        mlflow.pyfunc.load_model(uri)
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", "linear=torch.nn:ReLU")  # takes no n_in
    with pytest.raises(InvalidInputError, match="builder 'linear' failed with args"):
        mlflow.pyfunc.load_model(uri)
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", "linear=torch.nn:Identity")  # has no weight
    with pytest.raises(InvalidInputError, match="weights do not fit"):
        mlflow.pyfunc.load_model(uri)
    monkeypatch.setenv("KEEL_MODEL_BUILDERS", LINEAR_BUILDER)
    model = mlflow.pyfunc.load_model(uri)
    with pytest.raises(Exception, match="x0"):  # MLflow's schema enforcement names the column
        model.predict(pd.DataFrame({"x1": [1.0]}))
    predictor = model.unwrap_python_model().predictor
    with pytest.raises(InvalidInputError, match=r"lacks column\(s\) \['x0'\]"):
        predictor.predict(pd.DataFrame({"x1": [1.0]}))
    with pytest.raises(InvalidInputError, match="null values"):
        predictor.predict(pd.DataFrame({"x0": [None, 1.0], "x1": [1.0, 2.0]}))
