"""SLO specs: validation, rule rendering, dashboard and runbook generation."""

from __future__ import annotations

import json
import re

import pytest

from keel.telemetry import (
    PLATFORM_ALERTS,
    PLATFORM_SLOS,
    AvailabilitySLO,
    BurnRateAlert,
    BurnRateWindow,
    CounterAlert,
    DriftSLO,
    FreshnessSLO,
    GaugeAlert,
    InvalidSLOError,
    LatencySLO,
    render_dashboard,
    render_rules,
    render_runbooks,
    rule_groups,
)
from keel.telemetry._slo import parse_duration
from keel.telemetry.generate import DASHBOARD_PATH, RULES_PATH, main, ops_files

AVAIL = {
    "name": "api-availability",
    "objective": 0.999,
    "description": "Requests that succeed.",
    "metric": "keel_serving_requests_total",
    "error_matchers": 'outcome="error"',
}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"name": "Bad Name"}, "kebab-case"),
        ({"objective": 1.0}, "between 0 and 1"),
        ({"objective": 1}, "between 0 and 1"),
        ({"objective": 0.0}, "between 0 and 1"),
        ({"description": " "}, "description"),
        ({"metric": "keel_serving_requests"}, "_total"),
        ({"error_matchers": "outcome=error"}, "matchers"),
        ({"error_matchers": ""}, "required"),
        ({"group_by": "model"}, "tuple"),
        ({"group_by": ("slo",)}, "group_by"),
        ({"group_by": ("model", "model")}, "duplicate"),
        ({"period": "1d"}, "longer than the period"),
        ({"period": "30 days"}, "duration"),
    ],
)
def test_invalid_availability_specs(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidSLOError, match=re.escape(fragment)):
        AvailabilitySLO(**{**AVAIL, **changes})  # type: ignore[arg-type]


def test_latency_threshold_must_be_a_bucket_bound() -> None:
    with pytest.raises(InvalidSLOError, match="bucket bound"):
        LatencySLO(
            name="lat",
            objective=0.99,
            description="d",
            histogram="h_seconds",
            threshold_seconds=0.2,
        )
    ok = LatencySLO(
        name="lat", objective=0.99, description="d", histogram="h_seconds", threshold_seconds=1.0
    )
    assert ok.le == "1.0"  # prometheus_client writes 1.0, not 1
    assert 'le="1.0"' in ok.error_ratio_expr("5m")


def test_burn_rate_windows_are_validated() -> None:
    with pytest.raises(InvalidSLOError, match="shorter"):
        BurnRateWindow("5m", "1h", 14.4)
    with pytest.raises(InvalidSLOError, match="burn rate"):
        BurnRateWindow("1h", "5m", 0)
    with pytest.raises(InvalidSLOError, match="CamelCase"):
        BurnRateAlert("fast", "critical", (BurnRateWindow("1h", "5m", 14.4),))
    with pytest.raises(InvalidSLOError):
        BurnRateAlert("Fast", "page", (BurnRateWindow("1h", "5m", 14.4),))  # type: ignore[arg-type]
    assert parse_duration("3d") == 3 * 86400


def test_duplicate_slo_names_are_rejected() -> None:
    slo = AvailabilitySLO(**AVAIL)  # type: ignore[arg-type]
    with pytest.raises(InvalidSLOError, match="unique"):
        render_rules([slo, slo])


def test_each_alert_uses_only_series_its_group_records() -> None:
    groups = rule_groups(PLATFORM_SLOS)["groups"]
    assert len(groups) == len(PLATFORM_SLOS) + 1
    for slo, group in zip(PLATFORM_SLOS, groups, strict=False):
        recorded = {r["record"] for r in group["rules"] if "record" in r}
        alerts = [r for r in group["rules"] if "alert" in r]
        assert [a["alert"] for a in alerts] == [slo.alert_name(a) for a in slo.alerts]
        for alert, spec in zip(alerts, slo.alerts, strict=True):
            used = set(re.findall(r"(slo:[a-z_:0-9]+)\{", alert["expr"]))
            assert used and used <= recorded, (alert["alert"], used - recorded)
            for w in spec.windows:
                assert f"slo:sli_error:ratio_rate{w.long}" in used
                assert f"slo:sli_error:ratio_rate{w.short}" in used
                assert f"({w.burn_rate:g} * (1 - {slo.objective:g}))" in alert["expr"]
            assert alert["labels"]["severity"] == spec.severity
            assert alert["labels"]["slo"] == slo.name
            assert alert["annotations"]["runbook_url"] == f"ops/runbooks/{alert['alert']}.md"
        assert f"slo:sli_error:ratio_rate{slo.period}" in recorded


def test_default_policy_is_the_sre_workbook_table() -> None:
    slo = AvailabilitySLO(**AVAIL)  # type: ignore[arg-type]
    pairs = [(a.severity, w.long, w.short, w.burn_rate) for a in slo.alerts for w in a.windows]
    assert pairs == [
        ("critical", "1h", "5m", 14.4),
        ("critical", "6h", "30m", 6.0),
        ("warning", "3d", "6h", 1.0),
    ]
    # budget share spent when each fires: 2%, 5%, 10% of 30 days
    period = parse_duration(slo.period)
    spent = [
        round(w.burn_rate * parse_duration(w.long) / period, 3)
        for a in slo.alerts
        for w in a.windows
    ]
    assert spent == [0.02, 0.05, 0.1]


def test_threshold_slos_record_an_indicator() -> None:
    fresh = FreshnessSLO(
        name="fresh",
        objective=0.99,
        description="d",
        gauge="keel_features_freshness_seconds",
        max_age_seconds=300.0,
        group_by=("feature_view",),
    )
    drift = DriftSLO(
        name="drift",
        objective=0.95,
        description="d",
        gauge="keel_drift_feature_score",
        matchers='method="psi"',
        max_score=0.2,
        group_by=("model",),
    )
    assert (
        fresh.indicator_expr()
        == "max by (feature_view) (keel_features_freshness_seconds) > bool 300"
    )
    assert (
        drift.indicator_expr()
        == 'max by (model) (keel_drift_feature_score{method="psi"}) > bool 0.2'
    )
    rules = rule_groups([fresh])["groups"][0]["rules"]
    ratio_5m = next(r for r in rules if r.get("record") == "slo:sli_error:ratio_rate5m")
    assert ratio_5m["expr"] == 'avg_over_time(slo:sli_error:indicator{slo="fresh"}[5m])'


def test_custom_runbook_base() -> None:
    text = render_rules(PLATFORM_SLOS, runbook_base="https://example.org/keel/ops/runbooks/")
    assert "https://example.org/keel/ops/runbooks/KeelFeatureFreshnessBudgetBurnFast.md" in text


def test_dashboard_is_deterministic_with_unique_ids_and_no_overlaps() -> None:
    text = render_dashboard(PLATFORM_SLOS)
    assert text == render_dashboard(PLATFORM_SLOS)
    model = json.loads(text)
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, p["title"]
        cells |= mine
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert len(rows) == len(PLATFORM_SLOS) + 1
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for slo in PLATFORM_SLOS:
        assert f'slo:sli_error:ratio_rate1h{{slo="{slo.name}"}}' in exprs


def test_runbooks_cover_every_alert() -> None:
    books = render_runbooks(PLATFORM_SLOS, PLATFORM_ALERTS)
    rules = [
        r
        for g in rule_groups(PLATFORM_SLOS, alerts=PLATFORM_ALERTS)["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    assert sorted(books) == sorted(f"{r['alert']}.md" for r in rules)
    assert {a.name for a in PLATFORM_ALERTS} <= {r["alert"] for r in rules}
    for name, text in books.items():
        assert text.count("\n## ") == 3, name  # what it means / how to diagnose / what to do
        assert f"# {name.removesuffix('.md')}\n" in text
    for rule in rules:  # every alert links its own runbook
        assert rule["annotations"]["runbook_url"] == f"ops/runbooks/{rule['alert']}.md"


def test_non_slo_alerts_render_expr_for_and_labels() -> None:
    counter = CounterAlert(
        name="KeelThingFailed",
        summary="a thing failed",
        description="A thing failed.",
        metric="keel_pipelines_step_failures_total",
        matchers='step="train"',
        window="30m",
        group_by=("model",),
        diagnose=("look",),
        mitigate=("fix",),
    )
    gauge = GaugeAlert(
        name="KeelChainBroken",
        summary="broken",
        description="Broken.",
        metric="keel_pipelines_provenance_intact",
        op="<",
        threshold=1,
        for_="2m",
        severity="critical",
        diagnose=("look",),
        mitigate=("fix",),
    )
    group = rule_groups([], alerts=[counter, gauge])["groups"][-1]
    assert group["name"] == "keel-alerts"
    c, g = group["rules"]
    assert c["expr"] == (
        'sum by (model) (increase(keel_pipelines_step_failures_total{step="train"}[30m])) > 0'
    )
    assert "for" not in c and c["labels"] == {"severity": "warning", "team": "ml-platform"}
    assert g["expr"] == "min (keel_pipelines_provenance_intact) < 1" and g["for"] == "2m"
    assert g["labels"]["severity"] == "critical"
    assert g["annotations"]["runbook_url"] == "ops/runbooks/KeelChainBroken.md"
    book = render_runbooks([], [gauge])["KeelChainBroken.md"]
    assert "min (keel_pipelines_provenance_intact) < 1" in book and "It pages" in book


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ThingFailed"}, "starting with 'Keel'"),
        ({"metric": "pipelines_failures_total"}, "is not keel_"),
        ({"metric": "keel_pipelines_provenance_intact"}, "is not a counter"),
        ({"matchers": "step=train"}, "matchers"),
        ({"window": "1 hour"}, "duration"),
        ({"group_by": ("Model-Name",)}, "not label names"),
        ({"diagnose": ()}, "diagnose and mitigate"),
    ],
)
def test_non_slo_alert_specs_are_validated(kwargs: dict[str, object], message: str) -> None:
    spec: dict[str, object] = {
        "name": "KeelThingFailed",
        "summary": "s",
        "description": "d",
        "metric": "keel_pipelines_step_failures_total",
        "diagnose": ("a",),
        "mitigate": ("b",),
        **kwargs,
    }
    with pytest.raises(InvalidSLOError, match=message):
        CounterAlert(**spec)  # type: ignore[arg-type]


def test_alert_names_must_be_unique_across_slos_and_alerts() -> None:
    dup = CounterAlert(
        name="KeelLabelCardinalityOverflow",
        summary="s",
        description="d",
        metric="keel_x_total",
        diagnose=("a",),
        mitigate=("b",),
    )
    with pytest.raises(InvalidSLOError, match="alert names must be unique"):
        rule_groups(PLATFORM_SLOS, alerts=[dup])


def test_generate_writes_then_checks(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path)) / "ops"
    assert main([str(root), "--check"]) == 1  # nothing there yet
    assert main([str(root)]) == 0
    assert main([str(root), "--check"]) == 0
    files = ops_files()
    assert {RULES_PATH, DASHBOARD_PATH} <= set(files)
    assert (root / RULES_PATH).read_text() == files[RULES_PATH]
    (root / DASHBOARD_PATH).write_text("{}")
    assert main([str(root), "--check"]) == 1
