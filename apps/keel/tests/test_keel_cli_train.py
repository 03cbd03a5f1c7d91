"""`keel train <job.toml>` end to end on a local Ray: progress lines, the final line names
the artifact digest (which verifies) and the MLflow run; bad jobs fail in one line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from keel_cli.main import app
from typer.testing import CliRunner

JOB = """
name = "cli-mlp"
seed = 3
[model]
builder = "mlp"
args = {{ n_in = 4, hidden = [8], n_out = 1 }}
[data]
path = "train.parquet"
features = ["a", "b", "c", "d"]
target = "y"
[train]
epochs = 2
batch_size = 50
checkpoint_every_steps = 20
[scaling]
num_workers = 1
[export]
signing_key = "{key}"
"""


def _data(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 4))
    cols = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3]}
    cols["y"] = x @ np.array([1.0, -2.0, 0.5, 0.0])
    pl.DataFrame(cols).write_parquet(path)


def test_bad_job_is_one_line(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('name = "x"\n')
    result = CliRunner().invoke(app, ["train", str(job)])
    assert result.exit_code != 0
    assert "model: Field required" in str(result.exception) or "model" in result.output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_keel_train_end_to_end(tmp_path: Path) -> None:
    from keel.artifacts import TrustPolicy, generate_keypair, verify_artifact

    priv, pub = generate_keypair()
    (tmp_path / "key.pem").write_bytes(priv)
    _data(tmp_path / "train.parquet")
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(key=tmp_path / "key.pem"))
    result = CliRunner().invoke(app, ["train", str(job), "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    assert "training on 1 worker(s), from scratch" in result.output
    assert re.search(r"epoch 2 done: .*val_loss", result.output)
    last = result.output.strip().splitlines()[-1]
    m = re.match(
        r"trained cli-mlp: completed at step (\d+); artifact (sha256:[0-9a-f]{64}) \((.+)\); mlflow run ([0-9a-f]{32})$",
        last,
    )
    assert m, last
    verified = verify_artifact(m.group(3), TrustPolicy((pub,)))
    assert verified.digest == m.group(2)
