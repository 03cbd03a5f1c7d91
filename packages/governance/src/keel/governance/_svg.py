"""Tiny hand-written inline SVG charts for the model card: no plotting library, no assets."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = ("#2f6fb3", "#e1701a", "#2e9e5b", "#b83280", "#8a6d1f", "#5a4fcf")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.001:
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def grouped_bars(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    title: str,
    width: int = 520,
    height: int = 220,
    vmax: float | None = None,
) -> str:
    """Vertical bars: one cluster per group, one bar per series (e.g. selection rate, TPR)."""
    left, right, top, bottom = 44, 10, 36, 40
    pw, ph = width - left - right, height - top - bottom
    vals = [v for _, s in series for v in s if v is not None and math.isfinite(v)]
    top_v = vmax if vmax is not None else max([*vals, 1e-9])
    n = max(1, len(groups))
    step = pw / n
    bw = max(2.0, step * 0.8 / max(1, len(series)))
    out = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}"><text x="{left}" y="14" font-size="12" fill="#222">{esc(title)}</text>'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + ph * (1 - frac)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
        )
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#666">{fmt(top_v * frac)}</text>'
        )
    for j, (name, _) in enumerate(series):
        lx = left + j * 130
        out.append(
            f'<rect x="{lx}" y="20" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="29" font-size="10" fill="#333">{esc(name)}</text>'
        )
    for i, g in enumerate(groups):
        x0 = left + i * step + step * 0.1
        for j, (name, s) in enumerate(series):
            v = s[i]
            if v is None or not math.isfinite(v):
                continue
            h = ph * min(v, top_v) / top_v
            out.append(
                f'<rect x="{x0 + j * bw:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{esc(g)} {esc(name)}: {fmt(v)}</title></rect>'
            )
        out.append(
            f'<text x="{left + i * step + step / 2:.1f}" y="{top + ph + 14}" font-size="10" fill="#444" '
            f'text-anchor="middle">{esc(g)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def horizontal_bars(
    labels: Sequence[str], values: Sequence[float], *, title: str, width: int = 720
) -> str:
    """Horizontal bars, largest first (the global attribution ranking). A long label is cut
    in the middle, so one-hot names that share a prefix (``column=value``) stay apart; the
    full label is the tooltip."""
    row, left, top = 18, 320, 24
    height = top + row * max(1, len(labels)) + 8
    vmax = max([abs(v) for v in values] + [1e-12])
    pw = width - left - 60
    out = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}"><text x="4" y="14" font-size="12" fill="#222">{esc(title)}</text>'
    ]
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        w = pw * abs(v) / vmax
        short = lab if len(lab) <= 52 else lab[:24] + "…" + lab[-27:]
        out.append(
            f'<text x="{left - 6}" y="{y + 12}" font-size="10" text-anchor="end" fill="#333">'
            f"<title>{esc(lab)}</title>{esc(short)}</text>"
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{PALETTE[0]}">'
            f"<title>{esc(lab)}: {fmt(v)}</title></rect>"
            f'<text x="{left + w + 4:.1f}" y="{y + 12}" font-size="10" fill="#555">{fmt(v)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
