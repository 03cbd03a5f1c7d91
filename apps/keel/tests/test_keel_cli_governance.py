"""`keel governance card|approve|check|verify` end to end on files in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from keel_cli.main import app
from typer.testing import CliRunner, Result

runner = CliRunner()
DIGEST = "sha256:" + "5e" * 32
EVIDENCE = "sha256:" + "ee" * 32


def _files(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "credit",
                "digest": DIGEST,
                "data_fingerprint": "sha256:" + "da" * 32,
                "feature_views": {"applicant": "v2"},
                "metrics": {"auc": 0.8},
            }
        )
    )
    rng = np.random.default_rng(0)
    n = 2000
    score = rng.random(n)
    label = (rng.random(n) < score).astype(int)
    sex = rng.choice(["female", "male"], n)
    band = rng.choice(["<25", "25-34", "35+"], n)
    preds = tmp_path / "preds.csv"
    preds.write_text(
        "label,score,sex,age_band\n"
        + "".join(
            f"{y},{s:.6f},{x},{b}\n" for y, s, x, b in zip(label, score, sex, band, strict=True)
        )
    )
    return manifest, preds


def _card(tmp_path: Path, ledger: Path) -> Path:
    manifest, preds = _files(tmp_path)
    out = tmp_path / "card"
    result = runner.invoke(
        app,
        [
            "governance",
            "card",
            "--manifest",
            str(manifest),
            "--owner",
            "credit team",
            "--intended-use",
            "rank applications",
            "--materiality",
            "high",
            "--complexity",
            "medium",
            "--use",
            "automated_decision",
            "--predictions",
            str(preds),
            "--protected",
            "sex,age_band",
            "--limitation",
            "synthetic data",
            "--ledger",
            str(ledger),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tier 1 card for credit" in result.output and "fairness gate passed" in result.output
    return out / "card.json"


def _approve(ledger: Path, who: str, decision: str = "approve") -> None:
    result = runner.invoke(
        app,
        [
            "governance",
            "approve",
            "--model",
            "credit",
            "--digest",
            DIGEST,
            "--approver",
            who,
            "--role",
            "validator",
            "--evidence-digest",
            EVIDENCE,
            "--decision",
            decision,
            "--ledger",
            str(ledger),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ledger head: " in result.output


def _check(ledger: Path, card: Path, *extra: str) -> Result:
    return runner.invoke(
        app,
        [
            "governance",
            "check",
            "--model",
            "credit",
            "--digest",
            DIGEST,
            "--trainer",
            "tom",
            "--card",
            str(card),
            "--ledger",
            str(ledger),
            *extra,
        ],
    )


def test_card_approve_check_verify(tmp_path: Path) -> None:
    ledger = tmp_path / "approvals.jsonl"
    card = _card(tmp_path, ledger)
    doc = json.loads(card.read_text())
    assert doc["schema"] == "keel.model_card" and doc["risk"]["tier"] == 1
    assert {a["attribute"] for a in doc["fairness"]["attributes"]} == {"sex", "age_band"}
    assert (card.parent / "card.html").read_text().count("<svg") == 4

    refused = _check(ledger, card)
    assert refused.exit_code == 1, refused.output
    assert "REFUSED" in refused.output and "0 valid approval(s); tier 1 needs 2" in refused.output

    _approve(ledger, "tom")  # the trainer: does not count at tier 1
    _approve(ledger, "ana")
    still = _check(ledger, card, "--validation-note", "reviewed", "--validator", "vera")
    assert still.exit_code == 1 and "tom trained the model" in still.output

    _approve(ledger, "bob")
    missing_note = _check(ledger, card)
    assert (
        missing_note.exit_code == 1
        and "independent-validation note is missing" in missing_note.output
    )
    ok = _check(ledger, card, "--validation-note", "reviewed", "--validator", "vera", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["approvers"] == ["ana", "bob"]

    verified = runner.invoke(app, ["governance", "verify", "--ledger", str(ledger)])
    assert verified.exit_code == 0 and "3 entries, chain intact" in verified.output

    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")  # reorder
    tampered = runner.invoke(app, ["governance", "verify", "--ledger", str(ledger)])
    assert tampered.exit_code == 1 and "tampered" in tampered.output
    blocked = _check(ledger, card, "--validation-note", "reviewed", "--validator", "vera")
    assert blocked.exit_code == 1 and "fails verification" in blocked.output


def test_truncation_is_caught_with_the_expected_head(tmp_path: Path) -> None:
    ledger = tmp_path / "a.jsonl"
    _approve(ledger, "ana")
    _approve(ledger, "bob")
    head = (
        runner.invoke(app, ["governance", "verify", "--ledger", str(ledger)])
        .output.split("head ")[-1]
        .strip()
    )
    ledger.write_text(ledger.read_text().splitlines()[0] + "\n")
    result = runner.invoke(
        app, ["governance", "verify", "--ledger", str(ledger), "--expected-head", head]
    )
    assert result.exit_code == 1 and "deleted" in result.output


def test_default_ledger_lives_in_keel_home(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "governance",
            "approve",
            "--model",
            "credit",
            "--digest",
            DIGEST,
            "--approver",
            "ana",
            "--role",
            "validator",
            "--evidence-digest",
            EVIDENCE,
        ],
        env={"KEEL_HOME": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "governance" / "approvals.jsonl").is_file()


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    ledger = tmp_path / "a.jsonl"
    manifest, preds = _files(tmp_path)
    base = [
        "governance",
        "card",
        "--manifest",
        str(manifest),
        "--owner",
        "o",
        "--intended-use",
        "u",
        "--complexity",
        "low",
        "--use",
        "internal",
        "--out",
        str(tmp_path / "o"),
        "--ledger",
        str(ledger),
    ]
    bad_level = runner.invoke(app, [*base, "--materiality", "huge"])
    assert bad_level.exit_code == 2 and "materiality must be one of" in bad_level.output
    no_col = runner.invoke(
        app, [*base, "--materiality", "low", "--predictions", str(preds), "--protected", "race"]
    )
    assert no_col.exit_code == 2 and "lacks columns ['race']" in no_col.output
    bad_approval = runner.invoke(
        app,
        [
            "governance",
            "approve",
            "--model",
            "credit",
            "--digest",
            "nope",
            "--approver",
            "ana",
            "--role",
            "validator",
            "--evidence-digest",
            EVIDENCE,
            "--ledger",
            str(ledger),
        ],
    )
    assert bad_approval.exit_code == 1 and "hex digest" in bad_approval.output
    card = _card(tmp_path, ledger)
    other = runner.invoke(
        app,
        [
            "governance",
            "check",
            "--model",
            "credit",
            "--digest",
            "sha256:" + "00" * 32,
            "--trainer",
            "tom",
            "--card",
            str(card),
            "--ledger",
            str(ledger),
        ],
    )
    assert other.exit_code == 2 and "is the card of credit" in other.output
    no_tier = runner.invoke(
        app,
        [
            "governance",
            "check",
            "--model",
            "m",
            "--digest",
            DIGEST,
            "--trainer",
            "t",
            "--ledger",
            str(ledger),
        ],
    )
    assert no_tier.exit_code == 2 and "--tier" in no_tier.output
