"""`keel serve batch` on Ray: the same command, `--engine ray` (or a Ray address with the
default `--engine auto`), partitions the input with Ray Data and writes the file the
Polars engine writes. Starts a bounded local Ray (2 CPUs, short RAY_TMPDIR)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from testutil.serving_artifacts import Keys, make_artifact
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture()
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ray

    monkeypatch.setenv("RAY_TMPDIR", f"/tmp/kc-ray-{os.getpid()}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    ray.shutdown()


def batch(args: list[str]) -> dict[str, object]:
    from keel_cli.main import app

    res = CliRunner().invoke(app, ["serve", "batch", *args])
    assert res.exit_code == 0, (res.output, res.exception)
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_keel_serve_batch_on_ray_writes_the_polars_engines_file(
    tmp_path: Path, local_ray: None
) -> None:
    keys = Keys()
    (tmp_path / "pub.pem").write_bytes(keys.pub)
    path, _ = make_artifact(tmp_path, keys, views=False)
    rng = np.random.default_rng(3)
    n = 600
    pl.DataFrame(
        {
            "f0": rng.normal(size=n),
            "f1": rng.normal(size=n),
            "f2": rng.integers(-9, 9, size=n),
            "channel": rng.choice(["web", "pos", "atm"], size=n),
        }
    ).write_parquet(tmp_path / "in.parquet", row_group_size=100)
    common = ["--model", str(path), "--input", str(tmp_path / "in.parquet")]
    common += ["--trust-key", str(tmp_path / "pub.pem"), "--chunk-rows", "150"]
    polars = batch([*common, "--output", str(tmp_path / "polars.parquet")])
    assert polars["engine"] == "polars"  # auto without a Ray address: Polars
    on_ray = batch(
        [*common, "--output", str(tmp_path / "ray.parquet"), "--engine", "ray", "--workers", "2"]
    )
    assert on_ray["engine"] == "ray" and on_ray["rows"] == n and on_ray["chunks"] == 4
    assert on_ray["digest"] == polars["digest"]
    assert_frame_equal(
        pl.read_parquet(tmp_path / "ray.parquet"), pl.read_parquet(tmp_path / "polars.parquet")
    )


def test_an_unknown_engine_is_refused_naming_the_choices(tmp_path: Path) -> None:
    from keel_cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "serve",
            "batch",
            "--model",
            "m.tar",
            "--input",
            "i",
            "--output",
            "o",
            "--engine",
            "spark",
        ],
    )
    assert res.exit_code == 2 and "auto, polars or ray" in res.output
