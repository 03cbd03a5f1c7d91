"""A model card for the German credit model: real fairness figures and IG attributions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from governance_testdata import german_credit

from keel.governance import (
    Approval,
    Decision,
    Level,
    RiskFactors,
    Use,
    build_card,
    fairness_report,
    global_importance,
    integrated_gradients,
)

DIGEST = "sha256:" + "5e" * 32
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def manifest() -> dict[str, Any]:
    return {
        "name": "german-credit",
        "digest": DIGEST,
        "format_version": "1.0.0",
        "data_fingerprint": "sha256:" + "da" * 32,
        "feature_views": {"applicant_profile": "v3", "credit_history": "v7"},
        "code_version": {"commit": "3323eba", "dirty": False},
        "lock_hash": "sha256:" + "10" * 32,
        "metrics": {"auc": 0.788, "log_loss": 0.47},
        "training_data": {"rows": 1000, "time_range": ["1973-01-01", "1975-12-31"]},
        "created_at": "2026-11-28T11:00:00Z",
        "architecture": {"builder": "logistic", "args": {}},  # ignored by the card
    }


def credit_card() -> dict[str, Any]:
    import torch

    data = german_credit()
    lin = torch.nn.Linear(data.x.shape[1], 1).to(torch.float64)
    with torch.no_grad():
        lin.weight[:] = torch.as_tensor(data.weights[1:])[None]
        lin.bias[:] = float(data.weights[0])
    model = torch.nn.Sequential(lin, torch.nn.Sigmoid()).eval()
    attr = integrated_gradients(model, data.x, data.x.mean(axis=0), steps=32)
    fair = fairness_report(data.y, data.score, {"sex": data.sex, "age_band": data.age_band})
    approvals = [
        Approval("german-credit", DIGEST, "ana", "validator", Decision.APPROVE, "ee" * 32, AT),
        Approval(
            "german-credit",
            "sha256:" + "00" * 32,
            "bob",
            "risk_officer",
            Decision.APPROVE,
            "ee" * 32,
            AT,
        ),
    ]
    return build_card(
        manifest(),
        owner="credit-risk team <credit@bank.example>",
        intended_use="Rank consumer-credit applications for manual review.",
        out_of_scope=["automated rejection without review"],
        risk=RiskFactors(Level.HIGH, Level.LOW, Use.DECISION_SUPPORT),
        generated_at=AT,
        lineage={"parent_version": "4", "training_run": "run-17"},
        evaluation={"ks": 0.43, "auc": float(np.round(0.7877, 4))},
        fairness=fair,
        attributions=global_importance(attr, data.features),
        approvals=approvals,
        limitations=["Trained on 1970s German applications; re-validate before any other market."],
    )
