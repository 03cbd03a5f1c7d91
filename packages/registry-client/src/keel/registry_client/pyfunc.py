"""Keel artifacts as MLflow pyfunc models: `mlflow.pyfunc.load_model("models:/fraud@champion")`.

`Registry.register` logs every verified keel.artifacts artifact as an MLflow model built with
MLflow's *models-from-code*: the version's folder holds `MLmodel`, a three-line code file
(`keel_model.py`, which names `KeelPyfuncModel` below), the signed archive and its manifest.
Nothing is pickled; loading runs no code from the artifact store except that code file,
which only imports this module.

Loading (`KeelPyfuncModel.load_context`) verifies the archive with keel.artifacts *before*
deserialising a byte — signature against the trust policy of the loading process, manifest,
every file hash, weights header — checks that it is the artifact that was registered (the
digest recorded in `MLmodel`), then rebuilds the model from the manifest's architecture
(a builder name + JSON args, see `keel.artifacts.register_builder`) and loads the verified weights.

Trust comes from the loading process's environment, never from the model's files (anyone
who can write to the artifact store could edit those):

* `KEEL_TRUSTED_KEYS`: PEM public key files (or folders of `*.pub` / `*.pem` files),
  separated by `os.pathsep`;
* `KEEL_ALLOW_UNSIGNED=1`: also accept unsigned artifacts (logged on every load; local
  experiments only).

With neither set, loading is refused (`UntrustedLoadError`), so a server cannot silently run
unverified models. Imports mlflow (and, on load, torch): never imported by
`keel.registry_client` itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from keel.registry_client._errors import (
    InvalidInputError,
    NotFoundError,
    UnverifiedArtifactError,
)

if TYPE_CHECKING:
    from keel.artifacts import Manifest, TrustPolicy

TRUSTED_KEYS_ENV = "KEEL_TRUSTED_KEYS"
ALLOW_UNSIGNED_ENV = "KEEL_ALLOW_UNSIGNED"
ARTIFACT_KEY = "keel_artifact"  # the MLflow model artifact holding the signed archive
CODE_FILE = "keel_model.py"  # the models-from-code file in each registered version
CONFIG_DIGEST = "keel_digest"
CONFIG_NAME = "keel_name"
CONFIG_RUNTIME = "keel_runtime_config"
NUMERIC = ("bool", "int32", "int64", "float32", "float64")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class UntrustedLoadError(UnverifiedArtifactError):
    """No trusted keys are configured for loading (and unsigned artifacts are not allowed)."""


def trust_policy_from_env(environ: Mapping[str, str] | None = None) -> TrustPolicy:
    """The trust policy for loading Keel models, from `KEEL_TRUSTED_KEYS` and
    `KEEL_ALLOW_UNSIGNED`; `UntrustedLoadError` when neither is set."""
    from keel.artifacts import ArtifactError, TrustPolicy

    env = os.environ if environ is None else environ
    flag = env.get(ALLOW_UNSIGNED_ENV, "").strip().lower()
    if flag not in _TRUE + _FALSE:
        raise InvalidInputError(f"{ALLOW_UNSIGNED_ENV}={flag!r}: use 1 or 0")
    allow_unsigned = flag in _TRUE
    paths: list[Path] = []
    for raw in env.get(TRUSTED_KEYS_ENV, "").split(os.pathsep):
        if not raw.strip():
            continue
        p = Path(raw.strip()).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".pub", ".pem") and q.is_file())
            if not found:
                raise InvalidInputError(
                    f"{TRUSTED_KEYS_ENV}: folder {p} holds no *.pub / *.pem key"
                )
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise InvalidInputError(f"{TRUSTED_KEYS_ENV}: no key file or folder at {p}")
    if not paths and not allow_unsigned:
        raise UntrustedLoadError(
            "refusing to load a Keel model: no trusted public keys are configured. Set "
            f"{TRUSTED_KEYS_ENV} to the signer's PEM public key file(s) (separated by "
            f"{os.pathsep!r}), or {ALLOW_UNSIGNED_ENV}=1 to accept unsigned artifacts"
        )
    try:
        return TrustPolicy.from_files(paths, allow_unsigned=allow_unsigned)
    except ArtifactError as e:
        raise InvalidInputError(f"{TRUSTED_KEYS_ENV}: {e}") from None


def _numpy_dtype(dtype: str) -> Any:
    return {"bool": np.bool_, "int32": np.int32, "int64": np.int64, "float32": np.float32}.get(
        dtype, np.float64
    )


class KeelPredictor:
    """A verified Keel artifact rebuilt as a torch model, predicting on DataFrames whose
    columns are the manifest's input schema; the result has its output schema's columns."""

    def __init__(self, model: Any, manifest: Manifest, digest: str, signer: str | None) -> None:
        self.model = model
        self.manifest = manifest
        self.digest = digest
        self.signer = signer
        self._inputs = [f.name for f in manifest.input_schema]
        self._nullable = {f.name for f in manifest.input_schema if f.nullable}
        self._outputs = [(f.name, _numpy_dtype(f.dtype)) for f in manifest.output_schema]
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        self._dtype = params[0].dtype if params else None

    @classmethod
    def load(
        cls,
        archive: str | Path,
        policy: TrustPolicy,
        *,
        expected_digest: str | None = None,
        expected_name: str | None = None,
        runtime_config: Mapping[str, Any] | None = None,
    ) -> KeelPredictor:
        """Verify `archive` against `policy`, check it is the expected artifact, build it."""
        from keel.artifacts import (
            ArtifactError,
            BuilderNotFoundError,
            load_artifact,
            resolve_builder,
        )

        try:
            loaded = load_artifact(
                archive, policy, framework="torch", runtime_config=runtime_config or None
            )
        except ArtifactError as e:
            raise UnverifiedArtifactError(
                f"refusing to load {Path(archive).name}: {type(e).__name__}: {e}", reason=e
            ) from None
        m = loaded.manifest
        if expected_digest and loaded.digest != expected_digest:
            raise UnverifiedArtifactError(
                f"{Path(archive).name} verifies as {loaded.digest} but the model was registered "
                f"as {expected_digest}: the archive was replaced"
            )
        if expected_name and m.name != expected_name:
            raise UnverifiedArtifactError(
                f"{Path(archive).name} is model {m.name!r}, registered as {expected_name!r}"
            )
        bad = [f"{f.name} ({f.dtype})" for f in m.input_schema if f.dtype not in NUMERIC]
        if bad:
            raise InvalidInputError(
                f"model {m.name!r}: the pyfunc loader feeds numeric columns to a torch model; "
                f"inputs {', '.join(bad)} are not numeric (encode them in the model's features)"
            )
        try:
            builder = resolve_builder(m.architecture.builder)
        except BuilderNotFoundError as e:
            raise NotFoundError(str(e)) from None
        except ArtifactError as e:  # a malformed KEEL_MODEL_BUILDERS, a non-callable target
            raise InvalidInputError(str(e)) from None
        try:
            model = loaded.build_model({m.architecture.builder: builder})
        except ArtifactError as e:  # the weights do not fit what the builder built
            raise InvalidInputError(f"model {m.name!r}: {e}") from None
        except (TypeError, ValueError) as e:  # the builder rejected the manifest's args
            raise InvalidInputError(
                f"model {m.name!r}: builder {m.architecture.builder!r} failed with args "
                f"{m.architecture.args}: {type(e).__name__}: {e}"
            ) from None
        if hasattr(model, "eval"):
            model.eval()
        return cls(model, m, loaded.digest, loaded.signer)

    def predict(self, data: Any) -> pd.DataFrame:
        import torch

        df = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        missing = [c for c in self._inputs if c not in df.columns]
        if missing:
            raise InvalidInputError(
                f"model {self.manifest.name!r}: input lacks column(s) {missing}; "
                f"expected {self._inputs}"
            )
        cols = df[self._inputs]
        nulls = [c for c in self._inputs if c not in self._nullable and cols[c].isna().any()]
        if nulls:
            raise InvalidInputError(
                f"model {self.manifest.name!r}: null values in non-nullable column(s) {nulls}"
            )
        try:
            x = cols.to_numpy(dtype=np.float64, copy=True)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"model {self.manifest.name!r}: input columns are not numeric: {e}"
            ) from None
        t = torch.from_numpy(x)
        t = t.to(self._dtype) if self._dtype is not None else t.float()
        with torch.inference_mode():
            y = self.model(t)
        out = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
        if out.ndim == 1:
            out = out[:, None]
        if out.shape != (len(df), len(self._outputs)):
            raise InvalidInputError(
                f"model {self.manifest.name!r} returned shape {out.shape}; its output schema "
                f"has {len(self._outputs)} column(s) for {len(df)} row(s)"
            )
        return pd.DataFrame(
            {name: out[:, i].astype(dt) for i, (name, dt) in enumerate(self._outputs)},
            index=df.index,
        )


class KeelPyfuncModel(PythonModel):  # type: ignore[misc]
    """The MLflow `PythonModel` every Keel-registered version loads through (models from
    code: `keel_model.py` in the version's folder sets an instance of it)."""

    def __init__(self) -> None:
        self.predictor: KeelPredictor | None = None

    def load_context(self, context: Any) -> None:
        cfg = dict(getattr(context, "model_config", None) or {})
        archive = (context.artifacts or {}).get(ARTIFACT_KEY)
        if not archive:
            raise InvalidInputError(
                f"this MLflow model has no {ARTIFACT_KEY!r} artifact: it was not written by "
                "keel.registry_client"
            )
        runtime = cfg.get(CONFIG_RUNTIME) or None
        if runtime is not None and not isinstance(runtime, Mapping):
            raise InvalidInputError(f"model_config {CONFIG_RUNTIME}: expected a mapping")
        self.predictor = KeelPredictor.load(
            archive,
            trust_policy_from_env(),
            expected_digest=cfg.get(CONFIG_DIGEST) or None,
            expected_name=cfg.get(CONFIG_NAME) or None,
            runtime_config=runtime,
        )

    # `model_input` is deliberately unannotated: MLflow reads predict's type hints to pick an
    # input conversion, and the model's signature (from the manifest) is what should drive it.
    def predict(self, context: Any, model_input, params: Any = None) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        if self.predictor is None:
            raise InvalidInputError("KeelPyfuncModel.predict before load_context")
        return self.predictor.predict(model_input)
