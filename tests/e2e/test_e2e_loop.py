"""The Keel loop end to end on real services, as whole processes.

NATS JetStream carries the transactions, the prediction log and the drift events; Redis is
the online store; a PostgreSQL-backed `mlflow server` is the registry; a real Prometheus
(Debian's `prometheus`) scrapes every app with the generated rules
(ops/prometheus/keel-rules.yml) loaded.

1. A signed model is registered on the MLflow server and promoted to `champion`.
2. The feature-worker binary consumes card transactions from NATS into Redis; the serve
   binary loads `credit@champion` from the registry (verified), reads the card's features
   from Redis for every request and logs every prediction to NATS.
3. A reference profile is built from the logged baseline traffic (what the model saw); the
   drift-monitor binary consumes the prediction log.
4. Drift is injected at the source: new transactions with far larger amounts, and traffic
   moved to one channel. The feature-worker updates Redis, serving's inputs shift, the
   drift-monitor decides DRIFT and publishes one `drift.detected` event, and Prometheus'
   `/api/v1/alerts` shows `KeelModelDriftBudgetBurnFast` firing for the model.

No wall-clock assertions: every wait polls for a state with a generous deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import keel_drift_monitor.main as monitor_main
import keel_feature_worker.main as worker_main
import keel_serve.main as serve_main
import numpy as np
import polars as pl
import pytest
import redis
from testutil.apps import Proc, app_env, poll
from testutil.isolation import nats_url, redis_url, unique_name
from testutil.mlflow_server import MlflowServer, free_port
from testutil.serving_artifacts import Keys, make_artifact

from keel.artifacts import TrustPolicy
from keel.drift import build_profile
from keel.events import Event, EventsError, open_bus
from keel.features import load_registry, namespace
from keel.registry_client import Decision, open_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "keel-rules.yml"
MODEL = "credit"
CARDS = [f"card-{i}" for i in range(40)]
FEATURES = ["count_1h", "sum_amount_1h", "mean_amount_1h"]
DEFS = textwrap.dedent(
    """
    from datetime import timedelta
    from keel.features import Aggregation, Entity, EventSource, FeatureView

    card_stats = FeatureView(
        name="card_stats",
        source=EventSource("txn.created", stream={stream!r}),
        entities=[Entity("card")],
        fields={{"amount": "float"}},
        features=[
            Aggregation("count", None, timedelta(hours=1)),
            Aggregation("sum", "amount", timedelta(hours=1)),
            Aggregation("mean", "amount", timedelta(hours=1)),
        ],
        id_column="event_id",
    )
    """
)
DECIDED = Decision(who="e2e", why="first champion", evidence_digest="sha256:" + "0" * 64)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"), port_offset=40)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


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


def signed_model(tmp: Path, view_version: str) -> tuple[Path, Path]:
    """A small signed MLP over the card_stats features plus the request-time channel."""
    keys = Keys()
    (tmp / "pub.pem").write_bytes(keys.pub)
    archive, _ = make_artifact(tmp, keys, features=FEATURES, view_version=view_version)
    return archive, tmp / "pub.pem"


def transactions(rng: np.random.Generator, now: datetime, scale: float, tag: str) -> list[Event]:
    return [
        Event.create(
            type="txn.created",
            key=card,
            event_time=now - timedelta(seconds=float(rng.uniform(1, 60))),
            payload={"card": card, "amount": float(rng.lognormal(3, 0.5) * scale)},
            id=f"{tag}-{card}-{j}",
        )
        for card in CARDS
        for j in range(5)
    ]


class Traffic:
    """Clients calling the serve app's /v1/predict until stopped; counts answers by status."""

    def __init__(self, url: str, channels: list[str], seed: int) -> None:
        self.url, self.channels = url, channels
        self.rng = np.random.default_rng(seed)
        self.status: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                inst = [
                    {
                        "entity": str(self.rng.choice(CARDS)),
                        "features": {"channel": str(self.rng.choice(self.channels))},
                    }
                    for _ in range(10)
                ]
                r = c.post("/v1/predict", json={"instances": inst})
                self.status[r.status_code] = self.status.get(r.status_code, 0) + 1
                time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)


def read_stream(bus: Any, stream: str, want: int, procs: list[Proc]) -> list[Event]:
    """Every event of ``stream`` once it holds at least ``want`` (publishing is asynchronous)."""
    poll(f"{want} events in {stream}", lambda: bus.stream_info(stream).count >= want, 60, procs)
    return [s.event for s in bus.replay(stream)]


def alerts(prom: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"][
        "alerts"
    ]
    return out


# -- the loop -------------------------------------------------------------------------------


def test_drift_in_real_traffic_fires_the_alert_in_prometheus(
    tmp_path: Path, mlflow_server: MlflowServer
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
    archive, pub = signed_model(tmp_path, view_version)
    db_url = mlflow_server.db_url
    with open_registry(tracking_uri=mlflow_server.url, db_url=db_url) as reg:
        v = reg.register(archive, trust=TrustPolicy((pub.read_bytes(),)))
        reg.promote(MODEL, "champion", v.version, DECIDED)

    bus = open_bus(nats_url())
    procs: list[Proc] = []
    r = redis.Redis.from_url(redis_url())
    try:
        now = datetime.now(UTC)
        bus.publish_batch(txn_stream, transactions(rng, now, 1.0, "base"))
        wport, sport, mport = free_port(50), free_port(52), free_port(54)
        procs.append(
            Proc(
                "feature-worker",
                [sys.executable, worker_main.__file__],
                app_env(
                    {
                        "feature_worker": dict(
                            definitions=str(defs),
                            home=str(tmp_path / "worker"),
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
        with Traffic(serve_url, ["web", "pos"], seed=1) as base:
            poll("baseline traffic", lambda: base.status.get(200, 0) >= 60, 120, procs)
        assert set(base.status) == {200}, base.status
        answered = base.status[200] * 10  # instances per request
        baseline = read_stream(bus, pred_stream, answered, procs)
        assert len(baseline) == answered  # every prediction logged once
        ref = pl.DataFrame([e.json()["features"] for e in baseline])
        assert set(FEATURES) <= set(ref.columns)
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
        prom, prom_url = start_prometheus(
            tmp_path, {"feature-worker": wport, "serve": sport, "drift-monitor": mport}
        )
        procs.append(prom)

        def targets_up() -> bool:
            t = httpx.get(f"{prom_url}/api/v1/targets", timeout=5).json()["data"]
            health = {x["labels"]["job"]: x["health"] for x in t["activeTargets"]}
            return health == {"feature-worker": "up", "serve": "up", "drift-monitor": "up"}

        poll("Prometheus scraping every app", targets_up, 90, procs)
        groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert "keel-slo-model-drift" in {g["name"] for g in groups}
        assert not alerts(prom_url), "no alert may fire on healthy traffic"

        # inject drift at the source: amounts x25 for every card, traffic moves to ATMs
        bus.publish_batch(txn_stream, transactions(rng, datetime.now(UTC), 25.0, "drift"))
        with Traffic(serve_url, ["atm"], seed=2) as drifted:

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
        assert set(drifted.status) == {200}, drifted.status
        # exactly one drift.detected for the episode, naming the shifted features
        got = read_stream(bus, drift_stream, 1, procs)
        assert [e.type for e in got] == ["drift.detected"]
        drifted_features = set(got[0].json()["drifted"])
        assert drifted_features & {"sum_amount_1h", "mean_amount_1h", "channel"}, got[0].json()
        # the serving SLI series of the champion are in Prometheus
        q = httpx.get(
            f"{prom_url}/api/v1/query",
            params={"query": f'keel_serving_requests_total{{model="{MODEL}",outcome="ok"}}'},
            timeout=5,
        ).json()["data"]["result"]
        assert {s["metric"]["version"] for s in q} == {str(v.version)}
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
