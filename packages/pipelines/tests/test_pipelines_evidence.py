"""The evidence pack against its oracles: every fact in the JSON is compared with the record
it names — the registry (version, digest, signer, audit log), the approvals ledger's file,
the model card, the training run in MLflow and the pipelines provenance chain. No Ray: the
artifact is built directly and its training run is an MLflow run with keel.trainer's tags
(the reproduce tests check the pack on a real trainer run)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipelines_testkit import LocalExecutors, StepClock, write_dataset

from keel.pipelines import CanaryPolicy, Controller, RunStatus, StepContext, Trigger, TriggerPolicy
from keel.pipelines.evidence import (
    PACK_SCHEMA,
    PACK_TAG,
    build_pack,
    pack_digest,
    record_pack,
    render_pack_html,
    write_pack,
)

MODEL = "credit"
AT = datetime(2026, 4, 2, 9, 30, tzinfo=UTC)


@dataclass
class World:
    home: Path
    registry: Any
    trust: Any
    digest: str
    version: int
    other_digest: str
    run_id: str
    ledger: Any
    card: dict[str, Any]
    key: Any


def _artifact(root: Path, key: Any, seed: int) -> Path:
    from keel.artifacts import (
        Architecture,
        ArtifactSpec,
        CodeVersion,
        FieldSpec,
        build_artifact,
    )

    rng = np.random.default_rng(seed)
    spec = ArtifactSpec(
        name=MODEL,
        architecture=Architecture(builder="mlp", args={"n_in": 3, "hidden": [4], "n_out": 1}),
        input_schema=[FieldSpec(name=c, dtype="float64") for c in ("a", "b", "c")],
        output_schema=[FieldSpec(name="y", dtype="float32")],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="c" * 40, dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
        metrics={"val_loss": 0.25 + seed / 4, "mae": 0.4},
    )
    weights = {
        "net.0.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "net.0.bias": np.zeros(4, np.float32),
        "net.2.weight": rng.normal(size=(1, 4)).astype(np.float32),
        "net.2.bias": np.zeros(1, np.float32),
    }
    return build_artifact(
        root / f"art{seed}", spec, weights, signing_key=key, archive=root / f"art{seed}.tar"
    ).archive  # type: ignore[return-value]


def _trainer_run(client: Any, digest: str) -> str:
    """An MLflow run with the params and tags keel.trainer logs."""
    exp = client.create_experiment("keel-trainer")
    run = client.create_run(exp, run_name=MODEL)
    rid = run.info.run_id
    for k, v in {"seed": "7", "train.optimizer.lr": "0.01", "train.epochs": "3"}.items():
        client.log_param(rid, k, v)
    tags = {
        "keel.artifact_digest": digest,
        "keel.data_fingerprint": "sha256:" + "ab" * 32,
        "keel.data_rows": "400",
        "keel.data_path": "/data/train.parquet",
        "keel.code_version": "c" * 40,
        "keel.code_dirty": "false",
        "keel.lock_hash": "sha256:" + "cd" * 32,
        "keel.num_workers": "2",
        "keel.job_digest": "sha256:" + "ef" * 32,
    }
    for k, v in tags.items():
        client.set_tag(rid, k, v)
    client.log_metric(rid, "val_loss", 0.3, timestamp=0, step=0)
    client.log_metric(rid, "val_loss", 0.26, timestamp=0, step=1)
    return str(run.info.run_id)


def _card(manifest: Mapping[str, Any], digest: str, approvals: Any) -> dict[str, Any]:
    from keel.governance import Level, RiskFactors, Use, build_card, fairness_report

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    score = np.clip(0.5 * y + 0.5 * rng.random(300), 0, 1)
    sex = np.where(rng.random(300) < 0.5, "f", "m")
    return build_card(
        manifest,
        digest=digest,
        owner="credit-risk team",
        intended_use="pre-screening of credit applications",
        risk=RiskFactors(Level.HIGH, Level.MEDIUM, Use.DECISION_SUPPORT),
        generated_at=AT,
        fairness=fairness_report(y, score, {"sex": sex}),
        approvals=approvals,
        limitations=["not validated for business loans"],
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from keel.artifacts import SigningKey, TrustPolicy, generate_keypair, read_manifest
    from keel.governance import ApprovalLedger
    from keel.registry_client import Decision, open_registry

    priv, pub = generate_keypair()
    key, trust = SigningKey.from_pem(priv), TrustPolicy((pub,))
    home = tmp_path / "home"
    reg = open_registry(home)
    a1, a2 = _artifact(tmp_path, key, 1), _artifact(tmp_path, key, 2)
    v1 = reg.register(a1, trust=trust)
    v2 = reg.register(a2, trust=trust, parent_version=v1.version)
    reg.promote(MODEL, "champion", v1.version, Decision("ana", "first model", "sha256:" + "1" * 64))
    reg.promote(MODEL, "champion", v2.version, Decision("bo", "beats v1", "sha256:" + "2" * 64))
    reg.promote(MODEL, "shadow", v1.version, Decision("bo", "keep watching", "sha256:" + "3" * 64))
    run_id = _trainer_run(reg.mlflow_client, v2.digest)
    ticks = iter(AT + timedelta(minutes=i) for i in range(100))
    ledger = ApprovalLedger(tmp_path / "approvals.jsonl", clock=lambda: next(ticks))
    for digest, approver, role, evidence in (
        (v2.digest, "vera", "validator", "4"),
        (v1.digest, "vera", "validator", "5"),
        (v2.digest, "rob", "risk_officer", "6"),
    ):
        ledger.record(
            model=MODEL,
            artifact_digest=digest,
            approver=approver,
            role=role,
            decision="approve",
            evidence_digest="sha256:" + evidence * 64,
        )
    manifest = json.loads(read_manifest(a2)[0].to_bytes())
    card = _card(manifest, v2.digest, ledger.approvals_for(MODEL, v2.digest))
    yield World(home, reg, trust, v2.digest, v2.version, v1.digest, run_id, ledger, card, key)
    reg.close()


def test_pack_facts_match_their_records(world: World, tmp_path: Path) -> None:
    reg = world.registry
    pack = build_pack(
        reg,
        MODEL,
        "champion",
        generated_at=AT,
        ledger=world.ledger,
        card=world.card,
        trust=world.trust,
        provenance_db=tmp_path / "none.db",
    )
    assert pack["schema"] == PACK_SCHEMA and pack["generated_at"] == "2026-04-02T09:30:00Z"
    mv = reg.get_by_alias(MODEL, "champion")
    m = pack["model"]
    assert (m["version"], m["digest"]) == (mv.version, mv.digest) == (world.version, world.digest)
    assert m["signer"] == mv.tags["keel.signer"] and m["signed"]
    assert m["aliases"] == sorted(mv.aliases) == ["champion"]
    assert m["parent_version"] == mv.tags["keel.parent_version"] == "1"
    # the audit log: exactly the moves that touched this version, with their hashes
    oracle = [e for e in reg.audit(MODEL) if world.version in (e.to_version, e.from_version)]
    assert [
        (h["seq"], h["hash"], h["who"], h["evidence_digest"]) for h in pack["alias_history"]
    ] == [(e.seq, e.hash, e.decision.who, e.decision.evidence_digest) for e in oracle]
    assert [h["to_version"] for h in pack["alias_history"]] == [2]
    assert pack["registry_audit"]["ok"] and pack["registry_audit"]["entries"] == 3
    # approvals: the ledger file's entries for this digest only, with seq and hash
    lines = [json.loads(x) for x in (tmp_path / "approvals.jsonl").read_text().splitlines()]
    mine = [x for x in lines if x["record"]["artifact_digest"] == world.digest]
    assert [(a["approver"], a["role"], a["source"]["hash"]) for a in pack["approvals"]] == [
        (x["record"]["approver"], x["record"]["role"], x["hash"]) for x in mine
    ]
    assert [a["source"]["id"].rsplit("#", 1)[1] for a in pack["approvals"]] == [
        str(x["seq"]) for x in mine
    ]
    assert pack["approvals_ledger"]["ok"] and pack["approvals_ledger"]["entries"] == 3
    # the card: tier, owner, fairness as the card has them
    gov = pack["governance"]
    assert gov["risk"]["tier"] == world.card["risk"]["tier"]
    assert gov["owner"] == "credit-risk team"
    assert gov["fairness"] == world.card["fairness"]
    assert "not validated for business loans" in pack["limitations"]
    # the training run, as MLflow stores it
    run = reg.mlflow_client.get_run(world.run_id)
    t = pack["training"]
    assert t["run_id"] == world.run_id and t["params"] == dict(run.data.params)
    assert t["final_metrics"] == dict(run.data.metrics) == {"val_loss": 0.26}
    assert (t["num_workers"], t["seed"]) == (2, 7)
    assert pack["data"]["rows"] == 400
    assert pack["data"]["fingerprint"] == mv.tags["keel.data_fingerprint"]
    assert pack["code"]["lock_hash"] == mv.tags["keel.lock_hash"]
    assert pack["performance"]["overall"] == {"mae": 0.4, "val_loss": 0.75}
    # what is not there is said, not an error
    missing = {a["section"] for a in pack["absent"]}
    assert {"provenance", "reproduce", "confidence intervals"} <= missing
    assert pack["provenance"] is None and pack["reproduce"] is None


def test_written_pack_digest_and_html(world: World, tmp_path: Path) -> None:
    pack = build_pack(
        world.registry,
        MODEL,
        str(world.version),
        generated_at=AT,
        ledger=world.ledger,
        card=world.card,
    )
    j, h, digest = write_pack(pack, tmp_path / "out")
    assert json.loads(j.read_text()) == pack and digest == pack_digest(pack)
    page = h.read_text()
    assert page == render_pack_html(pack, digest)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for fact in (world.digest, world.run_id, "vera", "rob", "risk_officer", digest):
        assert fact in page
    record_pack(world.registry, MODEL, world.version, digest)
    assert world.registry.get_version(MODEL, world.version).tags[PACK_TAG] == digest
    # the same records give the same pack: the digest is a function of them
    again = build_pack(
        world.registry,
        MODEL,
        str(world.version),
        generated_at=AT,
        ledger=world.ledger,
        card=world.card,
    )
    assert pack_digest(again) == digest


def test_a_tampered_ledger_gives_no_approvals(world: World, tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    text = path.read_text().replace('"approver":"rob"', '"approver":"eve"')
    assert text != path.read_text()
    path.write_text(text)
    pack = build_pack(world.registry, MODEL, "champion", generated_at=AT, ledger=world.ledger)
    assert pack["approvals"] == [] and not pack["approvals_ledger"]["ok"]
    assert pack["approvals_ledger"]["problems"]


class _SignedAs(LocalExecutors):
    """The test executors, packaging to a given (registered) digest."""

    def __init__(self, digest: str, *args: Any) -> None:
        super().__init__(*args)
        self.digest = digest

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        super().package_sign(ctx)
        return {"artifact_digest": self.digest}


def test_provenance_from_a_pipelines_run(world: World, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    write_dataset(data, seed=1)
    db = tmp_path / "pipelines.db"
    ctl = Controller(
        _SignedAs(world.digest, tmp_path / "effects.db", tmp_path / "work"),
        clock=StepClock(AT),
        db_path=db,
        canary_policy=CanaryPolicy(window=timedelta(0)),
        trigger_policy=TriggerPolicy(cooldown=timedelta(0)),
        code_version="c" * 40,
        lock_hash="sha256:" + "cd" * 32,
    )
    run_id = ctl.submit(
        Trigger.manual(MODEL, "r1", at=AT, who="ana"), {"data_path": str(data)}
    ).run_id
    assert run_id and ctl.advance(run_id).status is RunStatus.PROMOTED
    oracle = ctl.lineage(MODEL, world.digest)
    report = ctl.verify_provenance()
    ctl.close()
    pack = build_pack(world.registry, MODEL, "champion", generated_at=AT, provenance_db=db)
    prov = pack["provenance"]
    assert prov["present"] and prov["source"]["id"] == run_id
    assert prov["lineage"] == oracle.to_dict()
    assert prov["verify"] == {
        "ok": True,
        "entries": report.entries,
        "head": list(report.head or ()),
        "problems": [],
    }
    assert prov["gates"] == dict(oracle.gates) and prov["trigger"] == dict(oracle.trigger)
    assert "provenance" not in {a["section"] for a in pack["absent"]}
    # the older version was not produced by that run: absent, and said so
    older = build_pack(world.registry, MODEL, "1", generated_at=AT, provenance_db=db)
    assert older["provenance"]["present"] is False
    assert any(a["section"] == "provenance" for a in older["absent"])


def test_unknown_alias_is_not_found(world: World) -> None:
    from keel.pipelines import NotFoundError

    with pytest.raises(NotFoundError, match="nope"):
        build_pack(world.registry, MODEL, "nope", generated_at=AT)


@pytest.mark.parametrize("module", ["keel.pipelines.evidence", "keel.pipelines.reproduce"])
def test_import_stays_light(module: str) -> None:
    from testutil.imports import loaded_from, modules_loaded_by

    loaded = modules_loaded_by(module)
    assert module in loaded
    assert not loaded_from(loaded, ("torch", "ray", "mlflow", "pandas", "polars"))


def test_reproduce_without_a_recorded_job_spec(world: World, tmp_path: Path) -> None:
    """A training run without keel.job_spec (an older trainer) is refused unless a job is
    given; with one, the walk goes on (here: to the data, which is gone). No Ray needed."""
    from keel.pipelines.reproduce import reproduce
    from keel.trainer import parse_job

    kw: dict[str, Any] = {"signing_key": world.key, "trust": world.trust, "repo": tmp_path}
    v = reproduce(world.registry, MODEL, "champion", work_dir=tmp_path / "w1", **kw)
    assert (v.status, v.link, v.training_run) == ("refused", "job spec", world.run_id)
    assert "--job" in v.message and not v.checks
    job = parse_job(
        {
            "name": MODEL,
            "model": {"builder": "mlp", "args": {"n_in": 3, "hidden": [4], "n_out": 1}},
            "data": {"path": "/data/train.parquet", "features": ["a", "b", "c"], "target": "y"},
        }
    )
    v = reproduce(world.registry, MODEL, "champion", work_dir=tmp_path / "w2", job=job, **kw)
    assert (v.status, v.link) == ("refused", "data fingerprint")
    assert "/data/train.parquet does not exist" in v.message
    assert (tmp_path / "w2" / "verdict.json").is_file()
