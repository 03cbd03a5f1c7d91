"""DriftReport: stable JSON schema, self-contained HTML with inline SVG, PNGs, 1k columns."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from keel.drift import (
    REPORT_FORMAT,
    DriftPolicy,
    DriftReport,
    InvalidInputError,
    PolicyDecision,
    ReportWindow,
    build_profile,
    check_drift,
)


def make_report(n_cols: int = 6, windows: int = 4, rows: int = 2000) -> DriftReport:
    rng = np.random.default_rng(0)
    ref = pl.DataFrame(
        {f"x{i}": rng.normal(size=rows) for i in range(n_cols)}
        | {"cat": rng.choice(["a", "b"], rows)}
    )
    profile = build_profile(ref, options=None)
    policy = DriftPolicy(consecutive=1)
    out: list[ReportWindow] = []
    hist: list[PolicyDecision] = []
    for k in range(windows):
        shift = 0.0 if k < windows // 2 else 1.0
        cur = pl.DataFrame(
            {f"x{i}": rng.normal(shift if i == 0 else 0.0, size=rows) for i in range(n_cols)}
            | {"cat": rng.choice(["a", "b", "<script>"], rows)}
        )
        res = check_drift(
            profile,
            cur,
            window_start=f"2026-03-01T0{k}:00:00Z",
            window_end=f"2026-03-01T0{k + 1}:00:00Z",
        )
        d = policy.decide(res, hist)
        hist.append(d)
        out.append(ReportWindow(res, d, {"estimated_auc": 0.8}))
    return DriftReport("Test report", profile, out, "2026-03-01T05:00:00Z", policy)


def test_json_is_stable_and_versioned() -> None:
    rep = make_report()
    doc = json.loads(rep.to_json())
    assert doc["format"] == REPORT_FORMAT and doc["version"] == 1
    assert set(doc) == {
        "format",
        "version",
        "title",
        "generated_at",
        "reference",
        "summary",
        "notes",
        "windows",
    }
    assert doc["summary"]["windows"] == 4
    assert "x0" in doc["windows"][-1]["decision"]["drifted"]
    w = doc["windows"][-1]["result"]["features"]["x0"]
    assert {
        "psi",
        "js",
        "ks",
        "ks_pvalue",
        "wasserstein",
        "bin_labels",
        "ref_props",
        "cur_props",
    } <= set(w)
    assert rep.to_json() == make_report().to_json()  # deterministic


def test_html_is_self_contained_and_escaped(tmp_path) -> None:
    rep = make_report()
    jp, hp = rep.save(tmp_path)
    page = hp.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 4
    assert not re.search(r"<script|src=\"http|href=\"http|<link", page)
    assert "&lt;script&gt;" in page  # category values are escaped
    assert "x0" in page and "drift" in page
    assert json.loads(jp.read_text())["title"] == "Test report"


def test_pngs(tmp_path) -> None:
    paths = make_report().save_pngs(tmp_path)
    assert paths[0].name == "drift-scores.png"
    assert any(p.name == "feature-x0.png" for p in paths)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thousand_columns_render_without_raw_data() -> None:
    rep = make_report(n_cols=1000, windows=2, rows=300)
    page = rep.to_html()
    doc = rep.to_json()
    assert page.count("<tr>") >= 1000
    assert len(page) < 3_000_000 and len(doc) < 10_000_000  # statistics only, never rows


def test_needs_a_window() -> None:
    with pytest.raises(InvalidInputError, match="at least one window"):
        DriftReport("t", build_profile(pl.DataFrame({"a": [1.0]})), [], "now")


def test_not_judged_windows_are_their_own_state_with_a_legend() -> None:
    rep = make_report()
    profile, policy = rep.reference, DriftPolicy()
    small = check_drift(profile, pl.DataFrame({"x0": [0.1, 0.2], "cat": ["a", "b"]}))
    d = policy.decide(small, [w.decision for w in rep.windows if w.decision])
    assert d.decision.value == "not_judged"
    rep = DriftReport(rep.title, profile, [*rep.windows, ReportWindow(small, d)], "t", policy)
    doc = json.loads(rep.to_json())
    assert (
        doc["summary"]["not_judged_windows"] == 1
        and doc["summary"]["latest_decision"] == "not_judged"
    )
    assert doc["windows"][-1]["decision"]["judged"] is False
    page = rep.to_html()
    assert "not judged" in page and "too few rows or nothing comparable" in page
    # the latest window is grey ("not judged"), never green "ok"
    assert 'class="badge">not judged<' in page
