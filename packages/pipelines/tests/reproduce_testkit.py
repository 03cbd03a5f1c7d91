"""Worlds for the reproduce and evidence-pack tests: a git repository with a lockfile, a
small Parquet training set, keys, and a tiny keel.trainer job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from testutil.git_repo import lockfile_repo

N_FEATURES = 4


def git_repo(root: Path) -> tuple[Path, str, Path]:
    """A git repository at ``root/repo`` holding a lockfile at 3rdparty/python/default.lock,
    one commit: (repo, commit, lockfile)."""
    repo = root / "repo"
    commit, lock = lockfile_repo(repo, "reproduce")
    return repo, commit, lock


def write_data(path: Path, n: int = 600, seed: int = 3) -> Path:
    """y = x @ w + noise, Float64 columns f0..f3 and y."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    y = x @ rng.normal(size=N_FEATURES) + 0.1 * rng.normal(size=n)
    frame = pl.DataFrame({**{f"f{i}": x[:, i] for i in range(N_FEATURES)}, "y": y})
    frame.write_parquet(path, row_group_size=250)
    return path


def edit_one_value(path: Path, row: int, column: str, delta: float) -> None:
    """Rewrite ``path`` with one cell changed (everything else, row groups included, alike)."""
    frame = pl.read_parquet(path)
    values = frame[column].to_list()
    values[row] += delta
    frame.with_columns(pl.Series(column, values)).write_parquet(path, row_group_size=250)


def job_values(name: str, data: Path, workers: int = 2, **train: Any) -> dict[str, Any]:
    """A tiny regression job: 4 -> 8 -> 1 MLP, 2 epochs."""
    return {
        "name": name,
        "seed": 5,
        "model": {"builder": "mlp", "args": {"n_in": N_FEATURES, "hidden": [8], "n_out": 1}},
        "data": {
            "path": str(data),
            "features": [f"f{i}" for i in range(N_FEATURES)],
            "target": "y",
            "validation_fraction": 0.2,
        },
        "train": {
            "loss": "mse",
            "metrics": ["mae"],
            "epochs": 2,
            "batch_size": 32,
            "checkpoint_every_steps": 10,
            "optimizer": {"name": "adamw", "lr": 0.01},
            **train,
        },
        "scaling": {"num_workers": workers},
        "tracking": {"enabled": True},
    }
