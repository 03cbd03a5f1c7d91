"""Export: the trained weights as a signed keel.artifacts artifact.

The manifest names the registered builder and its JSON args (the artifact rebuilds the
model with ``LoadedArtifact.build_model(registry)``, no stored code), the input/output
schema from the Parquet schema, the final validation metrics, the training data's SHA-256,
the code version and the dependency lock hash. Builds are deterministic: exporting the same
checkpoint twice gives the same bytes, so a re-run re-uses an existing export.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from keel.trainer._data import DatasetInfo
from keel.trainer._errors import ExportError
from keel.trainer._spec import TrainJob

_DTYPES = {
    "double": "float64",
    "float": "float32",
    "halffloat": "float32",
    "bool": "bool",
    "int8": "int32",
    "int16": "int32",
    "int32": "int32",
    "uint8": "int32",
    "uint16": "int32",
    "int64": "int64",
    "uint32": "int64",
    "uint64": "int64",
}


def _signing_key(job: TrainJob, given: Any) -> Any:
    from keel.artifacts import ArtifactError, SigningKey

    if given is not None:
        return given
    path = job.export.signing_key or (
        Path(os.environ["KEEL_SIGNING_KEY"]) if os.environ.get("KEEL_SIGNING_KEY") else None
    )
    if path is None:
        raise ExportError(
            "no signing key: set export.signing_key in the job, KEEL_SIGNING_KEY, or pass "
            "signing_key= (make one with `keel artifact keygen --out keys/`)"
        )
    try:
        return SigningKey.from_pem(Path(path).read_bytes())
    except OSError as e:
        raise ExportError(f"cannot read signing key {path}: {e.strerror or e}") from None
    except ArtifactError as e:
        raise ExportError(f"signing key {path} is not a usable PEM private key: {e}") from None


def export_artifact(
    job: TrainJob,
    weights: dict[str, Any],
    *,
    home: Path,
    info: DatasetInfo,
    n_out: int,
    fingerprint: str,
    commit: str,
    dirty: bool,
    lock_hash: str,
    metrics: dict[str, float],
    step: int,
    signing_key: Any = None,
) -> tuple[str, Path]:
    """Build (or re-use) ``<out>/<job>-<digest12>-step<N>.tar``; returns (digest, archive)."""
    from keel.artifacts import (
        Architecture,
        ArtifactError,
        ArtifactSpec,
        CodeVersion,
        FieldSpec,
        build_artifact,
        read_manifest,
    )

    key = _signing_key(job, signing_key)
    outputs = (
        [FieldSpec(name=job.data.target, dtype="float32")]
        if n_out == 1
        else [FieldSpec(name=f"{job.data.target}_{i}", dtype="float32") for i in range(n_out)]
    )
    spec = ArtifactSpec(
        name=job.export.name or job.name,
        architecture=Architecture(builder=job.model.builder, args=dict(job.model.args)),
        input_schema=[
            FieldSpec(name=f, dtype=_DTYPES.get(info.dtypes[f], "float64"))  # type: ignore[arg-type]
            for f in job.data.features
        ],
        output_schema=outputs,
        training_data_fingerprint=fingerprint,
        code=CodeVersion(commit=commit, dirty=dirty),
        dependency_lock_hash=lock_hash,
        metrics={k: float(v) for k, v in metrics.items() if math.isfinite(v)},
    )
    out_root = job.export.out_dir or (home / "artifacts")
    stem = f"{job.name}-{job.digest().removeprefix('sha256:')[:12]}-step{step}"
    directory, archive = out_root / stem, out_root / f"{stem}.tar"
    try:
        if archive.exists():
            return read_manifest(archive)[1], archive
        if directory.exists():
            import shutil

            shutil.rmtree(directory)  # a crashed earlier export: rebuild (deterministic)
        out_root.mkdir(parents=True, exist_ok=True)
        tmp_archive = out_root / f".{stem}.tar.tmp"
        built = build_artifact(directory, spec, weights, signing_key=key, archive=tmp_archive)
        os.replace(tmp_archive, archive)
        return built.digest, archive
    except ArtifactError as e:
        raise ExportError(f"exporting {job.name!r} as an artifact failed: {e}") from None
    except OSError as e:
        raise ExportError(
            f"exporting {job.name!r}: cannot write {out_root}: {e.strerror or e}"
        ) from None
