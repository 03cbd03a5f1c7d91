"""Write the MLflow model that makes a registered Keel artifact loadable by `models:/` URIs.

The version's folder (`keel/` in its run) becomes an MLflow model directory:

    keel/MLmodel            python_function flavor, loader `mlflow.pyfunc.loaders.code_model`
                            (models from code), signature from the manifest's schemas,
                            model_config {keel_digest, keel_name, keel_runtime_config}
    keel/keel_model.py      the code file: `set_model(KeelPyfuncModel())` (see `pyfunc`)
    keel/<archive>.tar      the signed archive: the flavor's `keel_artifact` artifact
    keel/manifest.json      the verified manifest
    keel/requirements.txt   third-party needs of the loader (pinned to the registering env)

No pickle is written; MLflow's `save_model` is not used (it would copy the archive and
infer requirements by loading the model in a subprocess), only its `Model` /
`add_to_model` API, so the `MLmodel` file is MLflow's own format.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from keel.registry_client.pyfunc import (
    ARTIFACT_KEY,
    CODE_FILE,
    CONFIG_DIGEST,
    CONFIG_NAME,
    CONFIG_RUNTIME,
)

if TYPE_CHECKING:
    from keel.artifacts import FieldSpec, Manifest

# Files of the version's folder besides the archive (whose name must differ from these).
RESERVED_NAMES = frozenset({"MLmodel", CODE_FILE, "manifest.json", "requirements.txt"})
LOADER_MODULE = "mlflow.pyfunc.loaders.code_model"  # MLflow's models-from-code loader
_COLSPEC = {
    "bool": "boolean",
    "int32": "integer",
    "int64": "long",
    "float32": "float",
    "float64": "double",
    "string": "string",
    "category": "string",
}


def _schema(fields: list[FieldSpec]) -> object:
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec(_COLSPEC[f.dtype], f.name, required=not f.nullable) for f in fields])


def _requirements() -> list[str]:
    out = []
    for dist in ("mlflow-skinny", "torch", "safetensors", "numpy", "pandas"):
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(dist)
    # Keel's own packages (keel-registry-client, keel-artifacts) and the model builders are
    # not listed: in this monorepo they are first-party sources, not installed
    # distributions, and MLflow would warn on every load. The loading environment is Keel's.
    return out


def write_mlflow_model(dst: Path, *, manifest: Manifest, digest: str, archive_name: str) -> None:
    """Write `MLmodel`, the code file and `requirements.txt` into `dst` (the archive and
    manifest are uploaded next to them, under the same folder)."""
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature

    dst.mkdir(parents=True, exist_ok=True)
    model = Model(metadata={"keel.digest": digest, "keel.name": manifest.name})
    model.signature = ModelSignature(
        inputs=_schema(list(manifest.input_schema)),
        outputs=_schema(list(manifest.output_schema)) if manifest.output_schema else None,
    )
    mlflow.pyfunc.add_to_model(
        model,
        loader_module=LOADER_MODULE,
        model_code_path=CODE_FILE,
        model_config={CONFIG_DIGEST: digest, CONFIG_NAME: manifest.name, CONFIG_RUNTIME: {}},
        artifacts={ARTIFACT_KEY: {"path": archive_name}},
    )
    shutil.copyfile(Path(__file__).with_name("_mlflow_code.py"), dst / CODE_FILE)
    model.save(str(dst / "MLmodel"))
    (dst / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
