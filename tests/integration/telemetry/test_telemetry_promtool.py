"""promtool (the real Prometheus tooling) on Keel's exposition and generated rules.

- `promtool check metrics` on a live /metrics scrape of every vocabulary set;
- `promtool check rules` on the committed rule file;
- `promtool test rules`: synthetic series that must, and must not, fire the
  multi-window burn-rate alerts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from keel.telemetry import (
    PLATFORM_ALERTS,
    PLATFORM_SLOS,
    ComponentMetrics,
    DriftMetrics,
    FeatureMetrics,
    ModelQualityMetrics,
    PipelinesMetrics,
    ServingMetrics,
    rule_groups,
    start_metrics_server,
)

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[3] / "ops" / "prometheus" / "keel-rules.yml"


def promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    assert (
        path
    ), "promtool not found: install Debian's `prometheus` package (tools/ci does it in CI)"
    return path


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _populated_registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    s = ServingMetrics(ComponentMetrics("serving", registry=reg, max_label_values=2))
    for model in ("fraud", "churn", "ltv"):  # the third collapses to __other__
        s.observe_request(model, "3", 0.012)
    s.observe_request("fraud", "3", 0.3, outcome="error")
    s.observe_batch("fraud", 16)
    f = FeatureMetrics(ComponentMetrics("features", registry=reg))
    f.set_freshness("card_txn_1h", now - timedelta(seconds=42), now)
    f.set_staleness("card_txn_1h", "txn_count", now - timedelta(seconds=3), now)
    f.count_events("card_txn_1h", 100)
    f.materialization.labels(feature_view="card_txn_1h").observe(12.0)
    f.lookup_latency.labels(store="redis").observe(0.0008)
    d = DriftMetrics(ComponentMetrics("drift", registry=reg))
    d.record_window("fraud", {("amount", "psi"): 0.27, ("amount", "ks"): 0.11}, drifted=["amount"])
    q = ModelQualityMetrics(ComponentMetrics("quality", registry=reg))
    q.set_quality("fraud", "3", "auc", 0.93)
    q.labels_joined.labels(model="fraud").inc(40)
    q.label_delay.labels(model="fraud").observe(3600)
    p = PipelinesMetrics(ComponentMetrics("pipelines", registry=reg), clock=lambda: 5000.0)
    p.record_started("fraud", "drift")
    p.observe_step("train", 42.0)
    p.record_finished("fraud", "gate_failed", ["quality"])
    p.set_active("fraud", 1000.0)
    return reg


def test_promtool_check_metrics_on_live_scrape() -> None:
    with start_metrics_server(_populated_registry(), host="127.0.0.1", port=0) as srv:
        body = httpx.get(f"{srv.url}/metrics").content
    assert b'model="__other__"' in body  # the guarded case is part of what promtool lints
    assert b"keel_serving_label_overflow_total" in body
    proc = run("check", "metrics", stdin=body)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_promtool_check_metrics_rejects_a_bad_exposition() -> None:
    """The oracle has teeth: a counter without _total is reported."""
    bad = b"# HELP keel_x_published Events.\n# TYPE keel_x_published counter\nkeel_x_published 1\n"
    proc = run("check", "metrics", stdin=bad)
    assert proc.returncode != 0 and "_total" in (proc.stdout + proc.stderr)


def test_promtool_check_rules_on_committed_file() -> None:
    proc = run("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = rule_groups(PLATFORM_SLOS, alerts=PLATFORM_ALERTS)["groups"]
    n_rules = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {n_rules} rules found" in proc.stdout


# --- promtool test rules -----------------------------------------------------------

_ALERTS: dict[str, dict[str, Any]] = {
    r["alert"]: r
    for g in rule_groups(PLATFORM_SLOS, alerts=PLATFORM_ALERTS)["groups"]
    for r in g["rules"]
    if "alert" in r
}


def expect(alert: str, **labels: str) -> dict[str, Any]:
    rule = _ALERTS[alert]
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


REQ = "keel_serving_requests_total"
LAT = "keel_serving_request_latency_seconds"

# The serving SLOs' burn-rate alerts on synthetic serve-app series.
SERVING_RULE_TESTS: list[dict[str, Any]] = [
    {
        # fraud: 20 errors per 1000 valid requests (2%) > 14.4 x 0.1% -> fast + slow burn.
        # 500 invalid requests/min would dilute the ratio under 1.44% if they counted.
        # steady: no errors -> nothing.
        "interval": "1m",
        "input_series": [
            series(REQ, "0+980x120", model="fraud", version="1", outcome="ok"),
            series(REQ, "0+20x120", model="fraud", version="1", outcome="error"),
            series(REQ, "0+500x120", model="fraud", version="1", outcome="invalid"),
            series(REQ, "0+1000x120", model="steady", version="1", outcome="ok"),
            series(REQ, "0+0x120", model="steady", version="1", outcome="error"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "70m",
                "alertname": "KeelServingAvailabilityBudgetBurnFast",
                "exp_alerts": [expect("KeelServingAvailabilityBudgetBurnFast", model="fraud")],
            },
            {
                "eval_time": "70m",
                "alertname": "KeelServingAvailabilityBudgetBurnSlow",
                "exp_alerts": [expect("KeelServingAvailabilityBudgetBurnSlow", model="fraud")],
            },
        ],
    },
    {
        # 0.4% errors: above 1x (ticket) but under 6x and 14.4x (no page).
        "interval": "1m",
        "input_series": [
            series(REQ, "0+996x420", model="slowburn", version="1", outcome="ok"),
            series(REQ, "0+4x420", model="slowburn", version="1", outcome="error"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "7h",
                "alertname": "KeelServingAvailabilityBudgetBurnFast",
                "exp_alerts": [],
            },
            {
                "eval_time": "7h",
                "alertname": "KeelServingAvailabilityBudgetBurnSlow",
                "exp_alerts": [expect("KeelServingAvailabilityBudgetBurnSlow", model="slowburn")],
            },
        ],
    },
    {
        # latency: 20% of requests over 100 ms > 14.4 x 1% -> page; 0.5% slow -> nothing.
        "interval": "1m",
        "input_series": [
            series(f"{LAT}_bucket", "0+80x120", model="slow", version="1", le="0.1"),
            series(f"{LAT}_count", "0+100x120", model="slow", version="1"),
            series(f"{LAT}_bucket", "0+995x120", model="fast", version="1", le="0.1"),
            series(f"{LAT}_count", "0+1000x120", model="fast", version="1"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "70m",
                "alertname": "KeelServingLatencyBudgetBurnFast",
                "exp_alerts": [expect("KeelServingLatencyBudgetBurnFast", model="slow")],
            },
        ],
    },
]

RULE_TESTS: list[dict[str, Any]] = [
    {
        # freshness: card goes stale (15 min) after one fresh hour; merchant stays fresh.
        "interval": "1m",
        "input_series": [
            series("keel_features_freshness_seconds", "10+0x60 900+0x60", feature_view="card"),
            series("keel_features_freshness_seconds", "10+0x120", feature_view="merchant"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "50m",
                "alertname": "KeelFeatureFreshnessBudgetBurnFast",
                "exp_alerts": [],
            },
            {
                "eval_time": "2h",
                "alertname": "KeelFeatureFreshnessBudgetBurnFast",
                "exp_alerts": [expect("KeelFeatureFreshnessBudgetBurnFast", feature_view="card")],
            },
        ],
    },
    {
        # drift: the policy decided DRIFT for fraud from minute 0; churn stays NONE; ltv's
        # windows are not judged (too few rows) -> the judged SLO burns for ltv only.
        "interval": "1m",
        "input_series": [
            series("keel_drift_decision", "1+0x120", model="fraud", decision="drift"),
            series("keel_drift_decision", "0+0x120", model="fraud", decision="not_judged"),
            series("keel_drift_decision", "0+0x120", model="churn", decision="drift"),
            series("keel_drift_decision", "0+0x120", model="churn", decision="not_judged"),
            series("keel_drift_decision", "0+0x120", model="ltv", decision="drift"),
            series("keel_drift_decision", "1+0x120", model="ltv", decision="not_judged"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "70m",
                "alertname": "KeelModelDriftBudgetBurnFast",
                "exp_alerts": [expect("KeelModelDriftBudgetBurnFast", model="fraud")],
            },
            {
                "eval_time": "70m",
                "alertname": "KeelModelDriftJudgedBudgetBurnFast",
                "exp_alerts": [expect("KeelModelDriftJudgedBudgetBurnFast", model="ltv")],
            },
        ],
    },
    {
        # label overflow: collapses in the last 15 minutes fire; none do not.
        "interval": "1m",
        "input_series": [
            series(
                "keel_drift_label_overflow_total",
                "0+1x20 20+0x60",
                job="drift-monitor",
                metric="keel_drift_feature_score",
                label="model",
            ),
        ],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "KeelLabelCardinalityOverflow",
                "exp_alerts": [
                    expect(
                        "KeelLabelCardinalityOverflow",
                        job="drift-monitor",
                        metric="keel_drift_feature_score",
                        label="model",
                    )
                ],
            },
            {"eval_time": "60m", "alertname": "KeelLabelCardinalityOverflow", "exp_alerts": []},
        ],
    },
]


def _write_tests(tmp_path: Path, tests: list[dict[str, Any]], rules: Path = RULES) -> Path:
    path = tmp_path / "keel-rules.test.yml"
    doc = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")  # JSON is YAML
    return path


def test_promtool_test_rules_burn_rate_alerts(tmp_path: Path) -> None:
    proc = run("test", "rules", str(_write_tests(tmp_path, RULE_TESTS)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules_serving_slos(tmp_path: Path) -> None:
    proc = run("test", "rules", str(_write_tests(tmp_path, SERVING_RULE_TESTS)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness has teeth: claiming the slow-burn case pages must fail."""
    wrong = json.loads(json.dumps(SERVING_RULE_TESTS[1]))
    wrong["alert_rule_test"][0]["exp_alerts"] = [
        expect("KeelServingAvailabilityBudgetBurnFast", model="slowburn")
    ]
    proc = run("test", "rules", str(_write_tests(tmp_path, [wrong])))
    assert proc.returncode != 0
    assert "KeelServingAvailabilityBudgetBurnFast" in proc.stdout + proc.stderr


GOLDEN_DIR = Path(__file__).resolve().parents[3] / "packages" / "telemetry" / "tests" / "golden"


@pytest.mark.parametrize("path", sorted(GOLDEN_DIR.glob("*.prom")), ids=lambda p: p.name)
def test_promtool_check_metrics_on_golden_files(path: Path) -> None:
    """The committed goldens are valid exposition for Prometheus' own linter too."""
    body = path.read_text(encoding="utf-8").replace("<created>", "1.7e9").encode()
    proc = run("check", "metrics", stdin=body)
    assert proc.returncode == 0, proc.stdout + proc.stderr
