"""keel.trainer: PyTorch training jobs on Ray Train with Keel-owned checkpoints.

    from keel.trainer import load_job, run_job, default_registry

    job = load_job("job.toml")                   # validated TrainJob (pydantic, extra="forbid")
    registry = default_registry()                # "mlp" built in; register your own builders
    result = run_job(job, home=".keel", registry=registry)
    result.artifact_digest, result.mlflow_run_id

A run resumes by itself: every worker restores the newest *committed* checkpoint of the job
name (model, optimiser, scheduler, RNG, data position, early stopping) — after a killed
worker (Ray restarts the group up to ``failure.max_failures`` times), a Ctrl-C or a killed
driver. A job with a ``[tune]`` section is a search: ``run_search(job, home=...)`` runs its
trials on Ray Tune with ASHA and exports the best one. Importing this package loads neither
torch, Ray nor MLflow; ``run_job`` / ``run_search`` do.
"""

from keel.trainer._checkpoint import CheckpointStore, Committed
from keel.trainer._cluster import ClusterInfo, ensure_ray
from keel.trainer._data import fingerprint
from keel.trainer._errors import (
    CheckpointError,
    ClusterUnavailableError,
    DataError,
    ExportError,
    InvalidJobError,
    ResumeConflictError,
    TrackingError,
    TrainerError,
    TrainingFailedError,
    TrainingStoppedError,
    UnknownBuilderError,
)
from keel.trainer._faults import FaultPlan
from keel.trainer._metrics import TrainerMetrics
from keel.trainer._registry import ModelRegistry, default_registry, mlp
from keel.trainer._run import (
    TrainResult,
    code_version,
    environment_hash,
    final_weights,
    job_params,
    job_spec_json,
    lock_hash,
    run_dir,
    run_job,
)
from keel.trainer._spec import (
    AshaSpec,
    DataSpec,
    Distribution,
    EarlyStoppingSpec,
    ExportSpec,
    FailureSpec,
    ModelSpec,
    OptimizerSpec,
    ScalingSpec,
    ScheduleSpec,
    TrackingSpec,
    TrainJob,
    TrainSpec,
    TuneSpec,
    load_job,
    parse_job,
)
from keel.trainer._tune import (
    SearchResult,
    Trial,
    TrialOutcome,
    choose_best,
    plan_trials,
    run_search,
    sample_params,
    trial_outcome,
    trial_seed,
)

__all__ = [
    "AshaSpec",
    "CheckpointError",
    "CheckpointStore",
    "ClusterInfo",
    "ClusterUnavailableError",
    "Committed",
    "DataError",
    "DataSpec",
    "Distribution",
    "EarlyStoppingSpec",
    "ExportError",
    "ExportSpec",
    "FailureSpec",
    "FaultPlan",
    "InvalidJobError",
    "ModelRegistry",
    "ModelSpec",
    "OptimizerSpec",
    "ResumeConflictError",
    "ScalingSpec",
    "ScheduleSpec",
    "SearchResult",
    "TrackingError",
    "TrackingSpec",
    "TrainJob",
    "TrainResult",
    "TrainSpec",
    "TrainerError",
    "TrainerMetrics",
    "TrainingFailedError",
    "TrainingStoppedError",
    "Trial",
    "TrialOutcome",
    "TuneSpec",
    "UnknownBuilderError",
    "choose_best",
    "code_version",
    "default_registry",
    "ensure_ray",
    "environment_hash",
    "final_weights",
    "fingerprint",
    "job_params",
    "job_spec_json",
    "load_job",
    "lock_hash",
    "mlp",
    "parse_job",
    "plan_trials",
    "run_dir",
    "run_job",
    "run_search",
    "sample_params",
    "trial_outcome",
    "trial_seed",
]
