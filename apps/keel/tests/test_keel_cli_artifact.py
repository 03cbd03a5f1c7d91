"""`keel artifact keygen|build|verify|inspect|diff` end to end on real files under tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from keel_cli.main import app
from typer.testing import CliRunner

from keel.artifacts import save_safetensors

runner = CliRunner()

SPEC = {
    "name": "fraud-mlp",
    "architecture": {"builder": "mlp", "args": {"n_in": 2, "n_out": 1}},
    "input_schema": [{"name": "amount", "dtype": "float64"}, {"name": "n_tx", "dtype": "int64"}],
    "output_schema": [{"name": "p_fraud", "dtype": "float64", "min": 0.0, "max": 1.0}],
    "feature_views": [{"name": "card_stats", "version": "v3"}],
    "code": {"commit": "abc123", "dirty": False},
    "metrics": {"auc": 0.9},
}


def _setup(tmp: Path, metrics: dict[str, float] | None = None, tag: str = "a") -> tuple[Path, Path]:
    spec = tmp / f"spec-{tag}.json"
    spec.write_text(json.dumps({**SPEC, "metrics": metrics or SPEC["metrics"]}))
    w = tmp / f"w-{tag}.safetensors"
    save_safetensors(
        w, {"w": np.ones((1, 2), dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}
    )
    return spec, w


def _build(spec: Path, w: Path, out: Path, *extra: str) -> str:
    return _ok(
        ["artifact", "build", "--spec", str(spec), "--weights", str(w), "--out", str(out), *extra]
    )


def _ok(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_keygen_build_verify_inspect_diff(tmp_path: Path) -> None:
    _ok(["artifact", "keygen", "--out", str(tmp_path / "keys")])
    key, pub = tmp_path / "keys/keel.key", tmp_path / "keys/keel.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    spec, w = _setup(tmp_path)
    (tmp_path / "card.md").write_text("# model card\n")
    out = _build(
        spec,
        w,
        tmp_path / "a",
        "--key",
        str(key),
        "--archive",
        str(tmp_path / "a.tar"),
        "--file",
        f"model_card.md={tmp_path / 'card.md'}",
    )
    assert "digest:   sha256:" in out
    v = json.loads(
        _ok(["artifact", "verify", str(tmp_path / "a.tar"), "--trust", str(pub), "--json"])
    )
    assert v["ok"] and v["signed"] and v["name"] == "fraud-mlp"
    assert "model_card.md" in _ok(["artifact", "inspect", str(tmp_path / "a")])

    spec_b, w_b = _setup(tmp_path, {"auc": 0.95}, tag="b")
    lock = tmp_path / "default.lock"
    lock.write_text("numpy==2.4.6\n")
    _build(spec_b, w_b, tmp_path / "b", "--key", str(key), "--lock", str(lock))
    d = json.loads(_ok(["artifact", "diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]))
    keys = {c["key"] for c in d["changes"]}
    assert "metrics.auc" in keys and "files.model_card.md" in keys
    assert "dependency_lock_hash" in keys


def test_verify_refuses_untrusted_and_unsigned(tmp_path: Path) -> None:
    _ok(["artifact", "keygen", "--out", str(tmp_path / "k1")])
    _ok(["artifact", "keygen", "--out", str(tmp_path / "k2")])
    spec, w = _setup(tmp_path)
    _build(spec, w, tmp_path / "a", "--key", str(tmp_path / "k1/keel.key"))
    r = runner.invoke(
        app, ["artifact", "verify", str(tmp_path / "a"), "--trust", str(tmp_path / "k2/keel.pub")]
    )
    assert r.exit_code != 0 and isinstance(r.exception, Exception)
    assert type(r.exception).__name__ == "UntrustedSignerError"
    _build(spec, w, tmp_path / "u")
    r = runner.invoke(app, ["artifact", "verify", str(tmp_path / "u")])
    assert type(r.exception).__name__ == "UnsignedArtifactError"
    assert "UNSIGNED" in _ok(["artifact", "verify", str(tmp_path / "u"), "--allow-unsigned"])


def test_build_records_git_commit_and_dirty_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        "GIT_AUTHOR_NAME": "k",
        "GIT_AUTHOR_EMAIL": "k@x",
        "GIT_COMMITTER_NAME": "k",
        "GIT_COMMITTER_EMAIL": "k@x",
    }
    for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env={**os.environ, **env})
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(repo)
    spec, w = _setup(tmp_path)
    (repo / "untracked.txt").write_text("x")
    _build(spec, w, tmp_path / "a", "--git")
    m = json.loads(_ok(["artifact", "inspect", str(tmp_path / "a"), "--json"]))["manifest"]
    assert m["code"] == {"commit": head, "dirty": True}
