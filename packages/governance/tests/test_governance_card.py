"""Model cards: stable versioned JSON built from a manifest mapping, self-contained HTML."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from governance_card_fixture import AT, DIGEST, credit_card, manifest

from keel.governance import (
    CARD_SCHEMA_VERSION,
    InvalidInputError,
    Level,
    ManifestFieldError,
    RiskFactors,
    Use,
    build_card,
    card_json,
    load_card,
    render_card_html,
)
from keel.governance._card import CARD_KEYS

CARD = credit_card()


def test_card_schema_is_stable() -> None:
    assert tuple(CARD) == CARD_KEYS
    assert CARD["schema_version"] == CARD_SCHEMA_VERSION == 1
    assert sorted(CARD["model"]) == [
        "code_version",
        "created_at",
        "digest",
        "format_version",
        "lock_hash",
        "name",
        "owner",
    ]
    assert sorted(CARD["training_data"]) == ["feature_views", "fingerprint", "rows", "time_range"]
    assert CARD["training_data"]["feature_views"] == [
        {"name": "applicant_profile", "version": "v3"},
        {"name": "credit_history", "version": "v7"},
    ]
    assert CARD["risk"]["tier"] == 1 and CARD["risk"]["controls"]["approvals_required"] == 2
    assert CARD["evaluation"]["metrics"] == {"auc": 0.7877, "ks": 0.43, "log_loss": 0.47}
    assert [a["approver"] for a in CARD["approvals"]] == ["ana"]  # bob approved another digest
    assert CARD["fairness"]["verdict"]["passed"] is False  # the age band fails the default gate
    top = CARD["attributions"]["top"]
    assert len(top) == 10 and top[0]["mean_abs"] >= top[-1]["mean_abs"]
    assert top[0]["feature"].startswith("status_of_existing_checking_account")


def test_card_json_is_canonical_and_round_trips() -> None:
    text = card_json(CARD)
    assert text == card_json(load_card(text))
    assert text == card_json(credit_card())  # same inputs, same bytes
    assert "NaN" not in text


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(schema_version=2), "schema version 2"),
        (lambda c: c.update(schema="other"), "not a model card"),
        (lambda c: c.pop("approvals"), "lacks"),
    ],
)
def test_load_card_refuses_unknown_versions(edit, match: str) -> None:  # type: ignore[no-untyped-def]
    card = load_card(card_json(CARD))
    edit(card)
    with pytest.raises(InvalidInputError, match=match):
        load_card(card_json(card))


def test_manifest_fields_are_checked() -> None:
    kw = {
        "owner": "o",
        "intended_use": "u",
        "risk": RiskFactors(Level.LOW, Level.LOW, Use.INTERNAL),
        "generated_at": AT,
    }
    for bad, match in (
        ({"digest": DIGEST}, "'name' is required"),
        ({"name": "m"}, "digest is required"),
        ({**manifest(), "metrics": {"auc": "high"}}, "must be a number"),
        ({**manifest(), "feature_views": 3}, "feature_views"),
        ({**manifest(), "code_version": 7}, "code_version"),
        ({**manifest(), "name": 5}, "must be a string"),
    ):
        with pytest.raises(ManifestFieldError, match=match):
            build_card(bad, **kw)  # type: ignore[arg-type]
    minimal = build_card({"name": "m"}, digest=DIGEST, **kw)  # type: ignore[arg-type]
    assert minimal["fairness"] is None and minimal["training_data"]["feature_views"] == []
    assert "<svg" not in render_card_html(minimal)


def test_html_is_self_contained_with_inline_svg(tmp_path: Path) -> None:
    page = render_card_html(CARD)
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 5  # 2 per protected attribute + the attribution ranking
    for forbidden in ("<script", "<link", "src=", "href=", "http://", "https://", "url("):
        assert forbidden not in page, forbidden
    assert "tier 1" in page and "failed" in page and "age_band" in page
    assert "status_of_existing_checking_account" in page
    (tmp_path / "card.html").write_text(page)


def test_attribution_labels_that_share_a_prefix_stay_distinct() -> None:
    """One-hot names share their column's prefix: the visible label keeps the ``=value`` end,
    and the full name is the tooltip."""
    from keel.governance._svg import horizontal_bars

    labels = [
        "status_of_existing_checking_account=... < 0 DM",
        "status_of_existing_checking_account=no checking account",
        "status_of_existing_checking_account=0 <= ... < 200 DM (long)",
    ]
    svg = horizontal_bars(labels, [0.3, 0.2, 0.1], title="t")
    shown = [html.unescape(t) for t in re.findall(r"</title>([^<]*)</text>", svg)]
    assert len(shown) == 3 and len(set(shown)) == 3
    assert all(len(s) <= 52 for s in shown)
    for lab in labels:
        assert f"<title>{html.escape(lab, quote=False)}</title>" in svg


def test_html_escapes_everything_it_is_given() -> None:
    evil = dict(manifest(), name="<script>alert(1)</script>")
    card = build_card(
        evil,
        owner="<b>o</b>",
        intended_use="u & v",
        risk=RiskFactors(Level.LOW, Level.LOW, Use.INTERNAL),
        generated_at=AT,
        limitations=["<img onerror=x>"],
    )
    page = render_card_html(card)
    assert "<script>" not in page and "<img" not in page and "<b>o" not in page
    assert re.search(r"&lt;script&gt;alert\(1\)&lt;/script&gt;", page)
