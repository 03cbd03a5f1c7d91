"""`keel reproduce` and `keel governance pack` wiring on a real embedded registry (no Ray:
the reproduction end to end is tested in packages/pipelines/tests/test_pipelines_reproduce.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from keel_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from keel.artifacts import (
        Architecture,
        ArtifactSpec,
        CodeVersion,
        FieldSpec,
        SigningKey,
        TrustPolicy,
        build_artifact,
        generate_keypair,
    )
    from keel.registry_client import Decision, open_registry

    home = tmp_path_factory.mktemp("keel-home")
    priv, pub = generate_keypair()
    (home / "k.pem").write_bytes(priv)
    (home / "k.pub").write_bytes(pub)
    spec = ArtifactSpec(
        name="fraud",
        architecture=Architecture(builder="mlp", args={"n_in": 2, "hidden": [2], "n_out": 1}),
        input_schema=[FieldSpec(name="a", dtype="float64"), FieldSpec(name="b", dtype="float64")],
        output_schema=[FieldSpec(name="y", dtype="float32")],
        metrics={"auc": 0.75},
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="c" * 40, dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
    )
    weights = {"w": np.ones((2, 2), np.float32)}
    build_artifact(
        home / "a", spec, weights, signing_key=SigningKey.from_pem(priv), archive=home / "a.tar"
    )
    with open_registry(home) as reg:
        v = reg.register(home / "a.tar", trust=TrustPolicy((pub,)))
        reg.promote("fraud", "champion", v.version, Decision("ana", "first", "sha256:" + "1" * 64))
    return home


def _keys(home: Path) -> list[str]:
    return ["--signing-key", str(home / "k.pem"), "--trust", str(home / "k.pub")]


def test_reproduce_without_a_training_record_is_refused_in_one_line(home: Path) -> None:
    r = runner.invoke(app, ["reproduce", "fraud@champion", "--home", str(home), *_keys(home)])
    assert r.exit_code == 2, r.output
    assert "refused: training run unavailable" in r.output
    assert "no keel.trainer MLflow run records" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app, ["reproduce", "fraud@champion", "--home", str(home), "--json", *_keys(home)]
    )
    verdict = json.loads(r.stdout)
    assert (verdict["status"], verdict["link"], verdict["version"]) == (
        "refused",
        "training run",
        1,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fraud"], "write MODEL@ALIAS"),
        (["fraud@nope"], "nope"),
        (["fraud@champion", "--signing-key", "/no/such.pem"], "cannot read signing key"),
    ],
)
def test_reproduce_bad_input(home: Path, args: list[str], message: str) -> None:
    extra = [] if "--signing-key" in args else _keys(home)
    r = runner.invoke(app, ["reproduce", *args, "--home", str(home), *extra])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_governance_pack_writes_json_html_and_tags_the_version(home: Path, tmp_path: Path) -> None:
    from keel.registry_client import open_registry

    r = runner.invoke(
        app,
        [
            "governance",
            "pack",
            "fraud@champion",
            "--home",
            str(home),
            "--out",
            str(tmp_path),
            "--trust",
            str(home / "k.pub"),
        ],
    )
    assert r.exit_code == 0, r.output
    raw = (tmp_path / "evidence.json").read_bytes()
    pack = json.loads(raw)
    digest = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(pack, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    )
    assert f"pack digest: {digest}" in " ".join(r.output.split())
    with open_registry(home) as reg:
        mv = reg.get_by_alias("fraud", "champion")
        assert pack["model"]["digest"] == mv.digest
        assert reg.get_version("fraud", mv.version).tags["keel.evidence_pack"] == digest
    assert pack["performance"]["overall"] == {"auc": 0.75}
    assert (tmp_path / "evidence.html").read_text().startswith("<!doctype html>")
    absent = {a["section"] for a in pack["absent"]}
    assert {"training", "model card", "provenance"} <= absent
    # the last reproduce verdict is the version's tag (the refusal above, when it ran first)
    tag = mv.tags.get("keel.reproduce")
    if tag is None:
        assert "reproduce" in absent and pack["reproduce"] is None
    else:
        assert {k: v for k, v in pack["reproduce"].items() if k != "source"} == json.loads(tag)


def test_governance_pack_verify(home: Path, tmp_path: Path) -> None:
    """`--verify`: a pack is the recorded one when its digest is the version's tag and an
    audit-log decision's evidence; a pack nobody promoted on is exit 1, naming why."""
    from keel.registry_client import Decision, open_registry

    out = tmp_path / "pack"
    args = ["governance", "pack", "fraud@1", "--home", str(home)]
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--verify", str(out)])
    assert r.exit_code == 1 and "no audit-log decision" in " ".join(r.output.split())
    body = json.loads((out / "evidence.json").read_text())
    digest = (
        "sha256:"
        + hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    )
    with open_registry(home) as reg:
        reg.promote("fraud", "shadow", 1, Decision("ana", "watch it", digest))
    r = runner.invoke(app, [*args, "--verify", str(out / "evidence.json")])
    assert r.exit_code == 0, r.output
    assert digest in " ".join(r.output.split())
    r = runner.invoke(
        app, ["governance", "pack", "other@1", "--home", str(home), "--verify", str(out)]
    )
    assert r.exit_code == 1 and "not other@1" in " ".join(r.output.split())


def test_reproduce_finds_the_pipelines_the_demo_recorded_under_the_home(tmp_path: Path) -> None:
    """No --pipelines-options: the options the pipelines recorded under KEEL_HOME/demo/loop
    (`keel demo`) name the model, and that home's keys are the defaults (here absent: the
    refusal names the key it looked for); another model is not taken for it."""
    from keel.pipelines.reproduce import read_options, record_options

    loop = tmp_path / "demo" / "loop"
    options = {"model": "fraud-demo", "feature_definitions": "d", "features": ["f"]}
    assert record_options(loop, options) == loop / "pipelines" / "options.json"
    assert read_options(loop) == options and read_options(tmp_path) is None
    env = {"KEEL_SIGNING_KEY": "", "KEEL_TRUSTED_KEYS": ""}
    args = ["reproduce", "fraud-demo@champion", "--home", str(tmp_path)]
    r = runner.invoke(app, args, env=env)
    assert r.exit_code == 2, r.output
    assert f"trained by the pipelines in {loop}" in " ".join(r.stderr.split())
    assert f"cannot read signing key {loop / 'keys' / 'pipelines.pem'}" in " ".join(
        r.stderr.split()
    )
    other = runner.invoke(app, ["reproduce", "credit@champion", "--home", str(tmp_path)], env=env)
    assert other.exit_code == 2 and "give --signing-key" in other.output
    assert "trained by the pipelines" not in other.output
