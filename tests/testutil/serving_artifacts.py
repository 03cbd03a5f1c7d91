"""Tiny signed artifacts for keel.serving and serve-app tests (built with keel.artifacts, like a
trainer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from keel.artifacts import (
    Architecture,
    ArtifactSpec,
    CodeVersion,
    FeatureViewRef,
    FieldSpec,
    SigningKey,
    TrustPolicy,
    build_artifact,
    generate_keypair,
)
from keel.serving import build_mlp


class Keys:
    def __init__(self) -> None:
        self.priv, self.pub = generate_keypair()
        self.key = SigningKey.from_pem(self.priv)
        self.policy = TrustPolicy((self.pub,))


def credit_spec(
    name: str = "credit",
    *,
    n_features: int = 4,
    views: bool = True,
    hidden: int = 8,
    features: Sequence[str] | None = None,
    view_version: str = "v1",
) -> ArtifactSpec:
    """n numeric features f0..f{n-2} (or the named ``features``) from the feature view
    `card_stats` (version ``view_version``), plus a request-time category `channel`, one
    probability output."""
    names = list(features) if features is not None else [f"f{i}" for i in range(n_features - 1)]
    n_features = len(names) + 1
    fields = [FieldSpec(name=n, dtype="float64", min=-1e6, max=1e6) for n in names]
    fields.append(FieldSpec(name="channel", dtype="category", categories=["web", "pos", "atm"]))
    return ArtifactSpec(
        name=name,
        architecture=Architecture(
            builder="mlp",
            args={"n_in": n_features, "hidden": [hidden], "n_out": 1, "out_activation": "sigmoid"},
        ),
        input_schema=fields,
        output_schema=[FieldSpec(name="p_default", dtype="float64", min=0.0, max=1.0)],
        feature_views=[FeatureViewRef(name="card_stats", version=view_version)] if views else [],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="0123456789abcdef0123456789abcdef01234567", dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
    )


def make_artifact(
    tmp: Path,
    keys: Keys | None,
    *,
    seed: int = 0,
    dirname: str | None = None,
    **spec_kw: Any,
) -> tuple[Path, torch.nn.Module]:
    """Build (and sign, with ``keys``) an artifact archive; returns it and the reference model."""
    spec = credit_spec(**spec_kw)
    torch.manual_seed(seed)
    model = build_mlp(**spec.architecture.args)
    out = tmp / (dirname or f"{spec.name}-{seed}")
    build_artifact(
        out,
        spec,
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        signing_key=keys.key if keys is not None else None,
        archive=out.with_suffix(".tar"),
    )
    model.eval()
    return out.with_suffix(".tar"), model


def reference(model: torch.nn.Module, rows: list[list[float]]) -> list[float]:
    with torch.no_grad():
        return model(torch.tensor(rows, dtype=torch.float32))[:, 0].double().tolist()


def batch_frame(n: int, seed: int = 0) -> Any:
    """``n`` rows for batch scoring with ``credit_spec(views=False)``: an ``id`` column, the
    numeric features f0..f2 (f2 integral) and the ``channel`` category (seeded)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "id": np.arange(n),
            "f0": rng.normal(size=n),
            "f1": rng.normal(size=n),
            "f2": rng.integers(-5, 5, size=n),
            "channel": rng.choice(["web", "pos", "atm"], size=n),
        }
    )


def bad_batch_frame() -> Any:
    """``batch_frame(300)`` with a NaN ``f0`` at row 250 and an unknown ``channel`` ("fax")
    from row 200 on: two bad columns, both first bad in the third 100-row chunk."""
    import polars as pl

    return batch_frame(300).with_columns(
        pl.when(pl.col("id") == 250).then(float("nan")).otherwise(pl.col("f0")).alias("f0"),
        pl.when(pl.col("id") >= 200)
        .then(pl.lit("fax"))
        .otherwise(pl.col("channel"))
        .alias("channel"),
    )
