"""keel.governance: model-risk controls for Keel models.

    from keel.governance import RiskFactors, assess_risk, controls_for, ApprovalLedger, check_promotion

    tier = assess_risk(RiskFactors("high", "medium", "automated_decision")).tier   # 1
    ledger = ApprovalLedger(home / "approvals.jsonl", clock=clock)
    ledger.record(model="credit", artifact_digest=d, approver="ana", role="validator",
                  decision="approve", evidence_digest=e)
    decision = check_promotion(controls_for(tier), model="credit", artifact_digest=d,
                               trainer="tom", approvals=ledger.approvals_for("credit", d),
                               now=clock(), ...)                                   # pure

Also fairness metrics by group (`fairness_report`, `FairnessGate`), Integrated Gradients
for torch models (`integrated_gradients`, torch imported lazily) and model cards
(`build_card`, `render_card_html`). Never imports torch, ray or mlflow at import time
(tested).
"""

from keel.governance._approvals import (
    GENESIS,
    Approval,
    ApprovalLedger,
    Decision,
    LedgerHead,
    VerifyReport,
)
from keel.governance._attributions import (
    Attributions,
    FeatureImportance,
    global_importance,
    integrated_gradients,
)
from keel.governance._card import (
    CARD_SCHEMA,
    CARD_SCHEMA_VERSION,
    build_card,
    card_json,
    load_card,
    render_card_html,
)
from keel.governance._clock import Clock, iso_utc, parse_iso_utc, system_clock
from keel.governance._errors import (
    GovernanceError,
    InvalidInputError,
    LedgerError,
    LedgerTamperedError,
    ManifestFieldError,
)
from keel.governance._fairness import (
    AttributeFairness,
    FairnessGate,
    FairnessReport,
    FairnessVerdict,
    GroupStats,
    fairness_report,
    group_fairness,
)
from keel.governance._policy import PromotionDecision, check_promotion
from keel.governance._tier import (
    Controls,
    Level,
    RiskFactors,
    RiskTier,
    TierAssessment,
    TierRules,
    Use,
    assess_risk,
    controls_for,
)

__all__ = [
    "CARD_SCHEMA",
    "CARD_SCHEMA_VERSION",
    "GENESIS",
    "Approval",
    "ApprovalLedger",
    "AttributeFairness",
    "Attributions",
    "Clock",
    "Controls",
    "Decision",
    "FairnessGate",
    "FairnessReport",
    "FairnessVerdict",
    "FeatureImportance",
    "GovernanceError",
    "GroupStats",
    "InvalidInputError",
    "LedgerError",
    "LedgerHead",
    "LedgerTamperedError",
    "Level",
    "ManifestFieldError",
    "PromotionDecision",
    "RiskFactors",
    "RiskTier",
    "TierAssessment",
    "TierRules",
    "Use",
    "VerifyReport",
    "assess_risk",
    "build_card",
    "card_json",
    "check_promotion",
    "controls_for",
    "fairness_report",
    "global_importance",
    "group_fairness",
    "integrated_gradients",
    "iso_utc",
    "load_card",
    "parse_iso_utc",
    "render_card_html",
    "system_clock",
]
