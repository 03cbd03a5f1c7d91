"""keel.drift: fast drift and data-quality monitoring from saved reference profiles.

    from keel.drift import build_profile, ReferenceProfile, check_drift, DriftPolicy

    profile = build_profile(train_df)                  # once, at training time
    profile.save("model/profile.json")                 # travels with the model artifact
    result = check_drift(ReferenceProfile.load("model/profile.json"), current_df)
    decision = DriftPolicy().decide(result, [])        # none / warn / drift / error / not_judged

Never imports torch, ray or mlflow (tested). scipy.stats and matplotlib are
imported lazily, on first use.
"""

from keel.drift._check import (
    METHODS,
    CheckOptions,
    DriftResult,
    FeatureDrift,
    QualityIssue,
    check_drift,
    compare_summaries,
)
from keel.drift._errors import (
    DriftError,
    IncompatibleProfilesError,
    InvalidInputError,
    ProfileFormatError,
)
from keel.drift._metrics import DriftMetrics
from keel.drift._monitor import MonitorStats, StreamingMonitor, WindowConfig
from keel.drift._multivariate import MultivariateResult, domain_classifier_test
from keel.drift._performance import ScoreHistogram
from keel.drift._policy import (
    FAIL_ON,
    DriftPolicy,
    FeatureThreshold,
    Level,
    PolicyDecision,
    adjust_pvalues,
)
from keel.drift._profile import (
    OTHER_CATEGORY,
    PROFILE_FORMAT,
    PROFILE_VERSION,
    CategoricalSummary,
    ColumnSummary,
    JointSample,
    NumericSummary,
    ProfileOptions,
    ReferenceProfile,
    build_profile,
)
from keel.drift._report import (
    REPORT_FORMAT,
    REPORT_VERSION,
    DriftReport,
    ReportWindow,
    json_safe,
)
from keel.drift._service import (
    DRIFT_DETECTED,
    LABEL_TYPE,
    PREDICTION_TYPE,
    DeliveryLike,
    DriftDetected,
    DriftMonitorService,
    EventLike,
    MemoryMonitorStore,
    MonitorConsumer,
    MonitorStore,
    SQLiteMonitorStore,
    episode_event_id,
)
from keel.drift._sketch import QuantileSketch
from keel.drift._stats import (
    chi2_homogeneity,
    js_distance,
    ks_pvalue,
    ks_statistic,
    psi,
    wasserstein,
)

__all__ = [
    "FAIL_ON",
    "DRIFT_DETECTED",
    "LABEL_TYPE",
    "PREDICTION_TYPE",
    "DeliveryLike",
    "DriftDetected",
    "DriftMonitorService",
    "EventLike",
    "MemoryMonitorStore",
    "MonitorConsumer",
    "MonitorStore",
    "SQLiteMonitorStore",
    "episode_event_id",
    "METHODS",
    "OTHER_CATEGORY",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "CategoricalSummary",
    "CheckOptions",
    "ColumnSummary",
    "DriftError",
    "DriftMetrics",
    "DriftPolicy",
    "DriftReport",
    "DriftResult",
    "FeatureDrift",
    "FeatureThreshold",
    "IncompatibleProfilesError",
    "InvalidInputError",
    "JointSample",
    "Level",
    "MonitorStats",
    "MultivariateResult",
    "NumericSummary",
    "PolicyDecision",
    "ProfileFormatError",
    "ProfileOptions",
    "QualityIssue",
    "QuantileSketch",
    "ReferenceProfile",
    "ReportWindow",
    "ScoreHistogram",
    "StreamingMonitor",
    "WindowConfig",
    "adjust_pvalues",
    "build_profile",
    "check_drift",
    "chi2_homogeneity",
    "compare_summaries",
    "domain_classifier_test",
    "js_distance",
    "json_safe",
    "ks_pvalue",
    "ks_statistic",
    "psi",
    "wasserstein",
]
