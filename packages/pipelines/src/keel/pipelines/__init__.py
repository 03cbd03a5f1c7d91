"""keel.pipelines: the closed loop — trigger → train → gates → challenger → canary → promote.

    from keel.pipelines import Controller, Trigger, TriggerPolicy

    ctl = Controller(executors, clock=clock, db_path=home / "pipelines.db")
    decision = ctl.submit(Trigger.from_drift(payload, at=clock()))   # one run per episode
    if decision.run_id:
        ctl.advance(decision.run_id)          # runs steps until waiting / done
    ctl.resume()                              # after a restart: continues at the same step
    assert ctl.verify_provenance().ok

Decisions are pure policies (`TriggerPolicy`, the gates, `CanaryPolicy`); the work of each
step is an injected `Executors` implementation (keel.trainer, keel.registry_client...).
Never imports torch, ray or mlflow (tested).
"""

from keel.pipelines._canary import (
    CANARY_FAILED,
    SLO,
    CanaryAction,
    CanaryDecision,
    CanaryPolicy,
    CanarySignal,
)
from keel.pipelines._canonical import canonical, sha256_hex
from keel.pipelines._controller import (
    CACHED,
    READS,
    SIDE_EFFECTS,
    STEPS,
    Controller,
    Executors,
    Lineage,
    RunInfo,
    RunStatus,
    StepContext,
    StepRecord,
    default_db_path,
)
from keel.pipelines._errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PipelinesError,
    ProvenanceTamperedError,
    StepFailedError,
    StoreError,
)
from keel.pipelines._events import (
    DRIFT_DETECTED,
    SLO_READING,
    signal_from_event,
    trigger_from_event,
)
from keel.pipelines._gates import (
    ApprovalGate,
    CalibrationGate,
    CompatibilityGate,
    FairnessPolicy,
    GateResult,
    GateStatus,
    GateVerdict,
    Holdout,
    QualityGate,
    TrainingDataGate,
    combine,
    expected_calibration_error,
)
from keel.pipelines._provenance import GENESIS, ProvenanceEntry, ProvenanceReport
from keel.pipelines._triggers import (
    Action,
    ActiveRun,
    CountPolicy,
    SchedulePolicy,
    Trigger,
    TriggerDecision,
    TriggerKind,
    TriggerPolicy,
    TriggerState,
)

__all__ = [
    "CACHED",
    "CANARY_FAILED",
    "DRIFT_DETECTED",
    "GENESIS",
    "READS",
    "SIDE_EFFECTS",
    "SLO",
    "SLO_READING",
    "STEPS",
    "Action",
    "ActiveRun",
    "ApprovalGate",
    "CalibrationGate",
    "CanaryAction",
    "CanaryDecision",
    "CanaryPolicy",
    "CanarySignal",
    "CompatibilityGate",
    "ConflictError",
    "Controller",
    "CountPolicy",
    "Executors",
    "FairnessPolicy",
    "GateResult",
    "GateStatus",
    "GateVerdict",
    "Holdout",
    "InvalidInputError",
    "Lineage",
    "NotFoundError",
    "PipelinesError",
    "ProvenanceEntry",
    "ProvenanceReport",
    "ProvenanceTamperedError",
    "QualityGate",
    "RunInfo",
    "RunStatus",
    "SchedulePolicy",
    "StepContext",
    "StepFailedError",
    "StepRecord",
    "StoreError",
    "TrainingDataGate",
    "Trigger",
    "TriggerDecision",
    "TriggerKind",
    "TriggerPolicy",
    "TriggerState",
    "canonical",
    "combine",
    "default_db_path",
    "expected_calibration_error",
    "sha256_hex",
    "signal_from_event",
    "trigger_from_event",
]
