"""Tiny hand-written SVG charts for the HTML report: no plotting library, no raw data,
a few hundred bytes per chart, so a report over 1k columns renders in milliseconds."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

REF_COLOR = "#7f8fa6"
CUR_COLOR = "#e1701a"
PALETTE = ("#e1701a", "#2f6fb3", "#2e9e5b", "#b83280", "#8a6d1f", "#5a4fcf", "#c0392b", "#16808a")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def bar_chart(
    labels: Sequence[str],
    ref: Sequence[float],
    cur: Sequence[float],
    *,
    width: int = 460,
    height: int = 200,
    title: str = "",
) -> str:
    """Grouped bars of reference vs current proportions per bin/category."""
    n = max(1, len(labels))
    left, right, top, bottom = 40, 10, 22, 46
    pw, ph = width - left - right, height - top - bottom
    vmax = max([*ref, *cur, 1e-9])
    step = pw / n
    bw = max(1.0, step * 0.38)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="14" font-size="12" fill="#333">{_esc(title)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + ph * (1 - frac)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#666">{_fmt(vmax * frac)}</text>'
        )
    show_every = max(1, math.ceil(n / 12))
    for i, (r, c) in enumerate(zip(ref, cur, strict=True)):
        x0 = left + i * step + step * 0.1
        for j, (v, color) in enumerate(((r, REF_COLOR), (c, CUR_COLOR))):
            h = ph * v / vmax
            parts.append(
                f'<rect x="{x0 + j * bw:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{_esc(labels[i])}: {'reference' if j == 0 else 'current'} {v:.3f}</title></rect>"
            )
        if i % show_every == 0:
            lab = labels[i] if len(labels[i]) <= 10 else labels[i][:9] + "…"
            cx = left + i * step + step / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{top + ph + 12}" font-size="9" fill="#555" text-anchor="end" '
                f'transform="rotate(-30 {cx:.1f} {top + ph + 12})">{_esc(lab)}</text>'
            )
    parts.append(
        f'<rect x="{width - 150}" y="4" width="10" height="10" fill="{REF_COLOR}"/>'
        f'<text x="{width - 136}" y="13" font-size="10">reference</text>'
        f'<rect x="{width - 80}" y="4" width="10" height="10" fill="{CUR_COLOR}"/>'
        f'<text x="{width - 66}" y="13" font-size="10">current</text></svg>'
    )
    return "".join(parts)


def line_chart(
    series: Mapping[str, Sequence[float | None]],
    x_labels: Sequence[str],
    *,
    thresholds: Mapping[str, float] | None = None,
    width: int = 900,
    height: int = 260,
    title: str = "",
    y_label: str = "",
    y_min: float | None = 0.0,
) -> str:
    """Lines over windows (None = gap), with dashed horizontal threshold lines.

    ``y_min=None`` fits the axis to the data (for metrics like AUC that live near 1)."""
    n = max(1, len(x_labels))
    left, right, top, bottom = 50, 170, 24, 40
    pw, ph = width - left - right, height - top - bottom
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    vmax = max([*values, *(thresholds or {}).values(), 1e-9]) * 1.08
    vmin = 0.0
    if y_min is None and values:
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.25, 0.02)
        vmin, vmax = max(0.0, lo - pad), hi + pad
    elif y_min is not None:
        vmin = y_min
    span = max(vmax - vmin, 1e-12)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (pw * i / (n - 1) if n > 1 else pw / 2)
        return x, top + ph * (1 - (min(max(v, vmin), vmax) - vmin) / span)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{left}" y="15" font-size="13" fill="#333">{_esc(title)}</text>',
        f'<text x="12" y="{top + ph / 2}" font-size="10" fill="#666" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{_esc(y_label)}</text>',
    ]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + ph * (1 - frac)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#666">{_fmt(vmin + span * frac)}</text>'
        )
    show_every = max(1, math.ceil(n / 10))
    for i, lab in enumerate(x_labels):
        if i % show_every == 0 or (i == n - 1 and (n - 1) % show_every > show_every // 2):
            x, _ = xy(i, 0)
            parts.append(
                f'<text x="{x:.1f}" y="{top + ph + 14}" font-size="9" fill="#555" text-anchor="middle">{_esc(lab)}</text>'
            )
    for name, th in (thresholds or {}).items():
        _, y = xy(0, th)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" stroke-dasharray="5 4" opacity="0.7"/>'
            f'<text x="{left + 4}" y="{y - 3:.1f}" font-size="10" fill="#c0392b">{_esc(name)} {_fmt(th)}</text>'
        )
    for k, (name, vals) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        segs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(vals):
            if v is None or not math.isfinite(v):
                segs.append([])
            else:
                segs[-1].append(xy(i, v))
        for seg in segs:
            if len(seg) > 1:
                pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
                )
            for x, y in seg:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>')
        ly = top + 4 + 14 * k
        lab = name if len(name) <= 22 else name[:21] + "…"
        parts.append(
            f'<rect x="{left + pw + 8}" y="{ly + 20}" width="10" height="3" fill="{color}"/>'
            f'<text x="{left + pw + 22}" y="{ly + 25}" font-size="10">{_esc(lab)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


DECISION_COLORS = {
    "none": "#2e9e5b",
    "warn": "#d68910",
    "drift": "#c0392b",
    "error": "#7d3c98",
    "not_judged": "#c8ccd0",
}
#: Legend text of each decision (the HTML report explains them under the strip too).
DECISION_LABELS = {
    "none": "ok",
    "warn": "warn",
    "drift": "drift",
    "error": "data error",
    "not_judged": "not judged",
}


def decision_strip(
    decisions: Sequence[str | None], x_labels: Sequence[str], *, width: int = 900
) -> str:
    """One coloured cell per window: the policy's decision, with a legend of every state
    (grey = not judged: too few rows or nothing comparable; purple = data-quality error)."""
    n = max(1, len(decisions))
    left, right = 50, 330
    pw = width - left - right
    cw = pw / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="38" viewBox="0 0 {width} 38" role="img" '
        'aria-label="decision per window">',
        '<text x="4" y="22" font-size="10" fill="#666">decision</text>',
    ]
    for i, d in enumerate(decisions):
        key = d or "not_judged"
        color = DECISION_COLORS.get(key, DECISION_COLORS["not_judged"])
        parts.append(
            f'<rect x="{left + i * cw:.1f}" y="8" width="{max(1.0, cw - 1):.1f}" height="20" fill="{color}">'
            f"<title>{_esc(x_labels[i] if i < len(x_labels) else str(i))}: {_esc(DECISION_LABELS.get(key, key))}</title></rect>"
        )
    x = left + pw + 8
    for name, color in DECISION_COLORS.items():
        label = DECISION_LABELS[name]
        parts.append(
            f'<rect x="{x}" y="12" width="10" height="10" fill="{color}"/><text x="{x + 13}" y="21" font-size="10">{label}</text>'
        )
        x += 18 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)
