"""keel.pipelines.local: the real executors against the real embedded parts — keel.features'
offline store, the SQLite event bus, the embedded (SQLite) MLflow registry, keel.artifacts
signing, keel.governance's approvals ledger and, in the `slow` test, keel.trainer on the
process's one local Ray."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from reproduce_testkit import git_repo

from keel.events import Bus, Event, open_bus
from keel.features import EVENT_LOG_SCHEMA, OfflineStore, event_log_dataset
from keel.pipelines import (
    CACHED,
    CanaryPolicy,
    Controller,
    InvalidInputError,
    RunStatus,
    StepContext,
    Trigger,
    TriggerPolicy,
)
from keel.pipelines.local import (
    SMALL_LOOP_TRAINER,
    LocalExecutors,
    LocalOptions,
    build_executors,
    small_loop_options,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)
MODEL = "credit"
VIEW_DEFS = """
from datetime import timedelta
from keel.features import Aggregation, Entity, EventSource, FeatureView

card_txn = FeatureView(
    name="card_txn",
    source=EventSource("txn.created", stream="txns"),
    entities=(Entity("card"),),
    fields={"amount": "float"},
    features=(
        Aggregation("count", None, timedelta(hours=6)),
        Aggregation("mean", "amount", timedelta(days=1)),
    ),
    id_column="event_id",
)
"""
FEATURES = ["amount_log", "card_txn__count_6h"]


def write_world(
    root: Path, *, days: int = 4, per_day: int = 400, seed: int = 0, start: int = 0
) -> None:
    """An event log and labels under ``root/offline`` as the feature worker and the label
    feed write them: label = more likely for large amounts on busy cards."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    secs = np.sort(rng.uniform(0, days * 86_400, n)) + start * 86_400
    times = [T0 + timedelta(seconds=float(s)) for s in secs]
    cards = [f"c{int(c):03d}" for c in rng.integers(0, 60, n)]
    amount = np.round(rng.lognormal(3.5, 0.8, n), 2)
    ids = [f"e{seed}-{start}-{i}" for i in range(n)]
    write_events(root, ids, cards, times, times, [float(a) for a in amount], f"s{seed}-{start}")
    store = OfflineStore(root / "offline")
    logit = -3.0 + 0.9 * (np.log1p(amount) - 3.5) * 2
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    labels = pl.DataFrame(
        {
            "card": cards,
            "timestamp": times,
            "label": label,
            "amount_log": np.log1p(amount),
            "segment": np.where(rng.random(n) < 0.5, "a", "b"),
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    store.write(f"labels.{MODEL}", labels, time_column="timestamp", name=f"s{seed}-{start}")


def write_events(
    root: Path,
    ids: list[str],
    cards: list[str],
    times: list[datetime],
    published: list[datetime],
    amounts: list[float],
    name: str,
) -> None:
    """``txn.created`` events as the feature worker logs them (``published``: the bus
    publish time, the record time) in the part files named ``name``."""
    log = pl.DataFrame(
        {
            "event_id": ids,
            "type": ["txn.created"] * len(ids),
            "key": cards,
            "event_time": times,
            "publish_time": published,
            "payload": [json.dumps({"amount": a}) for a in amounts],
        },
        schema=EVENT_LOG_SCHEMA,
    )
    OfflineStore(root / "offline").write(
        event_log_dataset("txn.created"), log, time_column="event_time", name=name
    )


def late_event_for_a_label(root: Path, recorded: datetime, name: str = "late") -> None:
    """A correction recorded at ``recorded`` (after the run): one more event on the card of
    a day-2 label, a minute before the label's time — it changes that label's 6-hour count."""
    labels = OfflineStore(root / "offline").read(f"labels.{MODEL}").collect()
    row = labels.filter(pl.col("timestamp") > T0 + timedelta(days=1, hours=7)).row(0, named=True)
    at = row["timestamp"] - timedelta(minutes=1)
    write_events(root, [f"late-{name}"], [row["card"]], [at], [recorded], [99.0], name)


def opts(root: Path, **over: Any) -> dict[str, Any]:
    defs = root / "defs.py"
    defs.write_text(VIEW_DEFS)
    base = small_loop_options(
        model=MODEL,
        feature_definitions=str(defs),
        feature_views=["card_txn"],
        features=FEATURES,
        group_column="segment",
        trainer={"hidden": [8], "epochs": 6, "batch_size": 64, "lr": 0.02, "tracking": False},
        gates={"threshold": 0.5, "max_ece": 0.2, "max_drift_share": 1.0},
    )
    base.update(over)
    return base


def ctx(
    step: str,
    inputs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    key: str = "",
) -> StepContext:
    return StepContext(
        "run-1", MODEL, step, params or {}, "c0ffee", "sha256:lock", inputs or {}, T0, key
    )


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = open_bus(f"sqlite://{tmp_path / 'events.db'}")
    yield b
    b.close()


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"bogus": 1}, "unknown key(s) ['bogus']"),
        ({"trainer": {"epoch": 2}}, "options.trainer: unknown key(s) ['epoch']"),
        ({"gates": {"risk_tier": 4}}, "risk_tier must be 1, 2 or 3"),
        ({"features": []}, "options.features"),
        ({"features": ["a", "a"]}, "lists a name twice"),
        ({"holdout_fraction": 1.5}, "holdout_fraction"),
        ({"trainer": {"epochs": "2"}}, "options.trainer.epochs must be an integer"),
        ({"registry_tracking_uri": "http://x:5000"}, "go together"),
    ],
)
def test_bad_options_are_named(
    tmp_path: Path, bus: Bus, change: dict[str, Any], needle: str
) -> None:
    with pytest.raises(InvalidInputError) as e:
        build_executors(home=tmp_path, bus=bus, options=opts(tmp_path, **change))
    assert needle in str(e.value)


def test_missing_required_option_is_named(tmp_path: Path, bus: Bus) -> None:
    o = opts(tmp_path)
    del o["model"]
    with pytest.raises(InvalidInputError, match="model"):
        build_executors(home=tmp_path, bus=bus, options=o)


def test_options_round_trip_defaults(tmp_path: Path) -> None:
    o = LocalOptions.parse(opts(tmp_path))
    assert o.trainer.hidden == (8,) and o.trainer.epochs == 6 and o.gates.risk_tier == 3
    assert o.features == tuple(FEATURES) and o.events_stream == "models"
    # what the test did not override comes from the small-loop defaults
    assert o.trainer.num_workers == SMALL_LOOP_TRAINER["num_workers"] == 1
    assert o.trainer.ray_num_cpus == SMALL_LOOP_TRAINER["ray_num_cpus"]
    assert o.trainer.checkpoint_every_steps == SMALL_LOOP_TRAINER["checkpoint_every_steps"]
    assert o.training_set_engine == "local" and o.training_set_partitions is None
    plain = LocalOptions.parse(
        small_loop_options(model="m", feature_definitions="d", feature_views=["v"], features=["f"])
    )
    assert plain.trainer.hidden == (16,) and plain.trainer.epochs == 4
    assert plain.gates.threshold == 0.6  # GateOptions' own default


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"training_set_engine": "spark"}, "training_set_engine must be one of ['local', 'ray']"),
        ({"training_set_partitions": 0}, "training_set_partitions must be >= 1"),
    ],
)
def test_bad_engine_options_are_named(
    tmp_path: Path, bus: Bus, change: dict[str, Any], needle: str
) -> None:
    with pytest.raises(InvalidInputError) as e:
        build_executors(home=tmp_path, bus=bus, options=opts(tmp_path, **change))
    assert needle in str(e.value)


def test_step_settings_name_what_a_result_depends_on_not_where_it_runs(
    tmp_path: Path, bus: Bus
) -> None:
    def settings(**over: Any) -> dict[str, Any]:
        ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path, **over))
        assert isinstance(ex, LocalExecutors)
        return {s: ex.step_settings(s) for s in CACHED}

    base = settings()
    trainer = dict(opts(tmp_path)["trainer"])
    # where it runs: the same keys
    assert settings(trainer={**trainer, "ray_num_cpus": 1, "tracking": True}) == base
    assert settings(training_set_engine="ray", training_set_partitions=3) == base
    # what it computes: a different key from that step on
    epochs = settings(trainer={**trainer, "epochs": 7})
    assert epochs["build_training_set"] == base["build_training_set"]
    assert epochs["train"] != base["train"]
    holdout = settings(holdout_fraction=0.3)
    assert holdout["build_training_set"] != base["build_training_set"]
    assert settings(owner="risk")["package_sign"] != base["package_sign"]


# -- data steps ---------------------------------------------------------------------------------
def test_training_set_is_point_in_time_and_fingerprinted_by_content(
    tmp_path: Path, bus: Bus
) -> None:
    write_world(tmp_path)
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    src = dict(ex.source_fingerprints(ctx("build_training_set")))
    assert set(src) == {"events.txn.created", f"labels.{MODEL}"}
    out = ex.build_training_set(ctx("build_training_set"))
    path = Path(out["path"])
    raw = (path / "set.parquet").read_bytes()
    assert out["fingerprint"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert out["train_rows"] + out["holdout_rows"] == out["rows"] == 1600
    train = pl.read_parquet(path / "train.parquet")
    hold = pl.read_parquet(path / "holdout.parquet")
    latest_train, first_holdout = train["timestamp"].max(), hold["timestamp"].min()
    assert isinstance(latest_train, datetime) and isinstance(first_holdout, datetime)
    assert latest_train < first_holdout  # the holdout is the latest slice
    # point in time: a label's 6-hour count covers only events at or before its own time
    log = OfflineStore(tmp_path / "offline").read("events.txn.created").collect()
    row = hold.row(0, named=True)
    t = row["timestamp"]
    naive = log.filter(
        (pl.col("key") == row["card"])
        & (pl.col("event_time") <= t)
        & (pl.col("event_time") > t - timedelta(hours=6))
    ).height
    assert row["card_txn__count_6h"] == naive
    # the same data gives the same bytes in another build; new data is a new fingerprint
    again = ex.build_training_set(ctx("build_training_set"))
    assert again["fingerprint"] == out["fingerprint"]
    write_world(tmp_path, days=1, seed=1, start=4)
    assert dict(ex.source_fingerprints(ctx("build_training_set"))) != src
    assert ex.build_training_set(ctx("build_training_set"))["fingerprint"] != out["fingerprint"]


def test_the_set_records_its_as_of_and_a_build_as_of_it_leaves_later_records_out(
    tmp_path: Path, bus: Bus
) -> None:
    """``as_of``: the latest record time the set read (the event log's bus publish time). A
    correction recorded later changes the sources (the cache key) and a fresh build; a
    build given the recorded ``as_of`` leaves it out and gives the recorded bytes again."""
    write_world(tmp_path, days=2, per_day=150)
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    c = ctx("build_training_set")
    first, src = dict(ex.build_training_set(c)), dict(ex.source_fingerprints(c))
    log = OfflineStore(tmp_path / "offline").read("events.txn.created").collect()
    latest = log["publish_time"].max()
    assert isinstance(latest, datetime) and first["as_of"] == latest.isoformat()
    assert latest < T0 + timedelta(days=2)

    late_event_for_a_label(tmp_path, recorded=T0 + timedelta(days=30))
    assert dict(ex.source_fingerprints(c)) != src  # the cache key sees the correction
    now = dict(ex.build_training_set(c))
    assert now["fingerprint"] != first["fingerprint"]  # and a new run trains on it
    assert now["as_of"] == (T0 + timedelta(days=30)).isoformat()
    as_of = ctx("build_training_set", params={"as_of": first["as_of"]})
    again = dict(ex.build_training_set(as_of))
    assert (again["fingerprint"], again["as_of"]) == (first["fingerprint"], first["as_of"])
    with pytest.raises(InvalidInputError, match="as_of.*needs a time zone"):
        ex.build_training_set(ctx("build_training_set", params={"as_of": "2026-03-02T00:00"}))


def test_labels_with_a_record_time_column_are_left_out_as_of_too(tmp_path: Path, bus: Bus) -> None:
    """``label_record_time``: a relabelled row recorded after the run is in a fresh build
    and out of one as of the recorded instant. Without the option the build settings (the
    cache key) are what they were."""
    import shutil

    write_world(tmp_path, days=2, per_day=150)
    store = OfflineStore(tmp_path / "offline")
    labels = store.read(f"labels.{MODEL}").collect()
    shutil.rmtree(tmp_path / "offline" / f"labels.{MODEL}")
    labels = labels.with_columns(pl.col("timestamp").alias("recorded_at"))
    store.write(f"labels.{MODEL}", labels, time_column="timestamp", name="labels")
    plain = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    ex = build_executors(
        home=tmp_path, bus=bus, options=opts(tmp_path, label_record_time="recorded_at")
    )
    assert isinstance(plain, LocalExecutors) and isinstance(ex, LocalExecutors)
    settings = ex.step_settings("build_training_set")
    assert settings is not None and settings["label_record_time"] == "recorded_at"
    assert "label_record_time" not in (plain.step_settings("build_training_set") or {})
    c = ctx("build_training_set")
    first = dict(ex.build_training_set(c))
    relabelled = labels.tail(1).with_columns(
        (1 - pl.col("label")).cast(pl.Int8).alias("label"),
        pl.lit(T0 + timedelta(days=30)).cast(pl.Datetime("us", "UTC")).alias("recorded_at"),
    )
    store.write(f"labels.{MODEL}", relabelled, time_column="timestamp", name="relabel")
    now = dict(ex.build_training_set(c))
    assert (
        now["rows"] == first["rows"] + 1 and now["as_of"] == (T0 + timedelta(days=30)).isoformat()
    )
    again = dict(ex.build_training_set(ctx("build_training_set", params={"as_of": first["as_of"]})))
    assert again["fingerprint"] == first["fingerprint"]
    bad = build_executors(
        home=tmp_path, bus=bus, options=opts(tmp_path, label_record_time="segment")
    )
    with pytest.raises(InvalidInputError, match="time-zone aware datetime column"):
        bad.build_training_set(c)


def test_missing_data_and_bad_columns_are_clear(tmp_path: Path, bus: Bus) -> None:
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    with pytest.raises(InvalidInputError, match="has no Parquet files"):
        ex.source_fingerprints(ctx("build_training_set"))
    write_world(tmp_path, days=1)
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path, features=["nope"]))
    with pytest.raises(InvalidInputError, match=r"options.features \['nope'\]"):
        ex.build_training_set(ctx("build_training_set"))


# -- side effects on the real registry and bus (a small signed artifact, no training) -------------
def _artifact(ex: LocalExecutors, tmp: Path, seed: int) -> tuple[str, Path]:
    import torch

    from keel.artifacts import (
        Architecture,
        ArtifactSpec,
        CodeVersion,
        FieldSpec,
        build_artifact,
        build_mlp,
    )

    torch.manual_seed(seed)
    model = build_mlp(n_in=2, hidden=[4], n_out=1, out_activation="sigmoid")
    spec = ArtifactSpec(
        name=MODEL,
        architecture=Architecture(
            builder="mlp", args={"n_in": 2, "hidden": [4], "n_out": 1, "out_activation": "sigmoid"}
        ),
        input_schema=[FieldSpec(name=f, dtype="float64") for f in FEATURES],
        output_schema=[FieldSpec(name="score", dtype="float32")],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="c0ffee", dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
    )
    b = build_artifact(
        tmp / f"a{seed}",
        spec,
        model.state_dict(),
        signing_key=ex.signing()[0],
        archive=tmp / f"a{seed}.tar",
    )
    assert b.archive is not None
    return b.digest, b.archive


def _alias_events(bus: Bus, stream: str = "models") -> list[dict[str, Any]]:
    return [s.event.json() for s in bus.replay(stream) if s.event.type == "model.alias_moved"]


def test_register_and_alias_moves_are_idempotent_and_published(tmp_path: Path, bus: Bus) -> None:
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    assert isinstance(ex, LocalExecutors)
    d1, a1 = _artifact(ex, tmp_path, 1)
    c = ctx(
        "register_challenger",
        {"package_sign": {"artifact_digest": d1, "archive": str(a1)}},
        key="k1",
    )
    first = ex.register_challenger(c)
    assert ex.register_challenger(c) == first  # a repeat after a crash: same version, no new move
    assert first["version"] == "1" and first["artifact_digest"] == d1
    for alias in ("shadow", "canary", "champion"):
        m = ex.move_alias(ctx(alias, c.inputs, key=f"k-{alias}"), alias, "1")
        assert ex.move_alias(ctx(alias, c.inputs, key=f"k-{alias}"), alias, "1") == m
    assert ex.registry.aliases(MODEL) == {"challenger": 1, "shadow": 1, "canary": 1, "champion": 1}
    # the move to champion carries its evidence pack: written, its digest in the audit log's
    # decision for that move and in the version's tag, checked by verify_pack
    from keel.pipelines.evidence import PACK_TAG, pack_digest, verify_pack

    assert "evidence_digest" not in ex.move_alias(
        ctx("shadow", c.inputs, key="k-shadow"), "shadow", "1"
    )
    pack_file = Path(m["evidence_pack"])
    assert pack_file.is_file() and Path(m["evidence_html"]).is_file()
    assert pack_file.is_relative_to(tmp_path / "evidence" / MODEL / "v1")
    body = json.loads(pack_file.read_text())
    assert m["evidence_digest"] == pack_digest(body) and body["model"]["digest"] == d1
    (move,) = (e for e in ex.registry.audit(MODEL) if e.alias == "champion")
    assert move.seq == m["audit_seq"] and move.decision.evidence_digest == m["evidence_digest"]
    assert ex.registry.get_version(MODEL, 1).tags[PACK_TAG] == m["evidence_digest"]
    check = verify_pack(ex.registry, pack_file.parent)
    assert check.ok and check.audit_entries == (move.seq,), check.problems
    # another run promoting the same version finds the move logged: no second pack
    again = ex.move_alias(ctx("champion", c.inputs, key="k-other"), "champion", "1")
    assert again["evidence_digest"] == m["evidence_digest"] and again["already_champion"]
    assert again["audit_seq"] == m["audit_seq"] and again["evidence_pack"] is None
    # an edited pack no longer verifies, and says why
    pack_file.write_text(pack_file.read_text().replace(d1, "sha256:" + "0" * 64))
    bad = verify_pack(ex.registry, pack_file)
    assert not bad.ok and any("tag" in p for p in bad.problems)
    assert any("no audit-log decision" in p for p in bad.problems)
    events = _alias_events(bus)
    assert [(e["alias"], e["to_version"]) for e in events] == [
        ("challenger", 1),
        ("shadow", 1),
        ("canary", 1),
        ("champion", 1),
    ]
    # a second model version on canary, then a rollback: shadow/canary return to the champion
    d2, a2 = _artifact(ex, tmp_path, 2)
    c2 = ctx(
        "register_challenger",
        {"package_sign": {"artifact_digest": d2, "archive": str(a2)}},
        key="k2",
    )
    assert ex.register_challenger(c2)["version"] == "2"
    ex.move_alias(ctx("shadow", c2.inputs, key="k2s"), "shadow", "2")
    ex.move_alias(ctx("canary", c2.inputs, key="k2c"), "canary", "2")
    out = ex.rollback(ctx("promote_or_rollback", c2.inputs, key="k2r"), "2")
    assert out["removed_from"] == ["canary", "shadow"]
    assert ex.registry.aliases(MODEL) == {"challenger": 2, "shadow": 1, "canary": 1, "champion": 1}
    assert ex.rollback(ctx("promote_or_rollback", c2.inputs, key="k2r"), "2")["removed_from"] == []
    assert ex.registry.verify_audit(MODEL).ok
    ex.close()


def test_canary_signals_come_from_the_bus(tmp_path: Path, bus: Bus) -> None:
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    at = T0 + timedelta(hours=1)

    def pub(stream: str, type_: str, payload: dict[str, Any], i: int) -> None:
        bus.publish(
            stream,
            Event.create(type=type_, key=MODEL, event_time=at, payload=payload, id=f"{type_}-{i}"),
        )

    pub("models", "canary.failed", {"model": MODEL, "version": "3", "reason": "p99"}, 1)
    pub("models", "canary.failed", {"model": "other", "version": "3"}, 2)  # another model's
    pub(
        "models",
        "slo.reading",
        {"model": MODEL, "version": "3", "name": "p99", "value": 0.2, "objective": 0.05},
        3,
    )
    pub("models", "slo.reading", {"model": MODEL, "version": "3"}, 4)  # malformed: skipped
    for i, (variant, version) in enumerate(
        [("canary", "3"), ("canary", "3"), ("primary", "3"), ("canary", "2")]
    ):
        pub(
            "predictions",
            "prediction.made",
            {"model": MODEL, "version": version, "variant": variant},
            10 + i,
        )
    signals, requests = ex.canary_signals(ctx("canary"), "3")
    assert sorted(s.kind for s in signals) == ["canary.failed", "slo"]
    assert requests == 2
    assert ex.canary_signals(ctx("canary"), "4") == ([], 0) or all(
        s.version == "3" for s in ex.canary_signals(ctx("canary"), "4")[0]
    )


# -- the whole pipeline: keel.trainer on local Ray ----------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray

    from keel.pipelines.local import start_ray

    info = start_ray(num_cpus=2, object_store_bytes=80 << 20, tmp_dir=f"/tmp/kp-{os.getpid()}")
    yield info
    ray.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(days=5)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_run_trains_gates_signs_registers_canaries_and_promotes(
    tmp_path: Path, bus: Bus, ray_cluster: Any
) -> None:
    from keel.artifacts import load_artifact
    from keel.governance import ApprovalLedger
    from keel.trainer import lock_hash

    write_world(tmp_path)
    repo, commit, lock = git_repo(tmp_path)  # the code version reproduce checks out
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    assert isinstance(ex, LocalExecutors)
    clock = Clock()
    ctl = Controller(
        ex,
        clock=clock,
        db_path=tmp_path / "pipelines" / "pipelines.db",  # the default, where packs look
        trigger_policy=TriggerPolicy(cooldown=timedelta(0)),
        canary_policy=CanaryPolicy(window=timedelta(hours=1)),
        code_version=commit,
        lock_hash=lock_hash(lock_file=lock),
    )
    d = ctl.submit(Trigger.manual(MODEL, "first", at=clock(), who="ana"), {})
    assert d.run_id is not None
    info = ctl.advance(d.run_id)
    # tier 3: one approval of the exact artifact digest; the run says which
    assert info.status is RunStatus.WAITING and info.step == "gates"
    digest = ex.pending_approvals[d.run_id]
    assert digest in info.detail
    ApprovalLedger(tmp_path / "governance" / "approvals.jsonl", clock=clock).record(
        model=MODEL,
        artifact_digest=digest,
        approver="ana",
        role="validator",
        decision="approve",
        evidence_digest=digest,
    )
    info = ctl.advance(d.run_id)
    assert info.status is RunStatus.WAITING and info.step == "canary"  # the window runs
    clock.now += timedelta(hours=2)
    info = ctl.advance(d.run_id)
    assert info.status is RunStatus.PROMOTED, info.detail
    out = {s.step: s.output for s in ctl.steps(d.run_id)}
    assert out["package_sign"]["artifact_digest"] == digest
    champion = ex.registry.get_by_alias(MODEL, "champion")
    assert (
        champion.digest == digest and str(champion.version) == out["register_challenger"]["version"]
    )
    extra = ["drift_profile.json", "model_card.json", "model_card.html", "evaluation.json"]
    loaded = load_artifact(
        out["package_sign"]["archive"], ex.signing()[1], framework="torch", read_files=extra
    )
    assert {"drift_profile.json", "model_card.json", "model_card.html", "evaluation.json"} <= set(
        loaded.files
    )
    card = json.loads(loaded.files["model_card.json"])
    assert card["training_data"]["fingerprint"] == out["build_training_set"]["fingerprint"]
    assert loaded.manifest.training_data_fingerprint == out["build_training_set"]["fingerprint"]
    gates = {g["gate"]: g["status"] for g in out["gates"]["results"]}
    assert gates == {
        g: "passed"
        for g in (
            "quality",
            "calibration",
            "fairness",
            "compatibility",
            "training_data",
            "approvals",
        )
    }
    moves = [(e["alias"], e["to_version"]) for e in _alias_events(bus)]
    assert moves == [("challenger", 1), ("shadow", 1), ("canary", 1), ("champion", 1)]
    lineage = ctl.lineage(MODEL)
    assert lineage.artifact_digest == digest and lineage.trigger["key"] == "manual:first"
    assert ctl.verify_provenance().ok
    # the promotion carried its evidence pack: on disk, its digest in the audit log's
    # decision for the champion move, built from the artifact's own card and the run's
    # provenance, and verify_pack agrees
    from keel.pipelines.evidence import pack_digest, verify_pack

    promo = out["promote_or_rollback"]
    pack = json.loads(Path(promo["evidence_pack"]).read_text())
    assert promo["evidence_digest"] == pack_digest(pack)
    (move,) = (e for e in ex.registry.audit(MODEL) if e.alias == "champion")
    assert move.decision.evidence_digest == promo["evidence_digest"]
    assert move.seq == promo["audit_seq"]
    assert pack["model"]["digest"] == digest and pack["governance"]["risk"]["tier"] == 3
    assert pack["governance"]["source"]["kind"] == "artifact.model_card"
    assert pack["provenance"]["present"] and pack["provenance"]["source"]["id"] == d.run_id
    assert [a["approver"] for a in pack["approvals"]] == ["ana"]
    assert verify_pack(ex.registry, Path(promo["evidence_pack"])).ok

    # the same data again: every cached step is a hit, nothing new is registered or moved
    d2 = ctl.submit(Trigger.manual(MODEL, "again", at=clock(), who="ana"), {})
    assert d2.run_id is not None
    info2 = ctl.advance(d2.run_id)
    clock.now += timedelta(hours=2)
    info2 = ctl.advance(d2.run_id)
    assert info2.status is RunStatus.PROMOTED, info2.detail
    hits = {s.step for s in ctl.steps(d2.run_id) if s.cache_hit}
    # the gates now name a champion, but package_sign does not read their verdict: a hit
    assert hits == set(CACHED)
    again = {s.step: s.output for s in ctl.steps(d2.run_id)}
    assert again["package_sign"]["artifact_digest"] == digest
    assert [v.version for v in ex.registry.versions(MODEL)] == [1]
    assert len(_alias_events(bus)) == 4  # every move was already where it points
    # the move was already logged: no second pack, the first one's digest stands
    promo2 = again["promote_or_rollback"]
    assert promo2["evidence_digest"] == promo["evidence_digest"] and promo2["already_champion"]
    # the champion, scored on the same holdout, is the challenger itself: no gain, no loss
    q = next(g for g in ctl.steps(d2.run_id)[3].output["results"] if g["gate"] == "quality")
    assert q["evidence"]["champion"] == q["evidence"]["challenger"]
    # now there is a champion: the new training data is judged against its drift profile
    td = next(g for g in ctl.steps(d2.run_id)[3].output["results"] if g["gate"] == "training_data")
    assert td["evidence"].get("decision") is not None and td["status"] == "passed"
    ctl.close()

    # reproduce: the set re-materialised from the offline log, then the pipelines' own
    # train -> evaluate -> package_sign in a scratch home give the registered digest
    from keel.pipelines.reproduce import PipelinesSource, reproduce

    kw: dict[str, Any] = {"signing_key": ex.signing()[0], "trust": ex.signing()[1]}
    kw.update(repo=repo, record=False)
    v = reproduce(
        ex.registry,
        MODEL,
        "champion",
        work_dir=tmp_path / "w-same",
        pipelines=PipelinesSource(tmp_path, opts(tmp_path)),
        **kw,
    )
    assert v.status == "identical" and v.ok and v.link is None, v.message
    assert v.retrained and v.reproduced_digest == digest
    assert [c.link for c in v.checks] == [
        "data fingerprint",
        "code version",
        "lock hash",
        "parameters",
        "weights",
    ]
    assert all(c.same for c in v.checks)
    # a changed trainer parameter is the parameters link, before any retraining
    lr = opts(tmp_path)
    lr["trainer"] = {**lr["trainer"], "lr": 0.03}
    v = reproduce(
        ex.registry,
        MODEL,
        "champion",
        work_dir=tmp_path / "w-lr",
        pipelines=PipelinesSource(tmp_path, lr),
        **kw,
    )
    assert v.status == "differs" and v.link == "parameters", v.message
    assert not v.retrained and v.reproduced_digest is None
    ex.close()


# -- reproduce: the training set re-materialised from the offline event log --------------------
class _RealSets:
    """Executors whose training set is the real one (keel.features on the offline log) and
    whose other steps stand still: the run records the provenance `reproduce` walks back."""

    def __init__(self, real: LocalExecutors, digest: str) -> None:
        self.real, self.digest = real, digest

    def source_fingerprints(self, ctx: StepContext) -> Mapping[str, str]:
        return self.real.source_fingerprints(ctx)

    def build_training_set(self, ctx: StepContext) -> Mapping[str, Any]:
        return self.real.build_training_set(ctx)

    def train(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"trainer_run": "not-tracked"}

    def evaluate(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"metrics": {}}

    def gates(self, ctx: StepContext) -> Any:
        from keel.pipelines import GateResult, GateStatus

        return [GateResult("quality", GateStatus.PASSED)]

    def package_sign(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"artifact_digest": self.digest}

    def register_challenger(self, ctx: StepContext) -> Mapping[str, Any]:
        return {"version": "1"}

    def move_alias(self, ctx: StepContext, alias: str, version: str) -> Mapping[str, Any]:
        return {}

    def canary_signals(self, ctx: StepContext, version: str) -> Any:
        return [], 0

    def rollback(self, ctx: StepContext, version: str) -> Mapping[str, Any]:
        return {}


def test_reproduce_rematerialises_the_set_from_the_offline_log(tmp_path: Path, bus: Bus) -> None:
    """The data link of a pipelines-trained model is the training set rebuilt from the
    offline event log (point in time, the recorded views and run parameters): unchanged log,
    same fingerprint; one event edited after training, the data link fails and names the
    dataset and the training row it changed; the log gone, a refusal that says so."""
    import shutil

    from keel.artifacts import Architecture, ArtifactSpec, CodeVersion, FieldSpec, build_artifact
    from keel.pipelines.reproduce import PipelinesSource, reproduce

    write_world(tmp_path, days=2, per_day=150)
    ex = build_executors(home=tmp_path, bus=bus, options=opts(tmp_path))
    assert isinstance(ex, LocalExecutors)
    recorded = ex.build_training_set(ctx("build_training_set"))["fingerprint"]
    spec = ArtifactSpec(
        name=MODEL,
        architecture=Architecture(builder="mlp", args={"n_in": 2, "hidden": [2], "n_out": 1}),
        input_schema=[FieldSpec(name=f, dtype="float64") for f in FEATURES],
        output_schema=[FieldSpec(name="score", dtype="float32")],
        training_data_fingerprint=recorded,
        code=CodeVersion(commit="c0ffee", dirty=False),
        dependency_lock_hash="sha256:lock",
    )
    weights = {"w": np.ones((2, 2), np.float32)}
    archive = tmp_path / "a.tar"
    build_artifact(tmp_path / "a", spec, weights, signing_key=ex.signing()[0], archive=archive)
    v = ex.registry.register(archive, trust=ex.signing()[1])
    clock = Clock()
    ctl = Controller(
        _RealSets(ex, v.digest),
        clock=clock,
        db_path=tmp_path / "pipelines" / "pipelines.db",
        canary_policy=CanaryPolicy(window=timedelta(0)),
        code_version="c0ffee",
        lock_hash="sha256:lock",
    )
    run = ctl.submit(Trigger.manual(MODEL, "r1", at=clock(), who="ana"), {}).run_id
    assert run is not None and ctl.advance(run).status is RunStatus.PROMOTED
    ctl.close()
    source = PipelinesSource(tmp_path, opts(tmp_path))
    kw: dict[str, Any] = {"signing_key": ex.signing()[0], "trust": ex.signing()[1]}
    kw.update(repo=tmp_path, pipelines=source, record=False)

    same = reproduce(ex.registry, MODEL, "1", work_dir=tmp_path / "w-same", **kw)
    first = same.checks[0]
    assert (first.link, first.same, first.recorded, first.found) == (
        "data fingerprint",
        True,
        recorded,
        recorded,
    )
    # the walk goes on past the data (here to the code version: tmp_path is no checkout)
    assert same.status == "refused" and same.link == "code version", same.message

    # a correction recorded after the run (a later publish time) changes a fresh build of
    # the set, but the log as it was known then gives the recorded set: the data link holds
    late_event_for_a_label(tmp_path, recorded=clock() + timedelta(days=1))
    fresh = ex.build_training_set(ctx("build_training_set"))["fingerprint"]
    assert fresh != recorded
    late = reproduce(ex.registry, MODEL, "1", work_dir=tmp_path / "w-late", **kw)
    first = late.checks[0]
    assert (first.link, first.same, first.found) == ("data fingerprint", True, recorded)
    assert "were left out" in first.detail and "events.txn.created" in first.detail
    assert late.link == "code version", late.message

    # an event edited in place (its record time unchanged) is not hidden by the as-of
    part = sorted((tmp_path / "offline" / "events.txn.created").glob("date=*/part-s*.parquet"))[0]
    log = pl.read_parquet(part)
    i = log.height // 2
    keys = log["key"].to_list()
    keys[i] = "c999" if keys[i] != "c999" else "c998"  # one event moved to another card
    log.with_columns(pl.Series("key", keys)).write_parquet(part)
    edited = reproduce(ex.registry, MODEL, "1", work_dir=tmp_path / "w-edit", **kw)
    assert edited.status == "differs" and edited.link == "data fingerprint", edited.message
    assert not edited.retrained and edited.reproduced_digest is None
    (check,) = edited.checks
    assert check.recorded == recorded and check.found != recorded
    assert "events.txn.created" in edited.message and f"labels.{MODEL}" not in edited.message
    assert "card_txn__count_6h recorded" in edited.message  # the training row it changed

    shutil.rmtree(tmp_path / "offline" / "events.txn.created")
    gone = reproduce(ex.registry, MODEL, "1", work_dir=tmp_path / "w-gone", **kw)
    assert gone.status == "refused" and gone.link == "data fingerprint"
    assert "offline log is gone" in gone.message and "events.txn.created" in gone.message
    ex.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_ray_engine_builds_the_same_training_set_through_the_executor(
    tmp_path: Path, bus: Bus, ray_cluster: Any
) -> None:
    """``training_set_engine = "ray"`` (keel.pipelines.ray_build on the process's Ray, 3
    partitions) gives the single-process build's bytes: the same fingerprint, the same
    files, so the two engines share cache entries downstream."""
    write_world(tmp_path, per_day=300)
    shared = {"offline_root": str(tmp_path / "offline")}
    local = build_executors(home=tmp_path / "a", bus=bus, options=opts(tmp_path, **shared))
    on_ray = build_executors(
        home=tmp_path / "b",
        bus=bus,
        options=opts(tmp_path, **shared, training_set_engine="ray", training_set_partitions=3),
    )
    assert isinstance(on_ray, LocalExecutors) and isinstance(local, LocalExecutors)
    c = ctx("build_training_set")
    a, b = dict(local.build_training_set(c)), dict(on_ray.build_training_set(c))
    assert a["rows"] == b["rows"] == 1200
    for k in ("fingerprint", "train_fingerprint", "holdout_fingerprint", "holdout_from"):
        assert a[k] == b[k], k
    for name in ("set", "train", "holdout"):
        assert (Path(a["path"]) / f"{name}.parquet").read_bytes() == (
            Path(b["path"]) / f"{name}.parquet"
        ).read_bytes()
    assert on_ray.step_settings("build_training_set") == local.step_settings("build_training_set")
