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


TUNE = """
[tune]
metric = "val_loss"
[tune.space]
"train.optimizer.lr" = {{ grid = [0.01, 0.001] }}
"""


def test_bad_tune_section_is_one_line(tmp_path: Path) -> None:
    _data(tmp_path / "train.parquet")
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(key="k.pem") + TUNE.format().replace("val_loss", "val_auc"))
    result = CliRunner().invoke(app, ["train", str(job)])
    assert result.exit_code != 0
    assert "tune.metric 'val_auc' is not reported by this job" in str(result.exception)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_keel_train_with_tune_section_runs_the_search_and_exports_the_best(tmp_path: Path) -> None:
    """Two 1-epoch trials: one line per trial, then the best one, whose artifact verifies."""
    from keel.artifacts import TrustPolicy, generate_keypair, verify_artifact

    priv, pub = generate_keypair()
    (tmp_path / "key.pem").write_bytes(priv)
    _data(tmp_path / "train.parquet")
    job = tmp_path / "job.toml"
    text = JOB.format(key=tmp_path / "key.pem").replace("epochs = 2", "epochs = 1")
    job.write_text(text + TUNE.format())
    result = CliRunner().invoke(app, ["train", str(job), "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    trials = [ln for ln in lines if ln.startswith("trial-")]
    assert [t.split()[0] for t in trials] == ["trial-000", "trial-001"], result.output
    assert all(" completed after 1 epoch(s): val_loss " in t for t in trials), trials
    values = {t.split()[0]: float(t.split()[6]) for t in trials}
    m = re.match(
        r"tuned cli-mlp: best (trial-00[01]) \(val_loss ([0-9.e+-]+)\) of 2 trial\(s\); "
        r"artifact (sha256:[0-9a-f]{64}) \((.+)\); mlflow run ([0-9a-f]{32})$",
        lines[-1],
    )
    assert m, lines[-1]
    best = min(values, key=lambda k: (values[k], k))
    assert m.group(1) == best
    assert verify_artifact(m.group(4), TrustPolicy((pub,))).digest == m.group(3)
