"""The Keel loop end to end on real services, as whole processes.

NATS JetStream carries the transactions, the prediction log, the drift events and the model
events; Redis is the online store; a PostgreSQL-backed `mlflow server` is the registry and
the trainer's tracking server; a two-node local Ray cluster (a head and a second raylet, one
CPU each) trains; a real Prometheus (Debian's `prometheus`) scrapes every app with the
generated rules (ops/prometheus/keel-rules.yml) loaded.

1. A placeholder champion is registered on the MLflow server and promoted: a signed model
   over the card_stats features that knows nothing (every score 0.5, so AUC 0.5 on any
   holdout).
2. The feature-worker binary consumes card transactions from NATS into Redis and its
   offline event log; the serve binary follows `credit@champion` (and the `shadow` and
   `canary` aliases) in the registry, reads the card's features from Redis for every
   request (under their training-set names, ``card_stats__<feature>``) and logs every
   prediction to NATS.
3. A reference profile is built from the logged baseline traffic (what the model saw); the
   drift-monitor binary consumes the prediction log.
4. Drift is injected at the source: a burst of transactions with far larger amounts on
   every card. The label feed (here: the test, which knows which cards are fraud-prone)
   writes a label for every transaction to the offline store next to the feature-worker's
   event log. The feature-worker updates Redis, serving's inputs shift, the drift-monitor
   decides DRIFT and publishes one `drift.detected`, and Prometheus' `/api/v1/alerts` shows
   `KeelModelDriftBudgetBurnFast` firing for the model.
5. The retrain-controller binary (the real executors, keel.pipelines.local) consumes that
   event and runs one pipeline: a point-in-time training set from the feature-worker's
   offline log and the labels → training on the two-node Ray cluster (one worker per node,
   tracked on the MLflow server) → evaluation on the most recent labelled transactions →
   gates (quality vs the champion on the same holdout, calibration, compatibility, training
   data, approvals: the run waits until a person approves the artifact it names, with
   `keel governance approve`) → a signed artifact → challenger → shadow → canary (serve
   routes a share of the traffic to it; the controller counts the canary's predictions in
   the prediction log and watches the bus for `canary.failed`) → promotion. Serve follows
   the alias move; Prometheus holds the serving SLO series of the new version and the
   controller's `promoted` run; `keel provenance verify credit@champion` walks from the
   served model back to the drift event and the exact training data.

Run it with `./pants test tests/e2e::`: about 7 minutes on a loaded 2-core machine, most of
it Ray and MLflow start-up and training.

No wall-clock assertions: every wait polls for a state with a generous deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import keel_cli.main as cli_main
import keel_drift_monitor.main as monitor_main
import keel_feature_worker.main as worker_main
import keel_retrain_controller.main as controller_main
import keel_serve.main as serve_main
import numpy as np
import polars as pl
import pytest
import redis
from testutil.apps import Proc, app_env, poll
from testutil.isolation import nats_url, redis_url, unique_name
from testutil.mlflow_server import MlflowServer, free_port
from testutil.ray_nodes import TwoNodeRay, two_node_session

from keel.artifacts import (
    Architecture,
    ArtifactSpec,
    CodeVersion,
    FeatureViewRef,
    FieldSpec,
    SigningKey,
    TrustPolicy,
    build_artifact,
    generate_keypair,
)
from keel.drift import build_profile
from keel.events import Event, EventsError, open_bus
from keel.features import (
    FeaturesError,
    OfflineStore,
    event_log_dataset,
    load_registry,
    namespace,
)
from keel.pipelines import Controller, PipelinesError, RunInfo, RunStatus
from keel.registry_client import Decision, open_registry
from keel.serving import build_mlp

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "keel-rules.yml"
MODEL = "credit"
CARDS = [f"card-{i}" for i in range(40)]
TXNS_PER_CARD = 5
# the model's inputs, as keel.features' training sets name view features
FEATURES = ["card_stats__count_1h", "card_stats__mean_amount_log_1h"]
DEFS = textwrap.dedent(
    """
    from datetime import timedelta

    import polars as pl

    from keel.features import Aggregation, Entity, EventSource, FeatureView, Transform

    card_stats = FeatureView(
        name="card_stats",
        source=EventSource("txn.created", stream={stream!r}),
        entities=[Entity("card")],
        fields={{"amount": "float"}},
        transforms=[Transform("amount_log", pl.col("amount").log1p())],
        features=[
            Aggregation("count", None, timedelta(hours=1)),
            Aggregation("mean", "amount_log", timedelta(hours=1)),
        ],
        id_column="event_id",
    )
    """
)
DECIDED = Decision(who="e2e", why="first champion", evidence_digest="sha256:" + "0" * 64)
# Half the cards are fraud-prone: they spend about five times more than the others. The
# label feed knows which cards those are; a model must learn it from the card's activity in
# the last hour, before and after the drift (which moves every card's amounts x25).
FRAUD_PRONE = set(np.random.default_rng(11).permutation(CARDS)[: len(CARDS) // 2].tolist())
SPEND = {
    c: float(np.exp((0.8 if c in FRAUD_PRONE else -0.8) + n))
    for c, n in zip(CARDS, np.random.default_rng(12).normal(0.0, 0.25, len(CARDS)), strict=True)
}
# Trainer and gates of the retrain run: a small MLP on a few hundred rows, one worker per Ray
# node. The gates are the production policies at their defaults (calibration: ECE <= 0.05;
# fairness is not configured: the data has no protected attribute) but for the quality bar:
# the placeholder champion scores AUC 0.5, and the challenger must reach 0.8 and beat it by
# 0.2 on the same holdout. Risk tier 3 needs one recorded approval by a person.
TRAINER = {
    "hidden": [32, 16],
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.02,
    "seed": 0,
    "num_workers": 2,
    "checkpoint_every_steps": 1000,
}
GATES = {"metric": "auc", "threshold": 0.8, "min_abs_improvement": 0.2, "risk_tier": 3}
APPROVER = "risk-officer@e2e"
CANARY_FRACTION = 0.25
CANARY_MIN_REQUESTS = 100  # logged canary predictions before the controller may promote


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"), port_offset=40)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[TwoNodeRay]:
    """The two-node cluster; the retrain-controller joins it by address (RAY_ADDRESS)."""
    yield from two_node_session()


def start_prometheus(tmp: Path, targets: dict[str, int]) -> tuple[Proc, str]:
    exe = shutil.which("prometheus")
    assert exe, "Debian's `prometheus` is required (tools/ci/services.sh installs it)"
    port = free_port(60)
    scrape = [
        {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
        for job, p in targets.items()
    ]
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }
    (tmp / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
    proc = Proc(
        "prometheus",
        [
            exe,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
        tmp,
    )
    return proc, f"http://127.0.0.1:{port}"


def placeholder_champion(tmp: Path, key: SigningKey, view_version: str) -> Path:
    """A signed MLP over FEATURES whose weights are all zero: it scores every card 0.5."""
    args: dict[str, Any] = {
        "n_in": len(FEATURES),
        "hidden": [4],
        "n_out": 1,
        "out_activation": "sigmoid",
    }
    spec = ArtifactSpec(
        name=MODEL,
        architecture=Architecture(builder="mlp", args=args),
        input_schema=[FieldSpec(name=f, dtype="float64") for f in FEATURES],
        output_schema=[FieldSpec(name="score", dtype="float32", min=0.0, max=1.0)],
        feature_views=[FeatureViewRef(name="card_stats", version=view_version)],
        training_data_fingerprint="sha256:" + "ab" * 32,
        code=CodeVersion(commit="0123456789abcdef0123456789abcdef01234567", dirty=False),
        dependency_lock_hash="sha256:" + "cd" * 32,
    )
    weights = {k: v.detach().clone().zero_() for k, v in build_mlp(**args).state_dict().items()}
    out = tmp / "champion"
    build_artifact(out, spec, weights, signing_key=key, archive=out.with_suffix(".tar"))
    return out.with_suffix(".tar")


def transactions(
    rng: np.random.Generator, now: datetime, scale: float, tag: str, *, burst: bool = False
) -> list[Event]:
    """TXNS_PER_CARD transactions per card, amounts x ``scale``, between 90 and 31 seconds
    before ``now``; ``burst``: each card's transactions at one instant in the 30 seconds
    before ``now`` (so every one of them is labelled with the whole burst in the card's
    window). A burst made after a plain batch is always later than all of it."""
    out = []
    for card in CARDS:
        at = now - timedelta(seconds=float(rng.uniform(1, 30)))
        for j in range(TXNS_PER_CARD):
            t = at if burst else now - timedelta(seconds=float(rng.uniform(31, 90)))
            amount = float(rng.lognormal(3, 0.5) * SPEND[card] * scale)
            out.append(
                Event.create(
                    type="txn.created",
                    key=card,
                    event_time=t,
                    payload={"card": card, "amount": amount},
                    id=f"{tag}-{card}-{j}",
                )
            )
    return out


def labels(txns: list[Event]) -> pl.DataFrame:
    """What the label feed writes: each transaction's card, time and fraud label."""
    return pl.DataFrame(
        {
            "card": [e.key for e in txns],
            "timestamp": [e.event_time for e in txns],
            "label": [int(e.key in FRAUD_PRONE) for e in txns],
        },
        schema={"card": pl.String(), "timestamp": pl.Datetime("us", "UTC"), "label": pl.Int8()},
    )


class Traffic:
    """Clients calling the serve app's /v1/predict until stopped; counts answers by status
    and instances by (variant, version)."""

    def __init__(self, url: str, seed: int, every_s: float = 0.02) -> None:
        self.url, self.every_s = url, every_s
        self.rng = np.random.default_rng(seed)
        self.status: dict[int, int] = {}
        self.served: dict[tuple[str, str], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                inst = [{"entity": str(self.rng.choice(CARDS))} for _ in range(10)]
                r = c.post("/v1/predict", json={"instances": inst})
                self.status[r.status_code] = self.status.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    body = r.json()
                    key = (str(body["variant"]), str(body["version"]))
                    self.served[key] = self.served.get(key, 0) + len(inst)
                self.stop.wait(self.every_s)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def read_stream(bus: Any, stream: str, want: int, procs: list[Proc]) -> list[Event]:
    """Every event of ``stream`` once it holds at least ``want`` (publishing is asynchronous)."""
    poll(f"{want} events in {stream}", lambda: bus.stream_info(stream).count >= want, 60, procs)
    return [s.event for s in bus.replay(stream)]


def alerts(prom: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"][
        "alerts"
    ]
    return out


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = httpx.get(
        f"{prom}/api/v1/query", params={"query": promql}, timeout=5
    ).json()["data"]["result"]
    return out


def targets_up(prom: str, jobs: set[str]) -> bool:
    t = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
    health = {x["labels"]["job"]: x["health"] for x in t["activeTargets"]}
    return all(health.get(j) == "up" for j in jobs)


def offline_events(root: Path) -> int:
    """Transactions in the feature-worker's offline event log (0 before its first flush)."""
    try:
        return OfflineStore(root).read(event_log_dataset("txn.created")).collect().height
    except FeaturesError:
        return 0


def wait_run(db: Path, what: str, done: Any, procs: list[Proc]) -> RunInfo:
    """The controller's (only) run once ``done(info)``; a step failure ends the wait at
    once, with the step's error."""

    def check() -> RunInfo | None:
        if not db.exists():
            return None
        try:
            ctl = Controller(None, clock=lambda: datetime.now(UTC), db_path=db)
        except (sqlite3.Error, PipelinesError):  # the controller is creating it
            return None
        try:
            runs = ctl.runs(MODEL)
            assert len(runs) <= 1, [r.run_id for r in runs]
            if not runs:
                return None
            info = runs[0]
            assert info.status is not RunStatus.FAILED, f"step {info.step} failed: {info.detail}"
            return info if done(info) else None
        finally:
            ctl.close()

    return poll(what, check, 420, procs, every=2)  # type: ignore[no-any-return]


def keel(*args: str) -> str:
    """Run the `keel` CLI; its stdout (the test fails on a non-zero exit)."""
    out = subprocess.run(
        [sys.executable, cli_main.__file__, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=app_env({}),
        check=False,  # the assertion below shows stderr
    )
    assert out.returncode == 0, f"keel {' '.join(args)}: {out.stderr}{out.stdout}"
    return out.stdout


def gate_results(db: Path, run_id: str) -> list[dict[str, Any]]:
    ctl = Controller(None, clock=lambda: datetime.now(UTC), db_path=db)
    try:
        out = {s.step: s.output for s in ctl.steps(run_id)}
    finally:
        ctl.close()
    return list(out.get("gates", {}).get("results", []))


# -- the loop -------------------------------------------------------------------------------


def test_drift_fires_the_alert_and_the_retrained_model_is_promoted_and_served(
    tmp_path: Path, mlflow_server: MlflowServer, ray_cluster: TwoNodeRay
) -> None:
    rng = np.random.default_rng(7)
    txn_stream = unique_name("e2e-txn").replace("_", "-")
    pred_stream = unique_name("e2e-pred").replace("_", "-")
    drift_stream = unique_name("e2e-drift").replace("_", "-")
    control_stream = unique_name("e2e-ctl").replace("_", "-")
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS.format(stream=txn_stream))
    ns = namespace(load_registry(str(defs)).get("card_stats"))
    view_version = ns.split(":", 1)[1]
    priv, pub_pem = generate_keypair()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "signer.pem").write_bytes(priv)
    (keys / "signer.pub").write_bytes(pub_pem)
    pub = keys / "signer.pub"
    archive = placeholder_champion(tmp_path, SigningKey.from_pem(priv), view_version)
    db_url = mlflow_server.db_url
    with open_registry(tracking_uri=mlflow_server.url, db_url=db_url) as reg:
        v = reg.register(archive, trust=TrustPolicy((pub_pem,)))
        reg.promote(MODEL, "champion", v.version, DECIDED)
    assert ray_cluster.alive_nodes() and len(ray_cluster.alive_nodes()) == 2

    bus = open_bus(nats_url())
    procs: list[Proc] = []
    r = redis.Redis.from_url(redis_url())
    worker_home = tmp_path / "worker"
    try:
        now = datetime.now(UTC)
        base_txns = transactions(rng, now, 1.0, "base")
        bus.publish_batch(txn_stream, base_txns)
        wport, sport, mport, cport = free_port(50), free_port(52), free_port(54), free_port(56)
        procs.append(
            Proc(
                "feature-worker",
                [sys.executable, worker_main.__file__],
                app_env(
                    {
                        "feature_worker": dict(
                            definitions=str(defs),
                            home=str(worker_home),
                            bus_url=nats_url(),
                            online_url=redis_url(),
                            durable=unique_name("worker"),
                            metrics_port=str(wport),
                            flush_interval_s="0.2",
                        )
                    }
                ),
                tmp_path,
            )
        )
        # every card's features are online before serving starts
        poll(
            "the feature-worker to fill Redis",
            lambda: all(r.exists(f"keel:features:{ns}:{c}") for c in CARDS) or None,
            120,
            procs,
        )
        procs.append(
            Proc(
                "serve",
                [sys.executable, serve_main.__file__],
                app_env(
                    {
                        "serve": dict(
                            model=f"{MODEL}@champion",
                            shadow="shadow",
                            canary="canary",
                            canary_fraction=str(CANARY_FRACTION),
                            # the canary guard (unit-tested in keel.serving) judges latency
                            # on a machine that is also training: a loaded 2-core box
                            canary_max_p99_s="5",
                            trust_keys=json.dumps([str(pub)]),
                            home=str(tmp_path / "serve"),
                            registry_tracking_uri=mlflow_server.url,
                            registry_db_url=db_url,
                            online_url=redis_url(),
                            bus_url=nats_url(),
                            predictions_stream=pred_stream,
                            control_stream=control_stream,
                            port=str(sport),
                            poll_s="1",
                        )
                    }
                ),
                tmp_path,
            )
        )
        serve_url = f"http://127.0.0.1:{sport}"
        poll(
            "serve to be ready",
            lambda: httpx.get(serve_url + "/readyz", timeout=2).status_code == 200,
            180,
            procs,
        )
        with Traffic(serve_url, seed=1) as base:
            poll("baseline traffic", lambda: base.status.get(200, 0) >= 60, 120, procs)
        assert set(base.status) == {200}, base.status
        answered = base.status[200] * 10  # instances per request
        baseline = read_stream(bus, pred_stream, answered, procs)
        assert len(baseline) == answered  # every prediction logged once
        ref = pl.DataFrame([e.json()["features"] for e in baseline])
        assert set(ref.columns) == set(FEATURES), ref.columns  # served from Redis
        assert {e.json()["version"] for e in baseline} == {str(v.version)}
        profile = build_profile(ref).save(tmp_path / "profile.json")

        procs.append(
            Proc(
                "drift-monitor",
                [sys.executable, monitor_main.__file__],
                app_env(
                    {
                        "drift_monitor": dict(
                            profile=str(profile),
                            home=str(tmp_path / "monitor"),
                            bus_url=nats_url(),
                            stream=pred_stream,
                            output_stream=drift_stream,
                            durable=unique_name("monitor"),
                            model=MODEL,
                            window_s="4",
                            min_samples="50",
                            consecutive="2",
                            metrics_port=str(mport),
                            poll_timeout_s="0.2",
                        )
                    }
                ),
                tmp_path,
            )
        )
        apps = {"feature-worker": wport, "serve": sport, "drift-monitor": mport}
        prom, prom_url = start_prometheus(tmp_path, {**apps, "retrain-controller": cport})
        procs.append(prom)
        poll("Prometheus scraping every app", lambda: targets_up(prom_url, set(apps)), 90, procs)
        groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert "keel-slo-model-drift" in {g["name"] for g in groups}
        assert not alerts(prom_url), "no alert may fire on healthy traffic"

        # inject drift at the source: a burst of transactions, amounts x25, on every card
        drift_at = datetime.now(UTC)
        drift_txns = transactions(rng, drift_at, 25.0, "drift", burst=True)
        assert min(e.event_time for e in drift_txns) > max(e.event_time for e in base_txns)
        bus.publish_batch(txn_stream, drift_txns)
        want = len(base_txns) + len(drift_txns)
        poll(
            "the feature-worker's offline log to hold every transaction",
            lambda: offline_events(worker_home / "offline") >= want,
            120,
            procs,
        )
        # the label feed: one label per transaction, next to the event log
        OfflineStore(worker_home / "offline").write(
            f"labels.{MODEL}", labels(base_txns + drift_txns), time_column="timestamp"
        )
        ctl_home = tmp_path / "controller"
        procs.append(
            Proc(
                "retrain-controller",
                [sys.executable, controller_main.__file__],
                {
                    **app_env(
                        {
                            "retrain_controller": dict(
                                home=str(ctl_home),
                                bus_url=nats_url(),
                                drift_stream=drift_stream,
                                signals_stream=control_stream,
                                durable=unique_name("controller"),
                                executor_options=json.dumps(
                                    {
                                        "model": MODEL,
                                        "feature_definitions": str(defs),
                                        "feature_views": ["card_stats"],
                                        "features": FEATURES,
                                        "offline_root": str(worker_home / "offline"),
                                        "registry_tracking_uri": mlflow_server.url,
                                        "registry_db_url": db_url,
                                        "events_stream": control_stream,
                                        "predictions_stream": pred_stream,
                                        "signing_key": str(keys / "signer.pem"),
                                        "trusted_keys": [str(pub)],
                                        "trainer": {
                                            **TRAINER,
                                            "ray_address": ray_cluster.address,
                                        },
                                        "gates": GATES,
                                    }
                                ),
                                # the holdout: the cards whose burst came in the last 15 s
                                params=json.dumps(
                                    {"holdout_from": (drift_at - timedelta(seconds=15)).isoformat()}
                                ),
                                canary_window_s="10",
                                canary_min_requests=str(CANARY_MIN_REQUESTS),
                                wait_poll_s="2",
                                retry_failed_s="600",
                                metrics_port=str(cport),
                                poll_timeout_s="0.5",
                            )
                        }
                    ),
                    "RAY_ADDRESS": ray_cluster.address,
                },
                tmp_path,
            )
        )
        with Traffic(serve_url, seed=2, every_s=0.1) as drifted:

            def firing() -> list[dict[str, Any]]:
                return [
                    a
                    for a in alerts(prom_url)
                    if a["labels"].get("alertname") == "KeelModelDriftBudgetBurnFast"
                    and a["labels"].get("model") == MODEL
                    and a["state"] == "firing"
                ]

            fired = poll("the drift alert to fire in Prometheus", firing, 240, procs, every=1)
            assert fired[0]["labels"]["slo"] == "model-drift"
            # exactly one drift.detected for the episode, naming the shifted features
            got = read_stream(bus, drift_stream, 1, procs)
            assert [e.type for e in got] == ["drift.detected"]
            drift_event = got[0]
            assert set(drift_event.json()["drifted"]) & set(FEATURES), drift_event.json()
            # the champion's serving SLI series are in Prometheus
            q = query(prom_url, f'keel_serving_requests_total{{model="{MODEL}",outcome="ok"}}')
            assert {s["metric"]["version"] for s in q} == {str(v.version)}

            # the retrain-controller turns the drift event into one run; risk tier 3 waits
            # at the gates for a person's approval of the exact artifact the run names
            db = ctl_home / "pipelines" / "pipelines.db"
            waiting = wait_run(
                db,
                "the run to wait for an approval",
                lambda i: i.status is not RunStatus.RUNNING,
                procs,
            )
            assert (waiting.status, waiting.step) == (RunStatus.WAITING, "gates"), waiting
            named = re.search(r"approve artifact (sha256:[0-9a-f]{64})", waiting.detail)
            assert named, waiting.detail
            keel(
                "governance",
                "approve",
                "--model",
                MODEL,
                "--digest",
                named[1],
                "--approver",
                APPROVER,
                "--role",
                "validator",
                "--evidence-digest",
                named[1],
                "--note",
                "reviewed the gate results and the model card",
                "--ledger",
                str(ctl_home / "governance" / "approvals.jsonl"),
            )
            run = wait_run(
                db,
                "the retrain run to end",
                lambda i: i.status not in (RunStatus.RUNNING, RunStatus.WAITING),
                procs,
            )
            gates = gate_results(db, run.run_id)
            assert run.status is RunStatus.PROMOTED, (run.status, run.detail, gates)
            assert run.trigger_key.startswith("drift:"), run.trigger_key
            assert {g["gate"]: g["status"] for g in gates} == {
                "quality": "passed",
                "calibration": "passed",
                "compatibility": "passed",
                "training_data": "passed",
                "approvals": "passed",
            }, gates
            quality = next(g for g in gates if g["gate"] == "quality")["evidence"]
            assert quality["champion"] == pytest.approx(0.5)  # the placeholder, same holdout

            with open_registry(tracking_uri=mlflow_server.url, db_url=db_url) as reg:
                aliases = reg.aliases(MODEL)
                champion = reg.get_by_alias(MODEL, "champion")
                moves = [(e.alias, e.to_version) for e in reg.audit(MODEL)]
            new = str(champion.version)
            assert champion.version != v.version and aliases["canary"] == champion.version
            assert moves == [
                ("champion", v.version),
                ("challenger", champion.version),
                ("shadow", champion.version),
                ("canary", champion.version),
                ("champion", champion.version),
            ], moves
            # the canary really served: serve routed a share of the traffic to the challenger
            assert drifted.served.get(("canary", new), 0) >= CANARY_MIN_REQUESTS, drifted.served
            # serve follows the alias move: the primary variant now answers with the new model
            poll(
                f"serve to answer with v{new} as primary",
                lambda: drifted.served.get(("primary", new), 0) >= 100,
                120,
                procs,
            )

            # after promotion the serving SLO series of the new model are in Prometheus
            def new_version_series() -> list[dict[str, Any]]:
                return query(
                    prom_url,
                    f'keel_serving_requests_total{{model="{MODEL}",version="{new}",outcome="ok"}}',
                )

            seen = float(
                poll("serving series of the new version", new_version_series, 60, procs)[0][
                    "value"
                ][1]
            )
            poll(
                "the new version's request count to grow in Prometheus",
                lambda: float(new_version_series()[0]["value"][1]) > seen,
                60,
                procs,
            )
        assert set(drifted.status) == {200}, drifted.status
        lat = query(
            prom_url,
            f'keel_serving_request_latency_seconds_count{{model="{MODEL}",version="{new}"}}',
        )
        assert lat and float(lat[0]["value"][1]) > 0
        poll(
            "Prometheus to scrape the controller's promoted run",
            lambda: query(
                prom_url,
                f'keel_pipelines_runs_finished_total{{model="{MODEL}",status="promoted"}} == 1',
            ),
            60,
            procs,
        )

        # keel provenance verify: from the served champion back to the drift event and data
        report = json.loads(keel("provenance", "verify", f"{MODEL}@champion", "--db", str(db)))
        lineage = report["lineage"]
        assert report["ok"] is True and report["entries"] > 0
        assert lineage["artifact_digest"] == champion.digest
        assert lineage["trigger"]["evidence"]["event_id"] == drift_event.id, lineage["trigger"]
        assert set(lineage["sources"]) == {event_log_dataset("txn.created"), f"labels.{MODEL}"}
        assert lineage["training_set_fingerprint"].startswith("sha256:")
    finally:
        for p in reversed(procs):
            p.stop()
        for s in (txn_stream, pred_stream, drift_stream, control_stream):
            with contextlib.suppress(EventsError):
                bus.delete_stream(s)
        bus.close()
        for k in r.scan_iter(match=f"keel:features:{ns}:*"):
            r.delete(k)
        r.close()
