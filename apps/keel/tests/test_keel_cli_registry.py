"""`keel registry ...` against a real embedded registry (MLflow on SQLite) in a temp KEEL_HOME."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from keel_cli.main import app
from typer.testing import CliRunner

from keel.registry_client import RegistrableArtifact, open_registry

runner = CliRunner()
WHO = ["--who", "alice@bank", "--why", "gates passed", "--evidence", "sha256:" + "1" * 64]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("keel-home")
    with open_registry(home) as reg:
        for i in range(3):
            manifest = home / f"manifest{i}.json"
            manifest.write_text(json.dumps({"i": i}))
            archive = home / f"model{i}.keel"
            archive.write_bytes(b"weights" * (i + 1))
            reg.register(
                RegistrableArtifact(
                    name="fraud",
                    digest=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                    archive=archive,
                    manifest=manifest,
                    data_fingerprint=f"fp{i}",
                    code_version="git:abc",
                    lock_hash="lock",
                    feature_views={"txn": "1"},
                    parent_version=i or None,
                )
            )
    return home


def _run(home: Path, *args: str) -> str:
    result = runner.invoke(app, ["registry", *args, "--home", str(home)])
    assert result.exit_code == 0, result.output
    return result.output


def test_promote_show_rollback_audit_verify(home: Path) -> None:
    assert "fraud" in _run(home, "list")
    assert "1 -> 2" not in _run(home, "promote", "fraud", "champion", "1", *WHO)
    assert "1 -> 3" in _run(home, "promote", "fraud", "champion", "3", *WHO)
    shown = json.loads(_run(home, "show", "fraud", "--alias", "champion"))
    assert shown["version"] == 3 and shown["aliases"] == ["champion"]
    assert shown["tags"]["keel.parent_version"] == "2"
    assert "3 -> 1 (rollback" in _run(home, "rollback", "fraud", "champion", *WHO)
    table = _run(home, "show", "fraud")
    assert "champion" in table and "fp2" in table
    lines = [json.loads(x) for x in _run(home, "audit", "fraud").splitlines()]
    assert [(e["action"], e["to_version"]) for e in lines] == [
        ("promote", 1),
        ("promote", 3),
        ("rollback", 1),
    ]
    assert lines[0]["decision"]["who"] == "alice@bank"
    assert "audit log ok: 3 entries" in _run(home, "audit", "--verify")

    with sqlite3.connect(home / "mlflow.db") as conn:
        conn.execute("DELETE FROM keel_registry_audit WHERE seq = 2")
    result = runner.invoke(app, ["registry", "audit", "--verify", "--home", str(home)])
    assert result.exit_code == 1
    assert "FAILED verification" in result.output


def test_a_move_without_a_decision_record_is_refused(home: Path) -> None:
    result = runner.invoke(
        app, ["registry", "promote", "fraud", "shadow", "2", "--home", str(home)]
    )
    assert result.exit_code == 2  # --who/--why/--evidence are required
    assert "--who" in result.output


def test_register_verifies_a_signed_archive_then_registers_it_once(tmp_path: Path) -> None:
    import numpy as np

    from keel.artifacts import (
        Architecture,
        ArtifactSpec,
        CodeVersion,
        FieldSpec,
        SigningKey,
        build_artifact,
        generate_keypair,
    )
    from keel.registry_client import UnverifiedArtifactError

    priv, pub = generate_keypair()
    (tmp_path / "keel.pub").write_bytes(pub)
    spec = ArtifactSpec(
        name="scorer",
        architecture=Architecture(builder="linear"),
        input_schema=[FieldSpec(name="x", dtype="float64")],
        output_schema=[FieldSpec(name="y", dtype="float64")],
        training_data_fingerprint="fp",
        code=CodeVersion(commit="abc", dirty=False),
        dependency_lock_hash="lock",
    )
    weights = {"w": np.ones(2, dtype=np.float32)}
    signed = build_artifact(
        tmp_path / "a", spec, weights, signing_key=SigningKey.from_pem(priv),
        archive=tmp_path / "a.tar",
    )  # fmt: skip
    build_artifact(tmp_path / "u", spec, weights, archive=tmp_path / "u.tar")
    home, key = tmp_path / "home", str(tmp_path / "keel.pub")
    out = _run(home, "register", str(tmp_path / "a.tar"), "--trust", key)
    assert f"scorer version 1 {signed.digest}" in out
    assert "scorer version 1" in _run(home, "register", str(tmp_path / "a"), "--trust", key)
    refused = runner.invoke(
        app, ["registry", "register", str(tmp_path / "u.tar"), "-t", key, "--home", str(home)]
    )
    assert isinstance(refused.exception, UnverifiedArtifactError)
    shown = json.loads(_run(home, "show", "scorer", "--version", "1"))
    assert shown["digest"] == signed.digest and shown["tags"]["keel.code_version"] == "git:abc"


def _fresh_home(root: Path) -> Path:
    with open_registry(root) as reg:
        for i in range(2):
            manifest = root / f"manifest{i}.json"
            manifest.write_text(json.dumps({"bus": i}))
            archive = root / f"model{i}.keel"
            archive.write_bytes(b"w" * (i + 1))
            reg.register(
                RegistrableArtifact(
                    name="churn",
                    digest=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                    archive=archive,
                    manifest=manifest,
                    data_fingerprint=f"fp{i}",
                    code_version="git:abc",
                    lock_hash="lock",
                )
            )
    return root


def test_alias_moves_publish_model_alias_moved_once_on_the_configured_bus(
    tmp_path: Path,
) -> None:
    from keel.events import open_bus

    home = _fresh_home(tmp_path / "home")
    bus_url = f"sqlite://{tmp_path / 'bus' / 'events.db'}"
    (tmp_path / "bus").mkdir()
    bus_args = ["--bus-url", bus_url]

    # no bus configured: the move happens, nothing is published anywhere
    _run(home, "promote", "churn", "challenger", "1", *WHO)
    assert not (tmp_path / "bus" / "events.db").exists()

    first = _run(home, "promote", "churn", "champion", "1", *WHO, *bus_args)
    second = _run(home, "promote", "churn", "champion", "2", *WHO, *bus_args)
    again = _run(home, "promote", "churn", "champion", "2", *WHO, *bus_args)  # a re-run
    assert "- -> 1 (audit seq 2)" in first and "1 -> 2 (audit seq 3)" in second
    assert again == second  # same entry reported, nothing appended
    back = _run(
        home, "rollback", "churn", "champion", *WHO, "--events-stream", "registry", *bus_args
    )
    assert "2 -> 1 (rollback, audit seq 4)" in back

    audit = {e.seq: e for e in open_registry(home).audit("churn")}
    assert sorted(audit) == [1, 2, 3, 4]
    with open_bus(bus_url) as bus:
        models = [s.event for s in bus.replay("models")]
        rolled = [s.event for s in bus.replay("registry")]
    assert [e.type for e in models] == ["model.alias_moved"] * 2  # the re-run was deduplicated
    assert [e.key for e in models] == ["churn", "churn"]
    payloads = [e.json() for e in models]
    assert [(p["alias"], p["from_version"], p["to_version"], p["action"]) for p in payloads] == [
        ("champion", None, 1, "promote"),
        ("champion", 1, 2, "promote"),
    ]
    for e, p in zip(models, payloads, strict=True):
        entry = audit[p["audit_seq"]]
        assert e.id == f"model.alias_moved:{entry.hash}" and p["audit_hash"] == entry.hash
        assert p["model"] == "churn"
        assert p["decision"] == {
            "who": "alice@bank",
            "why": "gates passed",
            "evidence_digest": "sha256:" + "1" * 64,
        }
        assert e.event_time.isoformat() == entry.time
    assert [(e.json()["action"], e.json()["to_version"]) for e in rolled] == [("rollback", 1)]


def test_a_bad_bus_url_fails_before_anything_moves(tmp_path: Path) -> None:
    home = _fresh_home(tmp_path / "home")
    result = runner.invoke(
        app,
        [
            "registry",
            "promote",
            "churn",
            "champion",
            "1",
            *WHO,
            "--home",
            str(home),
            "--bus-url",
            "bogus://nowhere",
        ],
    )
    assert result.exit_code != 0
    assert "bogus://" in str(result.exception)
    with open_registry(home) as reg:
        assert reg.aliases("churn") == {} and reg.audit("churn") == []
