"""Model cards: a versioned JSON document and a self-contained HTML page with inline SVG.

The card is built from the artifact **manifest as a plain mapping** (keel.governance does
not need keel.artifacts' types to read it). Fields read from the manifest:

=====================  =====================================================  ========
field                  meaning                                                required
=====================  =====================================================  ========
``name``               model name                                             yes
``digest``             artifact digest (or pass ``digest=``)                  yes
``format_version``     artifact format version                                no
``data_fingerprint``   fingerprint of the training data                       no
``feature_views``      ``{name: version}`` or ``[{"name", "version"}]``       no
``code_version``       ``"<commit>"`` or ``{"commit", "dirty"}``              no
``lock_hash``          hash of the dependency lockfile                        no
``metrics``            ``{name: number}`` overall evaluation metrics          no
``training_data``      ``{"rows", "time_range": [start, end]}``               no
``created_at``         when the artifact was built                            no
=====================  =====================================================  ========

Unknown manifest fields are ignored; a field of the wrong type is a `ManifestFieldError`.
The JSON schema is ``keel.model_card`` version `CARD_SCHEMA_VERSION`: keys are added only
with a version bump, and `load_card` refuses versions it does not know.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from keel.governance._approvals import Approval
from keel.governance._attributions import FeatureImportance
from keel.governance._clock import iso_utc
from keel.governance._errors import InvalidInputError, ManifestFieldError
from keel.governance._fairness import FairnessGate, FairnessReport, FairnessVerdict
from keel.governance._svg import esc, fmt, grouped_bars, horizontal_bars
from keel.governance._tier import RiskFactors, assess_risk, controls_for

CARD_SCHEMA = "keel.model_card"
CARD_SCHEMA_VERSION = 1
CARD_KEYS = (
    "schema",
    "schema_version",
    "generated_at",
    "model",
    "intended_use",
    "risk",
    "training_data",
    "lineage",
    "evaluation",
    "fairness",
    "attributions",
    "approvals",
    "limitations",
)


def _opt_str(manifest: Mapping[str, Any], key: str) -> str | None:
    v = manifest.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ManifestFieldError(f"manifest field {key!r} must be a string; got {type(v).__name__}")
    return v


def _feature_views(raw: object) -> list[dict[str, str]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [{"name": str(k), "version": str(v)} for k, v in sorted(raw.items())]
    if isinstance(raw, list | tuple):
        out = []
        for item in raw:
            if not isinstance(item, Mapping) or "name" not in item:
                raise ManifestFieldError("manifest feature_views entries need a 'name'")
            out.append({"name": str(item["name"]), "version": str(item.get("version", ""))})
        return sorted(out, key=lambda fv: fv["name"])
    raise ManifestFieldError("manifest field 'feature_views' must be a mapping or a list")


def _code_version(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return {"commit": raw, "dirty": None}
    if isinstance(raw, Mapping) and "commit" in raw:
        return {"commit": str(raw["commit"]), "dirty": raw.get("dirty")}
    raise ManifestFieldError("manifest field 'code_version' must be a string or {commit, dirty}")


def _metrics(raw: object, what: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ManifestFieldError(f"{what} must be a mapping of name -> number")
    out = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ManifestFieldError(f"{what}[{k!r}] must be a number; got {v!r}")
        out[str(k)] = float(v)
    return dict(sorted(out.items()))


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def build_card(
    manifest: Mapping[str, Any],
    *,
    owner: str,
    intended_use: str,
    risk: RiskFactors,
    generated_at: datetime,
    digest: str | None = None,
    out_of_scope: Sequence[str] = (),
    lineage: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    fairness: FairnessReport | None = None,
    fairness_gate: FairnessGate | None = None,
    attributions: Sequence[FeatureImportance] = (),
    attribution_method: str = "integrated_gradients",
    top_k: int = 10,
    approvals: Iterable[Approval] = (),
    limitations: Sequence[str] = (),
) -> dict[str, Any]:
    """The model card as a JSON-ready dict (schema `CARD_SCHEMA` v`CARD_SCHEMA_VERSION`).

    ``evaluation``: extra overall metrics (merged over the manifest's ``metrics``).
    ``fairness``/``fairness_gate``: the group metrics and the gate they were judged by.
    ``attributions``: the global ranking (`global_importance`); the top ``top_k`` are kept.
    ``generated_at`` comes from the caller's clock.
    """
    if not isinstance(manifest, Mapping):
        raise ManifestFieldError("the manifest must be a mapping")
    name = _opt_str(manifest, "name")
    the_digest = digest or _opt_str(manifest, "digest")
    if not name:
        raise ManifestFieldError("manifest field 'name' is required")
    if not the_digest:
        raise ManifestFieldError("the artifact digest is required (manifest 'digest' or digest=)")
    if not owner.strip() or not intended_use.strip():
        raise InvalidInputError("owner and intended_use are required on a model card")
    training = manifest.get("training_data") or {}
    if not isinstance(training, Mapping):
        raise ManifestFieldError("manifest field 'training_data' must be a mapping")
    time_range = training.get("time_range")
    assessment = assess_risk(risk)
    gate = fairness_gate or FairnessGate()
    verdict: FairnessVerdict | None = gate.evaluate(fairness) if fairness is not None else None
    metrics = _metrics(manifest.get("metrics"), "manifest metrics")
    metrics.update(_metrics(evaluation, "evaluation"))
    card: dict[str, Any] = {
        "schema": CARD_SCHEMA,
        "schema_version": CARD_SCHEMA_VERSION,
        "generated_at": iso_utc(generated_at),
        "model": {
            "name": name,
            "digest": the_digest,
            "format_version": _opt_str(manifest, "format_version"),
            "created_at": _opt_str(manifest, "created_at"),
            "owner": owner.strip(),
            "code_version": _code_version(manifest.get("code_version")),
            "lock_hash": _opt_str(manifest, "lock_hash"),
        },
        "intended_use": {"use": intended_use.strip(), "out_of_scope": list(out_of_scope)},
        "risk": {
            "factors": risk.to_dict(),
            **assessment.to_dict(),
            "controls": controls_for(assessment.tier).to_dict(),
        },
        "training_data": {
            "fingerprint": _opt_str(manifest, "data_fingerprint"),
            "rows": training.get("rows"),
            "time_range": list(time_range) if time_range else None,
            "feature_views": _feature_views(manifest.get("feature_views")),
        },
        "lineage": dict(sorted((lineage or {}).items())),
        "evaluation": {"metrics": metrics},
        "fairness": None
        if fairness is None or verdict is None
        else {**fairness.to_dict(), "gate": gate.to_dict(), "verdict": verdict.to_dict()},
        "attributions": {
            "method": attribution_method,
            "top": [a.to_dict() for a in list(attributions)[:top_k]],
        },
        "approvals": [
            a.to_dict() for a in approvals if a.artifact_digest == the_digest and a.model == name
        ],
        "limitations": list(limitations),
    }
    return _clean(card)  # type: ignore[no-any-return]


def card_json(card: Mapping[str, Any]) -> str:
    """Canonical text of a card: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(card, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load_card(text: str) -> dict[str, Any]:
    """Parse and check a card written by `card_json` (schema and version)."""
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"model card is not JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise InvalidInputError(f"not a model card (want schema {CARD_SCHEMA!r})")
    if card.get("schema_version") != CARD_SCHEMA_VERSION:
        raise InvalidInputError(
            f"model card schema version {card.get('schema_version')!r} is not supported (this Keel reads {CARD_SCHEMA_VERSION})"
        )
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise InvalidInputError(f"model card lacks {missing}")
    return card


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:980px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h3{font-size:15px;margin:20px 0 6px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f5f5f5}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px}.tier{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff}
.t1{background:#c0392b}.t2{background:#d68910}.t3{background:#2e9e5b}.pass{color:#2e7d32;font-weight:600}.fail{color:#c0392b;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px}.muted{color:#666;font-size:12px}
"""


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{esc(k)}</th><td class='mono'>{esc('—' if v is None else v)}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{esc(fmt(c) if isinstance(c, float) or c is None else c)}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render_card_html(card: Mapping[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG; no scripts, links or external assets)."""
    m, risk, td = card["model"], card["risk"], card["training_data"]
    tier = int(risk["tier"])
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Model card — {esc(m['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Model card: {esc(m['name'])} <span class='tier t{tier}'>tier {tier}</span></h1>",
        f"<p class='muted'>generated {esc(card['generated_at'])} · schema {esc(card['schema'])} v{esc(card['schema_version'])}</p>",
        "<h2>Model</h2>",
        _kv_table(
            [
                ("digest", m["digest"]),
                ("owner", m["owner"]),
                ("format version", m.get("format_version")),
                ("created", m.get("created_at")),
                ("code version", (m.get("code_version") or {}).get("commit")),
                ("code dirty", (m.get("code_version") or {}).get("dirty")),
                ("dependency lock hash", m.get("lock_hash")),
            ]
        ),
        "<h2>Intended use</h2>",
        f"<p>{esc(card['intended_use']['use'])}</p>",
    ]
    if card["intended_use"]["out_of_scope"]:
        parts.append(
            "<p><b>Out of scope:</b></p><ul>"
            + "".join(f"<li>{esc(x)}</li>" for x in card["intended_use"]["out_of_scope"])
            + "</ul>"
        )
    ctrl = risk["controls"]
    parts += [
        "<h2>Risk tier and required controls</h2>",
        f"<p>Tier {tier} (score {esc(risk['score'])}): {esc('; '.join(risk['reasons']))}.</p>",
        _kv_table(
            [
                ("approvals required", ctrl["approvals_required"]),
                ("trainer may approve", ctrl["trainer_may_approve"]),
                ("independent validation", ctrl["independent_validation"]),
                ("fairness gate", ctrl["fairness_gate"]),
                ("approvals expire after (days)", ctrl["approval_max_age_days"]),
                ("revalidation (months)", ctrl["revalidation_months"]),
            ]
        ),
        "<h2>Training data</h2>",
        _kv_table(
            [
                ("fingerprint", td.get("fingerprint")),
                ("rows", td.get("rows")),
                (
                    "time range",
                    " → ".join(map(str, td["time_range"])) if td.get("time_range") else None,
                ),
            ]
        ),
    ]
    if td["feature_views"]:
        parts.append(
            _table(
                ["feature view", "version"],
                [(f["name"], f["version"]) for f in td["feature_views"]],
            )
        )
    if card["lineage"]:
        parts += ["<h2>Lineage</h2>", _kv_table(card["lineage"].items())]
    metrics = card["evaluation"]["metrics"]
    parts.append("<h2>Evaluation</h2>")
    parts.append(
        _table(["metric", "value"], metrics.items())
        if metrics
        else "<p class='muted'>no metrics recorded</p>"
    )
    fair = card.get("fairness")
    parts.append("<h2>Fairness by group</h2>")
    if fair is None:
        parts.append("<p class='muted'>not assessed</p>")
    else:
        verdict = fair["verdict"]
        status = (
            "<span class='pass'>passed</span>"
            if verdict["passed"]
            else "<span class='fail'>failed</span>"
        )
        parts.append(
            f"<p>Fairness gate {status} (decision threshold {fmt(fair['threshold'])}).</p>"
        )
        if verdict["reasons"]:
            parts.append(
                "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in verdict["reasons"]) + "</ul>"
            )
        for a in fair["attributes"]:
            groups = [g["group"] for g in a["groups"]]
            parts.append(f"<h3>{esc(a['attribute'])}</h3>")
            parts.append(
                _table(
                    [
                        "demographic parity diff.",
                        "disparate impact ratio",
                        "equal opportunity diff.",
                        "equalized odds diff.",
                        "AUC diff.",
                    ],
                    [
                        (
                            a["demographic_parity_difference"],
                            a["disparate_impact_ratio"],
                            a["equal_opportunity_difference"],
                            a["equalized_odds_difference"],
                            a["auc_difference"],
                        )
                    ],
                )
            )
            parts.append(
                _table(
                    [
                        "group",
                        "rows",
                        "base rate",
                        "selection rate",
                        "TPR",
                        "FPR",
                        "AUC",
                        "mean score",
                        "Brier",
                        "ECE",
                    ],
                    [
                        (
                            g["group"],
                            g["count"],
                            g["base_rate"],
                            g["selection_rate"],
                            g["true_positive_rate"],
                            g["false_positive_rate"],
                            g["auc"],
                            g["mean_score"],
                            g["brier"],
                            g["ece"],
                        )
                        for g in a["groups"]
                    ],
                )
            )
            parts.append("<div class='charts'>")
            parts.append(
                grouped_bars(
                    groups,
                    [
                        ("selection rate", [g["selection_rate"] for g in a["groups"]]),
                        ("true-positive rate", [g["true_positive_rate"] for g in a["groups"]]),
                    ],
                    title=f"{a['attribute']}: selection and true-positive rates",
                    vmax=1.0,
                )
            )
            parts.append(
                grouped_bars(
                    groups,
                    [
                        ("mean score", [g["mean_score"] for g in a["groups"]]),
                        ("observed rate", [g["base_rate"] for g in a["groups"]]),
                    ],
                    title=f"{a['attribute']}: calibration (predicted vs observed)",
                    vmax=1.0,
                )
            )
            parts.append("</div>")
    top = card["attributions"]["top"]
    parts.append("<h2>Top attributions</h2>")
    if top:
        parts.append(
            horizontal_bars(
                [t["feature"] for t in top],
                [t["mean_abs"] for t in top],
                title=f"mean |attribution| ({card['attributions']['method']})",
            )
        )
    else:
        parts.append("<p class='muted'>not computed</p>")
    parts.append("<h2>Approvals</h2>")
    if card["approvals"]:
        parts.append(
            _table(
                ["when", "who", "role", "decision", "evidence", "note"],
                [
                    (
                        a["decided_at"],
                        a["approver"],
                        a["role"],
                        a["decision"],
                        a["evidence_digest"][:23],
                        a["note"],
                    )
                    for a in card["approvals"]
                ],
            )
        )
    else:
        parts.append("<p class='muted'>none recorded when the card was generated</p>")
    parts.append("<h2>Known limitations</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in card["limitations"]) + "</ul>"
        if card["limitations"]
        else "<p class='muted'>none stated</p>"
    )
    parts.append("</body></html>\n")
    return "".join(parts)
