"""The generated alerts can fire: every series they read is emitted by a running app, and a
synthetic fault on exactly those series fires each alert (promtool test rules).

1. Start the feature-worker, drift-monitor, serve and retrain-controller binaries
   (subprocesses, embedded bus and stores), feed them events / requests, scrape their
   /metrics and parse the scrape with prometheus_client's text parser (an implementation
   independent of the one that wrote it). The serve app answers one request, then its
   online store loses its table, so the next request is a server error (outcome="error");
   the retrain-controller runs one drift-triggered retrain to promotion with the test
   executors (tests/testutil/retrain_fakes.py). Training series are the controller's
   (`step="train"`): the trainer app is a batch job whose /metrics exists only while it runs.
2. Every metric selector in every rule of ops/prometheus/keel-rules.yml must match a
   scraped series (name and label matchers) -- a rule over a series nobody emits fails.
3. From the scraped label sets, build promtool unit tests: the same series with a fault
   (errors, slow requests, stale features, a DRIFT decision, unjudged windows, label
   overflow, a failed training step, a gate failure, a rollback, a broken provenance chain,
   a stuck run) must fire each alert with the scraped group labels; the same series healthy
   must fire none.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import keel_drift_monitor.main as monitor_main
import keel_feature_worker.main as worker_main
import keel_retrain_controller.main as controller_main
import keel_serve.main as serve_main
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families
from testutil import retrain_fakes
from testutil.apps import app_env, stop
from testutil.isolation import port_base
from testutil.serving_artifacts import Keys, make_artifact

from keel.drift import build_profile
from keel.events import Event, open_bus
from keel.telemetry import (
    PLATFORM_ALERTS,
    PLATFORM_SLOS,
    AlertSpec,
    AvailabilitySLO,
    CounterAlert,
    GaugeAlert,
    LatencySLO,
    rule_groups,
)
from keel.telemetry._slo import _ThresholdSLO

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # promtool; app subprocesses

RULES = Path(__file__).resolve().parents[3] / "ops" / "prometheus" / "keel-rules.yml"

DEFS = textwrap.dedent(
    """
    from datetime import timedelta
    from keel.features import Aggregation, Entity, EventSource, FeatureView

    card_txn = FeatureView(
        name="card_txn",
        source=EventSource("txn.created", stream="transactions"),
        entities=[Entity("card")],
        fields={"amount": "float"},
        features=[Aggregation("count", None, timedelta(hours=1))],
        id_column="event_id",
    )
    """
)


@dataclass(frozen=True)
class Sample:
    job: str
    name: str
    labels: dict[str, str]


def _scrape(proc: subprocess.Popen[str], port: int, ready: str, deadline: float) -> str:
    """Poll /metrics until `ready` appears in it (or the process dies)."""
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"app exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            if ready in text:
                return text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no {ready!r} on :{port} in time"
        time.sleep(0.2)


def _serve_scrape(proc: subprocess.Popen[str], port: int, home: Path, deadline: float) -> str:
    """One good request, then one that fails on the server's side (the online store's table
    is gone: a store failure is the server's fault, outcome="error"), then /metrics."""
    url = f"http://127.0.0.1:{port}"
    body = {"instances": [{"entity": "c1", "features": {"channel": "web"}}]}
    _scrape(proc, port, "keel_serving_", deadline)  # up
    assert httpx.post(f"{url}/v1/predict", json=body, timeout=10).status_code == 200
    db = sqlite3.connect(home / "online.db")
    try:
        db.execute("DROP TABLE online_features")
        db.commit()
    finally:
        db.close()
    failed = httpx.post(f"{url}/v1/predict", json=body, timeout=10)
    assert failed.status_code >= 500, failed.text
    return _scrape(proc, port, 'outcome="error"', deadline)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Sample]]:
    tmp = tmp_path_factory.mktemp("apps")
    home = tmp / "home"
    home.mkdir()
    bus_url = f"sqlite:///{home}/events.db"
    defs = tmp / "defs.py"
    defs.write_text(DEFS)
    now = datetime.now(UTC).replace(microsecond=0)
    rng = np.random.default_rng(3)
    ref = pl.DataFrame({"amount": rng.lognormal(3, 1, 2000)})
    profile = build_profile(ref).save(tmp / "profile.json")
    with open_bus(bus_url) as bus:
        bus.publish_batch(
            "transactions",
            [
                Event.create(
                    type="txn.created",
                    key="card-1",
                    event_time=now - timedelta(minutes=i),
                    payload={"amount": 2.0},
                )
                for i in range(3)
            ],
        )
        t0 = datetime(2026, 3, 1, tzinfo=UTC)
        bus.publish_batch(
            "predictions",
            [
                Event.create(
                    type="prediction.made",
                    key=f"k{i}",
                    event_time=t0 + timedelta(seconds=7 * i),
                    payload={"features": {"amount": float(rng.lognormal(3, 1))}},
                )
                for i in range(1200)  # 2h20m: two hourly windows close
            ],
        )
        bus.publish("drift", retrain_fakes.drift_event("credit", t0))
    keys = Keys()
    (tmp / "pub.pem").write_bytes(keys.pub)
    artifact, _ = make_artifact(tmp, keys, seed=1)
    serve_home = tmp / "serve-home"
    serve_home.mkdir()
    from keel.features import open_online_store

    store = open_online_store(None, home=serve_home)
    store.write("card_stats:v1", [("c1", {"f0": 0.5, "f1": 1.5, "f2": -2.0}, now)])
    store.close()
    wport, mport, sport, cport = port_base(71), port_base(72), port_base(73), port_base(74)
    worker_env = app_env(
        {
            "feature_worker": {
                "home": str(home),
                "definitions": str(defs),
                "metrics_port": str(wport),
                "bus_url": bus_url,
            }
        },
        pythonpath=True,
    )
    monitor_env = app_env(
        {
            "drift_monitor": {
                "profile": str(profile),
                "home": str(home),
                "bus_url": bus_url,
                "metrics_port": str(mport),
                "model": "fraud",
                "min_samples": "50",
            }
        },
        pythonpath=True,
    )
    serve_env = app_env(
        {
            "serve": {
                "model": str(artifact),
                "trust_keys": json.dumps([str(tmp / "pub.pem")]),
                "home": str(serve_home),
                "port": str(sport),
            }
        },
        pythonpath=True,
    )
    controller_env = app_env(
        {
            "retrain_controller": {
                "home": str(home),
                "bus_url": bus_url,
                "executors": "testutil.retrain_fakes:build_executors",
                "metrics_port": str(cport),
                "canary_window_s": "0",
                "poll_timeout_s": "0.2",
            }
        },
        pythonpath=True,
    )
    apps = (
        (worker_main, worker_env),
        (monitor_main, monitor_env),
        (serve_main, serve_env),
        (controller_main, controller_env),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(main.__file__)], env=env, stderr=subprocess.PIPE, text=True
        )
        for main, env in apps
    ]
    try:
        deadline = time.monotonic() + 120
        texts = {
            "feature-worker": _scrape(
                procs[0],
                wport,
                'keel_features_freshness_seconds{feature_view="card_txn"}',  # applied
                deadline,
            ),
            "drift-monitor": _scrape(procs[1], mport, "keel_drift_window_rows{", deadline),
            "serve": _serve_scrape(procs[2], sport, serve_home, deadline),
            "retrain-controller": _scrape(
                procs[3],
                cport,
                'keel_pipelines_runs_finished_total{model="credit",status="promoted"} 1.0',
                deadline,
            ),
        }
    finally:
        for p in procs:
            stop(p, timeout_s=20)
    samples = []
    for job, text in texts.items():
        for family in text_string_to_metric_families(text):
            samples.append(Sample(job, f"__family__{family.name}", {"type": family.type}))
            for s in family.samples:
                samples.append(Sample(job, s.name, dict(s.labels)))
    yield samples


# -- 2. every referenced series exists ---------------------------------------------------

_SELECTOR = re.compile(
    r"(?P<name>\b[a-zA-Z_][a-zA-Z0-9_]*)?\{(?P<matchers>[^{}]*)\}|\b(?P<bare>keel_[a-zA-Z0-9_]+)\b"
)
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _matches(labels: dict[str, str], name: str, matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = name if label == "__name__" else labels.get(label, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def referenced_selectors() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(rule, metric name or "", matchers) for every raw keel_* selector in the rules
    (the committed file is exactly this data: test_telemetry_ops_files checks it)."""
    out = []
    for group in rule_groups(PLATFORM_SLOS, alerts=PLATFORM_ALERTS)["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            for m in _SELECTOR.finditer(rule["expr"]):
                metric = m.group("name") or m.group("bare") or ""
                if metric.startswith(("slo:", "rate", "increase", "avg_over_time", "by")):
                    continue
                matchers = _MATCHER.findall(m.group("matchers") or "")
                if metric.startswith("keel_") or any(lbl == "__name__" for lbl, _, _ in matchers):
                    out.append((f"{group['name']}/{name}", metric, matchers))
    return out


def test_every_series_a_rule_reads_is_emitted_by_a_running_app(scraped: list[Sample]) -> None:
    selectors = referenced_selectors()
    assert len(selectors) >= 10  # the parser found the selectors
    missing = []
    for rule, metric, matchers in selectors:
        if metric:
            hit = any(s.name == metric and _matches(s.labels, s.name, matchers) for s in scraped)
        else:  # {__name__=~"..."}: a declared family is enough (no sample until it happens)
            names = [
                s.name.removeprefix("__family__")
                + ("_total" if s.labels["type"] == "counter" else "")
                for s in scraped
                if s.name.startswith("__family__")
            ]
            hit = any(_matches({}, n, matchers) for n in names)
        if not hit:
            missing.append((rule, metric, matchers))
    assert not missing, f"rules read series no app emits: {missing}"


def test_selector_check_has_teeth(scraped: list[Sample]) -> None:
    assert not any(
        s.name == "keel_drift_decision" and _matches(s.labels, s.name, [("decision", "=", "psi")])
        for s in scraped
    )


# -- 3. each alert fires on a synthetic fault over the scraped series --------------------

# 90 one-minute samples; at 80m every window pair has data (a rate or average over a
# window longer than the data uses what there is), so Fast and Slow alerts both decide.
STEPS = 90
EVAL = "80m"


def _series(sample: Sample, values: str) -> dict[str, str]:
    labels = {**sample.labels, "job": sample.job}
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{sample.name}{{{inner}}}", "values": values}


def _alerts() -> dict[str, dict[str, Any]]:
    return {
        r["alert"]: r
        for g in rule_groups(PLATFORM_SLOS, alerts=PLATFORM_ALERTS)["groups"]
        for r in g["rules"]
        if "alert" in r
    }


def _case(
    scraped: list[Sample], slo: Any, *, faulty: bool
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(input series, expected alert group labels) for one SLO, from the scraped series."""
    series, groups = [], []
    if isinstance(slo, AvailabilitySLO):
        error = {a: c for a, _, c in _MATCHER.findall(slo.error_matchers)}
        for s in scraped:
            if s.name != slo.metric:
                continue
            bad = all(s.labels.get(k) == v for k, v in error.items())
            rate = (50 if faulty else 0) if bad else 1000
            series.append(_series(s, f"0+{rate}x{STEPS}"))
            if bad and faulty:
                groups.append({k: s.labels[k] for k in slo.group_by})
    elif isinstance(slo, LatencySLO):
        # 100 requests a minute; with the fault only half are within the threshold
        for s in scraped:
            if s.name == f"{slo.histogram}_bucket" and s.labels.get("le") == slo.le:
                series.append(_series(s, f"0+{50 if faulty else 100}x{STEPS}"))
                if faulty:
                    group = {k: s.labels[k] for k in slo.group_by}
                    groups += [group] if group not in groups else []
            elif s.name in (f"{slo.histogram}_bucket", f"{slo.histogram}_count"):
                series.append(_series(s, f"0+100x{STEPS}"))
    else:
        assert isinstance(slo, _ThresholdSLO)
        wanted = [(a, c) for a, _, c in _MATCHER.findall(slo.matchers)]
        for s in scraped:
            if s.name != slo.gauge:
                continue
            selected = all(s.labels.get(k) == v for k, v in wanted)
            value = slo.threshold + 1 if (selected and faulty) else 0
            series.append(_series(s, f"{value:g}+0x{STEPS}"))
            if selected and faulty:
                groups.append({k: s.labels[k] for k in slo.group_by})
    assert series, f"{slo.name}: no scraped series for it"
    return series, groups


def _rule_test(scraped: list[Sample], *, faulty: bool) -> dict[str, Any]:
    """One promtool test group: every SLO's scraped series (faulty or healthy) and the
    scraped label-overflow counters, with the alerts expected at EVAL."""
    alerts = _alerts()
    series: list[dict[str, str]] = []
    by_name: dict[str, dict[str, str]] = {}  # SLOs on one gauge (drift decision) share series
    checks = []
    for slo in PLATFORM_SLOS:
        slo_series, groups = _case(scraped, slo, faulty=faulty)
        assert groups or not faulty, f"{slo.name}: the fault touches no group"
        for one in slo_series:
            seen = by_name.get(one["series"])
            if seen is None:
                by_name[one["series"]] = one
                series.append(one)
            elif not seen["values"].startswith("0+0x"):
                continue  # keep the fault another SLO put on this series
            else:
                seen["values"] = one["values"]
        for alert in slo.alerts:
            rule = alerts[slo.alert_name(alert)]
            checks.append(
                {
                    "eval_time": EVAL,
                    "alertname": rule["alert"],
                    "exp_alerts": [
                        {
                            "exp_labels": {**rule["labels"], **g},
                            "exp_annotations": rule["annotations"],
                        }
                        for g in groups
                    ],
                }
            )
    # label overflow: the scraped overflow counter families, collapsing values all along
    families = sorted(
        {
            (s.job, s.name.removeprefix("__family__"))
            for s in scraped
            if s.name.endswith("label_overflow")
        }
    )
    assert families, "no app declares a label_overflow_total counter"
    rule = alerts["KeelLabelCardinalityOverflow"]
    for job, name in families:
        series.append(
            {
                "series": f'{name}_total{{job="{job}",metric="{name}",label="feature"}}',
                "values": f"0+{1 if faulty else 0}x{STEPS}",
            }
        )
    checks.append(
        {
            "eval_time": EVAL,
            "alertname": rule["alert"],
            "exp_alerts": [
                {
                    "exp_labels": {
                        **rule["labels"],
                        "job": job,
                        "metric": name,
                        "label": "feature",
                    },
                    "exp_annotations": rule["annotations"],
                }
                for job, name in families
            ]
            if faulty
            else [],
        }
    )
    for spec in PLATFORM_ALERTS:
        alert_series, alert_groups = _alert_case(scraped, spec, faulty=faulty)
        assert alert_series, f"{spec.name}: no scraped series for it"
        assert alert_groups or not faulty, f"{spec.name}: the fault touches no group"
        series += [x for x in alert_series if x["series"] not in by_name]
        rule = alerts[spec.name]
        checks.append(
            {
                "eval_time": EVAL,
                "alertname": spec.name,
                "exp_alerts": [
                    {"exp_labels": {**rule["labels"], **g}, "exp_annotations": rule["annotations"]}
                    for g in alert_groups
                ],
            }
        )
    return {"interval": "1m", "input_series": series, "alert_rule_test": checks}


def _alert_case(
    scraped: list[Sample], alert: AlertSpec, *, faulty: bool
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(input series, expected alert group labels) for one non-SLO alert: its counter
    rising / its gauge past the threshold, on the scraped series it selects."""
    wanted = _MATCHER.findall(alert.matchers)
    series, groups = [], []
    for s in scraped:
        if s.name != alert.metric:
            continue
        selected = _matches(s.labels, s.name, wanted)
        if isinstance(alert, CounterAlert):
            values = f"0+{1 if (selected and faulty) else 0}x{STEPS}"
        else:
            assert isinstance(alert, GaugeAlert)
            bad = alert.threshold + 1 if alert.op == ">" else alert.threshold - 1
            good = 0.0 if alert.op == ">" else alert.threshold
            values = f"{bad if (selected and faulty) else good:g}+0x{STEPS}"
        series.append(_series(s, values))
        if selected and faulty:
            labels = {**s.labels, "job": s.job}
            group = {k: labels[k] for k in alert.group_by if k in labels}
            groups += [group] if group not in groups else []
    return series, groups


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert (
        promtool
    ), "promtool not found: install Debian's `prometheus` package (tools/ci/services.sh)"
    path = tmp_path / "from-scrapes.test.yml"
    doc = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_each_alert_fires_on_a_fault_and_none_on_the_healthy_scraped_series(
    scraped: list[Sample], tmp_path: Path
) -> None:
    faulty = _rule_test(scraped, faulty=True)
    covered = {c["alertname"] for c in faulty["alert_rule_test"]}
    assert covered == set(_alerts()), set(_alerts()) ^ covered  # every alert is exercised
    assert all(c["exp_alerts"] for c in faulty["alert_rule_test"])
    proc = _promtool_test(tmp_path, [faulty, _rule_test(scraped, faulty=False)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_harness_has_teeth(scraped: list[Sample], tmp_path: Path) -> None:
    """Expecting the faulty alerts on the healthy series must fail."""
    wrong = {
        **_rule_test(scraped, faulty=False),
        "alert_rule_test": _rule_test(scraped, faulty=True)["alert_rule_test"],
    }
    assert _promtool_test(tmp_path, [wrong]).returncode != 0
