"""keel.serving: online and batch inference from verified keel.artifacts artifacts.

    from keel.serving import load_predictor, ModelService, create_app, serve
    from keel.artifacts import TrustPolicy

    p = load_predictor("models/credit.tar", TrustPolicy.from_files(["keys/pub.pem"]))
    svc = ModelService("credit", p, store=open_online_store(), log=PredictionLog(bus))
    serve(create_app(svc), host="127.0.0.1", port=8080)       # uvicorn

Routes: Open Inference Protocol v2 REST (``/v2/health/*``, ``/v2/models/{name}[/ready|/infer]``),
``/v1/predict`` (entity-keyed; online features fetched by the server), ``/healthz``,
``/readyz``, ``/metrics``, ``/openapi.json``. Batch: ``score_parquet`` (Polars, streaming) and
``score_parquet_ray`` (Ray Data partitions, same predictor code, same output). Registry aliases:
``AliasFollower`` (hot swap). Model builders: ``resolve_builders`` (the one lookup).
torch is imported only when a model is loaded or run; ray only by ``score_parquet_ray``.
"""

from keel.serving._app import create_app
from keel.serving._batch import BatchReport, score_parquet
from keel.serving._batch_ray import connect_ray, score_parquet_ray
from keel.serving._batching import BatchingConfig, MicroBatcher
from keel.serving._builders import ENTRY_POINT_GROUP, build_mlp, resolve_builders
from keel.serving._canary import CANARY_FAILED, CanaryPolicy, CanaryWindow
from keel.serving._door import Door
from keel.serving._errors import (
    ConfigError,
    InvalidInputError,
    MalformedRequestError,
    ModelLoadError,
    NotFoundError,
    OverloadedError,
    ServingError,
    UnavailableError,
    UnknownEntityError,
)
from keel.serving._features import FeatureFetcher
from keel.serving._follow import (
    AliasFollower,
    ModelRef,
    download_from_registry,
    load_from_registry,
)
from keel.serving._limit import AdaptiveLimit, FixedLimit, LimitConfig
from keel.serving._predictor import (
    Predictor,
    configure_torch_threads,
    load_predictor,
    pick_device,
    predictor_from_loaded,
)
from keel.serving._predlog import PREDICTION_TYPE, PredictionLog
from keel.serving._schema import InputSchema, OutputSchema, compile_fields
from keel.serving._server import serve
from keel.serving._service import CanaryConfig, ModelService, entity_bucket
from keel.serving._telemetry import ServingTelemetry

__all__ = [
    "CANARY_FAILED",
    "ENTRY_POINT_GROUP",
    "PREDICTION_TYPE",
    "AdaptiveLimit",
    "AliasFollower",
    "BatchReport",
    "BatchingConfig",
    "CanaryConfig",
    "CanaryPolicy",
    "CanaryWindow",
    "ConfigError",
    "Door",
    "FeatureFetcher",
    "FixedLimit",
    "InputSchema",
    "InvalidInputError",
    "LimitConfig",
    "MalformedRequestError",
    "MicroBatcher",
    "ModelLoadError",
    "ModelRef",
    "ModelService",
    "NotFoundError",
    "OutputSchema",
    "OverloadedError",
    "PredictionLog",
    "Predictor",
    "ServingError",
    "ServingTelemetry",
    "UnavailableError",
    "UnknownEntityError",
    "build_mlp",
    "compile_fields",
    "configure_torch_threads",
    "connect_ray",
    "create_app",
    "download_from_registry",
    "entity_bucket",
    "load_from_registry",
    "load_predictor",
    "pick_device",
    "predictor_from_loaded",
    "resolve_builders",
    "score_parquet",
    "score_parquet_ray",
    "serve",
]
