"""Render SLO specs to one Grafana dashboard (JSON model, schemaVersion 39).

One row per SLO: SLI and error budget remaining over the budget period
(stats), burn rate per alert window against its thresholds, and the raw
signal the SLI is computed from. Panel ids and positions are deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from keel.telemetry._slo import SLOSpec, parse_duration

__all__ = ["DASHBOARD_UID", "dashboard", "render_dashboard"]

DASHBOARD_UID = "keel-slo"
_DS = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, legend: str, ref: int) -> dict[str, Any]:
    return {"datasource": _DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + ref)}


def _stat(
    pid: int, title: str, expr: str, x: int, y: int, red_below: float, desc: str
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": _DS,
        "gridPos": {"h": 6, "w": 4, "x": x, "y": y},
        "targets": [_target(expr, "", 0)],
        "fieldConfig": {
            "defaults": {
                "unit": "percentunit",
                "decimals": 3,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "red", "value": None},
                        {"color": "green", "value": red_below},
                    ],
                },
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def _timeseries(
    pid: int,
    title: str,
    targets: list[dict[str, Any]],
    x: int,
    y: int,
    w: int,
    unit: str,
    desc: str,
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def _slo_panels(slo: SLOSpec, first_id: int, y: int) -> list[dict[str, Any]]:
    sel = f'{{slo="{slo.name}"}}'
    budget = f"(1 - {slo.objective!r})"
    period_ratio = f"slo:sli_error:ratio_rate{slo.period}{sel}"
    legend = " ".join("{{" + g + "}}" for g in slo.group_by)
    burn_targets = []
    for i, window in enumerate(
        sorted({w.long for a in slo.alerts for w in a.windows}, key=parse_duration)
    ):
        burn_targets.append(
            _target(
                f"slo:sli_error:ratio_rate{window}{sel} / {budget}", f"{window} {legend}".strip(), i
            )
        )
    thresholds = ", ".join(
        f"{w.burn_rate:g}x ({a.severity}, {w.long}/{w.short})"
        for a in slo.alerts
        for w in a.windows
    )
    signal = [_target(expr, leg, i) for i, (leg, expr) in enumerate(slo.signal_exprs())]
    return [
        {
            "id": first_id,
            "type": "row",
            "title": f"{slo.name}: {slo.objective_text()} ({slo.kind})",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        },
        _stat(
            first_id + 1,
            f"SLI ({slo.period})",
            f"1 - {period_ratio}",
            0,
            y + 1,
            slo.objective,
            slo.description,
        ),
        _stat(
            first_id + 2,
            f"Error budget remaining ({slo.period})",
            f"1 - {period_ratio} / {budget}",
            4,
            y + 1,
            0.0,
            "Share of the period's error budget not yet spent (negative: overspent).",
        ),
        _timeseries(
            first_id + 3,
            "Burn rate",
            burn_targets,
            8,
            y + 1,
            8,
            "short",
            f"Error ratio / error budget per long alert window. Alert thresholds: {thresholds}.",
        ),
        _timeseries(
            first_id + 4,
            "Signal",
            signal,
            16,
            y + 1,
            8,
            "s" if slo.kind in ("latency", "freshness") else "short",
            "The raw metric the SLI is computed from.",
        ),
    ]


def dashboard(slos: Sequence[SLOSpec]) -> dict[str, Any]:
    """The Grafana dashboard model for `slos`."""
    panels: list[dict[str, Any]] = []
    y = 0
    for i, slo in enumerate(slos):
        panels.extend(_slo_panels(slo, first_id=i * 10 + 1, y=y))
        y += 9
    tid = len(slos) * 10 + 1
    panels.append(
        {
            "id": tid,
            "type": "row",
            "title": "Telemetry health",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
    )
    panels.append(
        _timeseries(
            tid + 1,
            "Label values collapsed by the cardinality guard",
            [
                _target(
                    'sum by (job, metric, label) (rate({__name__=~"keel_.+_label_overflow_total"}[5m]))',
                    "{{metric}} {{label}}",
                    0,
                )
            ],
            0,
            y + 1,
            24,
            "short",
            "Non-zero means a label exceeded its limit and new values are counted under __other__.",
        )
    )
    return {
        "uid": DASHBOARD_UID,
        "title": "Keel SLOs",
        "description": "Generated by `python -m keel.telemetry.generate ops/` from keel.telemetry SLO specs.",
        "tags": ["keel", "slo"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def render_dashboard(slos: Sequence[SLOSpec]) -> str:
    """The dashboard as deterministic JSON text."""
    return json.dumps(dashboard(slos), indent=2, sort_keys=True) + "\n"
