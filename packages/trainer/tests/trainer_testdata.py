"""Small deterministic training sets and jobs for the trainer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from keel.trainer import TrainJob, parse_job

N_FEATURES = 8


def write_regression(path: Path, n: int = 3000, seed: int = 0, row_group_size: int = 700) -> Path:
    """y = x @ w + 0.3 sin(x0) + noise, in row groups that do not align with any shard."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    w = rng.normal(size=N_FEATURES)
    y = x @ w + 0.3 * np.sin(x[:, 0]) + 0.1 * rng.normal(size=n)
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(N_FEATURES)}
    cols["y"] = y
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def job(name: str, data: Path, **overrides: Any) -> TrainJob:
    values: dict[str, Any] = {
        "name": name,
        "seed": 11,
        "model": {"builder": "mlp", "args": {"n_in": N_FEATURES, "hidden": [16, 16], "n_out": 1}},
        "data": {
            "path": str(data),
            "features": [f"f{i}" for i in range(N_FEATURES)],
            "target": "y",
            "validation_fraction": 0.2,
        },
        "train": {
            "loss": "mse",
            "metrics": ["mae", "rmse"],
            "epochs": 3,
            "batch_size": 64,
            "checkpoint_every_steps": 10,
            "optimizer": {"name": "adamw", "lr": 0.01},
            "schedule": {"name": "cosine", "warmup_steps": 5},
        },
        "scaling": {"num_workers": 2},
        "failure": {"max_failures": 2},
        "tracking": {"enabled": False},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v
    return parse_job(values)
