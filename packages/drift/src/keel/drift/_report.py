"""DriftReport: a stable, versioned JSON document and a self-contained HTML page.

The JSON (``format: keel.drift.report``, ``version: 1``) holds every window's
results and decisions - statistics and binned proportions only, never raw rows.
The HTML page inlines small SVG charts (no scripts, no external files): the
drift score over time for the most drifted features, then, for the latest
window, reference-vs-current distributions of the drifted features, the data
quality findings and a table of every column. PNGs for the CLI come from
matplotlib (Agg canvas, no pyplot global state), imported only when asked for.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.drift._check import DriftResult, FeatureDrift
from keel.drift._errors import InvalidInputError
from keel.drift._policy import DriftPolicy, Level, PolicyDecision
from keel.drift._profile import ReferenceProfile
from keel.drift._svg import (
    CUR_COLOR,
    DECISION_COLORS,
    DECISION_LABELS,
    PALETTE,
    REF_COLOR,
    bar_chart,
    decision_strip,
    line_chart,
)

REPORT_FORMAT = "keel.drift.report"
REPORT_VERSION = 1


@dataclass(frozen=True)
class ReportWindow:
    """One evaluated window: its results, the policy's decision, optional performance figures."""

    result: DriftResult
    decision: PolicyDecision | None = None
    performance: Mapping[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result.to_dict(),
            "decision": None if self.decision is None else self.decision.to_dict(),
            "performance": dict(self.performance),
        }


def json_safe(obj: Any) -> Any:
    """A JSON-safe copy: NaN/inf become None (strict JSON has no NaN), tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


@dataclass(frozen=True)
class DriftReport:
    """Windows of drift results against one reference profile."""

    title: str
    reference: ReferenceProfile
    windows: Sequence[ReportWindow]
    generated_at: str
    policy: DriftPolicy | None = None
    notes: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.windows:
            raise InvalidInputError("a report needs at least one window")

    @property
    def latest(self) -> ReportWindow:
        return self.windows[-1]

    def summary(self) -> dict[str, Any]:
        last = self.latest
        decisions = [w.decision for w in self.windows if w.decision is not None]
        return {
            "windows": len(self.windows),
            "latest_decision": last.decision.decision.value if last.decision else None,
            "drift_windows": sum(1 for d in decisions if d.decision is Level.DRIFT),
            "error_windows": sum(1 for d in decisions if d.decision is Level.ERROR),
            "not_judged_windows": sum(1 for d in decisions if d.decision is Level.NOT_JUDGED),
            "episodes": sum(1 for d in decisions if d.episode_start),
            "drifted_features": list(last.decision.drifted) if last.decision else [],
            "quality_issues": len(last.result.quality),
        }

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        ref = self.reference
        return json_safe(
            {
                "format": REPORT_FORMAT,
                "version": REPORT_VERSION,
                "title": self.title,
                "generated_at": self.generated_at,
                "reference": {
                    "row_count": ref.row_count,
                    "columns": {name: s.kind for name, s in ref.columns.items()},
                    "metadata": dict(ref.metadata),
                },
                "summary": self.summary(),
                "notes": list(self.notes),
                "windows": [w.to_dict() for w in self.windows],
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False)

    # -- HTML ---------------------------------------------------------------------------
    def _scores(self, w: ReportWindow) -> dict[str, float]:
        if w.decision is not None:
            return dict(w.decision.scores)
        policy = self.policy or DriftPolicy()
        return policy.scores(w.result)

    def to_html(self, max_feature_plots: int = 24, max_lines: int = 8) -> str:
        esc = html.escape
        policy = self.policy or DriftPolicy()
        last = self.latest
        scores_by_window = [self._scores(w) for w in self.windows]
        peak: dict[str, float] = {}
        for sc in scores_by_window:
            for k, v in sc.items():
                if math.isfinite(v):
                    peak[k] = max(peak.get(k, 0.0), v)
        top = sorted(peak, key=lambda k: -peak[k])[:max_lines]
        x_labels = [
            _short_time(w.result.window_end) or str(i + 1) for i, w in enumerate(self.windows)
        ]
        score_chart = line_chart(
            {name: [sc.get(name) for sc in scores_by_window] for name in top},
            x_labels,
            thresholds={"warn": policy.numeric.warn, "drift": policy.numeric.drift}
            if policy.numeric.method == policy.categorical.method
            else None,
            title=f"Drift score per window ({policy.numeric.method}), most drifted features",
            y_label="score",
        )
        strip = (
            decision_strip(
                [None if w.decision is None else w.decision.decision.value for w in self.windows],
                x_labels,
            )
            + _legend()
        )
        share_series: dict[str, list[float | None]] = {
            "drifted share": [w.decision.drift_share if w.decision else None for w in self.windows],
            "warn-or-worse share": [
                w.decision.warn_share if w.decision else None for w in self.windows
            ],
        }
        share_chart = line_chart(
            share_series,
            x_labels,
            thresholds={"drift": policy.drift_share},
            title="Share of features drifting (importance-weighted)",
            y_label="share",
            height=200,
        )
        perf_keys = sorted(
            {k for w in self.windows for k, v in w.performance.items() if v is not None}
        )
        perf_chart = ""
        if perf_keys:
            perf_chart = line_chart(
                {k: [w.performance.get(k) for w in self.windows] for k in perf_keys},
                x_labels,
                title="Model performance per window (estimated without labels vs realised)",
                y_min=None,
                y_label="value",
                height=220,
            )
        last_scores = self._scores(last)
        feats = last.result.features
        drifted = (
            list(last.decision.drifted)
            if last.decision
            else sorted(
                (
                    k
                    for k in last_scores
                    if last_scores[k] >= policy.threshold_for(k, feats[k].kind).drift
                ),
                key=lambda k: -last_scores[k],
            )
        )
        warned = list(last.decision.warned) if last.decision else []
        unjudged = set(last.decision.not_judged) if last.decision else set()
        plot_names = (drifted + warned)[:max_feature_plots]
        cards = "".join(
            self._feature_card(feats[n], last_scores.get(n)) for n in plot_names if n in feats
        )
        decision = last.decision.decision.value if last.decision else "not_judged"
        summ = self.summary()
        rows = "".join(
            self._table_row(
                fd, last_scores.get(name), name in drifted, name in warned, name in unjudged
            )
            for name, fd in sorted(feats.items(), key=lambda kv: -(last_scores.get(kv[0]) or 0.0))
        )
        quality = (
            "".join(
                f"<tr><td>{esc(q.severity)}</td><td>{esc(q.kind)}</td><td>{esc(q.column)}</td><td>{esc(q.message)}</td></tr>"
                for q in last.result.quality
            )
            or '<tr><td colspan="4">No data-quality issues.</td></tr>'
        )
        mv = last.result.multivariate
        mv_text = (
            f"AUC {mv.auc:.3f}, p = {mv.p_value:.2g} ({'drift' if mv.drift else 'no drift'}); separating features: "
            + ", ".join(esc(f) for f, _ in mv.top_features[:3])
            if mv
            else "not run"
        )
        reason = esc(last.decision.reason) if last.decision else ""
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        window_text = (
            f"{esc(last.result.window_start or '')} → {esc(last.result.window_end or '')}"
            if last.result.window_end
            else f"{last.result.n_rows:,} rows"
        )
        return _PAGE.format(
            title=esc(self.title),
            generated=esc(self.generated_at),
            decision=esc(DECISION_LABELS.get(decision, decision)),
            badge=DECISION_COLORS.get(decision, "#777"),
            reason=reason,
            n_windows=summ["windows"],
            episodes=summ["episodes"],
            n_drifted=len(drifted),
            n_features=len(feats),
            n_quality=len(last.result.quality),
            ref_rows=f"{self.reference.row_count:,}",
            window_text=window_text,
            mv_text=mv_text,
            score_chart=strip + score_chart,
            share_chart=share_chart,
            perf_chart=perf_chart,
            cards=cards or "<p>No feature drifted in the latest window.</p>",
            rows=rows,
            quality=quality,
            notes=f"<ul>{notes}</ul>" if notes else "",
            ref_color=REF_COLOR,
            cur_color=CUR_COLOR,
            accent=PALETTE[1],
            method=esc(policy.numeric.method),
        )

    @staticmethod
    def _feature_card(fd: FeatureDrift, score: float | None) -> str:
        esc = html.escape
        stats: list[tuple[str, float | None]] = [("PSI", fd.psi), ("JS distance", fd.js)]
        if fd.kind == "numeric":
            stats += [
                ("KS D", fd.ks),
                ("KS p", fd.ks_pvalue),
                ("Wasserstein / std", fd.wasserstein_norm),
            ]
        else:
            stats += [("χ² p", fd.chi2_pvalue)]
        stats += [("null rate", fd.cur_null_rate)]
        dl = "".join(f"<span><b>{esc(k)}</b> {_num(v)}</span>" for k, v in stats)
        chart = bar_chart(
            fd.bin_labels,
            fd.ref_props,
            fd.cur_props,
            title=f"share per {'quantile bin (upper edge)' if fd.kind == 'numeric' else 'category'}",
        )
        return f'<div class="card"><h3>{esc(fd.name)} <small>{esc(fd.kind)} · score {_num(score)}</small></h3>{chart}<div class="stats">{dl}</div></div>'

    @staticmethod
    def _table_row(
        fd: FeatureDrift, score: float | None, drifted: bool, warned: bool, unjudged: bool = False
    ) -> str:
        status = "drift" if drifted else "warn" if warned else "not_judged" if unjudged else "none"
        cells = [
            html.escape(fd.name),
            fd.kind,
            f'<span class="pill {status}">{DECISION_LABELS[status]}</span>',
            _num(score),
            _num(fd.psi),
            _num(fd.js),
            _num(fd.ks),
            _num(fd.wasserstein_norm),
            _num(fd.chi2_pvalue),
            f"{fd.ref_null_rate:.1%} → {fd.cur_null_rate:.1%}",
            f"{fd.n_cur:,}",
        ]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    # -- files --------------------------------------------------------------------------
    def save(self, directory: str | Path, stem: str = "drift-report") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.html`` into ``directory``; returns both paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        jp, hp = d / f"{stem}.json", d / f"{stem}.html"
        jp.write_text(self.to_json(), encoding="utf-8")
        hp.write_text(self.to_html(), encoding="utf-8")
        return jp, hp

    def save_pngs(self, directory: str | Path, max_features: int = 8) -> list[Path]:
        """PNG plots (drift score over time; distributions of the latest drifted features)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out: list[Path] = []
        scores = [self._scores(w) for w in self.windows]
        peak: dict[str, float] = {}
        for sc in scores:
            for k, v in sc.items():
                if math.isfinite(v):
                    peak[k] = max(peak.get(k, 0.0), v)
        top = sorted(peak, key=lambda k: -peak[k])[:8]
        fig = Figure(figsize=(9, 3.6), dpi=110)
        ax = fig.add_subplot()
        xs = list(range(1, len(self.windows) + 1))
        for i, name in enumerate(top):
            ax.plot(
                xs,
                [sc.get(name, math.nan) for sc in scores],
                marker="o",
                ms=3,
                label=name,
                color=PALETTE[i % len(PALETTE)],
            )
        policy = self.policy or DriftPolicy()
        ax.axhline(policy.numeric.drift, ls="--", color="#c0392b", lw=1, label="drift threshold")
        ax.set_xlabel("window")
        ax.set_ylabel(f"drift score ({policy.numeric.method})")
        ax.set_title("Drift score per window")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        p = d / "drift-scores.png"
        FigureCanvasAgg(fig).print_png(str(p))
        out.append(p)
        last = self.latest
        names = (
            list(last.decision.drifted) + list(last.decision.warned) if last.decision else top
        )[:max_features]
        for name in names:
            fd = last.result.features.get(name)
            if fd is None:
                continue
            fig = Figure(figsize=(6, 3.2), dpi=110)
            ax = fig.add_subplot()
            idx = list(range(len(fd.bin_labels)))
            ax.bar(
                [i - 0.2 for i in idx], fd.ref_props, width=0.4, color=REF_COLOR, label="reference"
            )
            ax.bar(
                [i + 0.2 for i in idx], fd.cur_props, width=0.4, color=CUR_COLOR, label="current"
            )
            ax.set_xticks(idx, [b[:10] for b in fd.bin_labels], rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("share")
            ax.set_title(f"{name} (PSI {fd.psi:.3f})")
            ax.legend(fontsize=8)
            fig.tight_layout()
            p = d / f"feature-{_safe(name)}.png"
            FigureCanvasAgg(fig).print_png(str(p))
            out.append(p)
        return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:80]


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if v == 0:
        return "0"
    if abs(v) < 0.001 or abs(v) >= 10000:
        return f"{v:.2e}"
    return f"{v:.3f}"


def _short_time(ts: str | None) -> str | None:
    if not ts:
        return None
    return ts[5:16].replace("T", " ") if len(ts) >= 16 else ts


def _legend() -> str:
    """What each decision colour means (the same words as the strip's legend)."""
    meaning = {
        "none": "judged, no drift",
        "warn": "some features moved",
        "drift": "the policy's drift rule fired",
        "error": "data-quality or schema errors: fix the data first",
        "not_judged": "too few rows or nothing comparable: no verdict",
    }
    items = "".join(
        f'<span><i style="background:{DECISION_COLORS[k]}"></i><b>{DECISION_LABELS[k]}</b> {html.escape(v)}</span>'
        for k, v in meaning.items()
    )
    return f'<p class="legend">{items}</p>'


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #f6f7f9; }}
header {{ background: #1f2933; color: #fff; padding: 18px 32px; }}
header h1 {{ margin: 0; font-size: 22px; }} header p {{ margin: 4px 0 0; color: #cbd2d9; font-size: 13px; }}
main {{ padding: 20px 32px; max-width: 1200px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 18px; }}
.kpi {{ background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.08); min-width: 140px; }}
.kpi b {{ display: block; font-size: 22px; }} .kpi span {{ color: #666; font-size: 12px; }}
.kpi .badge {{ color: #fff; background: {badge}; border-radius: 6px; padding: 2px 10px; text-transform: uppercase; }}
section {{ background: #fff; border-radius: 8px; padding: 14px 18px; margin-bottom: 18px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }}
h2 {{ font-size: 17px; margin: 0 0 10px; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 14px; }}
.card {{ border: 1px solid #e4e7eb; border-radius: 8px; padding: 8px 10px; }}
.card h3 {{ font-size: 14px; margin: 0 0 4px; }} .card small {{ color: #777; font-weight: normal; }}
.stats {{ font-size: 12px; color: #333; display: flex; flex-wrap: wrap; gap: 10px; max-width: 460px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 12px; }}
th, td {{ text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee; }}
th {{ background: #f0f2f5; position: sticky; top: 0; }}
.pill {{ border-radius: 10px; padding: 1px 8px; color: #fff; font-size: 11px; }}
.pill.drift {{ background: #c0392b; }} .pill.warn {{ background: #d68910; }} .pill.none {{ background: #2e9e5b; }}
.pill.not_judged {{ background: #8a9099; }} .pill.error {{ background: #7d3c98; }}
.legend {{ font-size: 11px; color: #555; display: flex; flex-wrap: wrap; gap: 14px; margin: 2px 0 8px 50px; }}
.legend i {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }}
.legend-ref {{ color: {ref_color}; font-weight: bold; }} .legend-cur {{ color: {cur_color}; font-weight: bold; }}
.why {{ color: #444; font-size: 13px; }}
</style></head>
<body>
<header><h1>{title}</h1><p>Generated {generated} · reference: {ref_rows} rows · latest window: {window_text}</p></header>
<main>
<div class="cards">
 <div class="kpi"><span>Latest decision</span><b><span class="badge">{decision}</span></b></div>
 <div class="kpi"><span>Features drifted (latest)</span><b>{n_drifted} / {n_features}</b></div>
 <div class="kpi"><span>Windows evaluated</span><b>{n_windows}</b></div>
 <div class="kpi"><span>Drift episodes</span><b>{episodes}</b></div>
 <div class="kpi"><span>Data-quality issues (latest)</span><b>{n_quality}</b></div>
</div>
<p class="why"><b>Why:</b> {reason}<br><b>Multivariate (domain classifier):</b> {mv_text}</p>
{notes}
<section><h2>Drift over time</h2>{score_chart}{share_chart}{perf_chart}</section>
<section><h2>What moved (latest window): <span class="legend-ref">reference</span> vs <span class="legend-cur">current</span></h2>
<div class="grid">{cards}</div></section>
<section><h2>Data quality (latest window)</h2>
<table><tr><th>severity</th><th>check</th><th>column</th><th>finding</th></tr>{quality}</table></section>
<section><h2>All features (latest window, by score: {method})</h2>
<table><tr><th>feature</th><th>kind</th><th>status</th><th>score</th><th>PSI</th><th>JS</th><th>KS D</th><th>W/std</th><th>χ² p</th><th>nulls ref → cur</th><th>rows</th></tr>
{rows}</table></section>
</main></body></html>
"""
