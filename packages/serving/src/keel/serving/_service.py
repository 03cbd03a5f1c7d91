"""ModelService: one served model — its variants, routing, features, batching, logging.

Variants by role: ``primary`` (the alias being served, e.g. ``credit@champion``), an
optional ``canary`` (a fraction of traffic, sticky by entity hash) and an optional
``shadow`` (gets a copy of every primary request after the answer is sent; its output is
logged and measured, never returned). ``set_variant`` swaps a variant's predictor
atomically: a request uses the predictor it started with to the end (rows are batched only
with rows of the same predictor), so a hot swap fails no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel.serving._batching import BatchingConfig, MicroBatcher
from keel.serving._canary import CANARY_FAILED, CanaryPolicy, CanaryWindow
from keel.serving._errors import (
    ConfigError,
    InvalidInputError,
    MalformedRequestError,
    OverloadedError,
    ServingError,
    UnavailableError,
)
from keel.serving._features import FeatureFetcher
from keel.serving._predictor import Predictor
from keel.serving._predlog import PredictionLog
from keel.serving._telemetry import ServingTelemetry

ROLES = ("primary", "canary", "shadow")
MAX_INSTANCES = 1024
MAX_REQUEST_ID_CHARS = 128


def entity_bucket(key: str) -> float:
    """A stable number in [0, 1) for an entity key (BLAKE2b): same key, same variant."""
    h = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _first_entity(instances: Sequence[Mapping[str, Any]]) -> str | None:
    ent = instances[0].get("entity") if instances else None
    if isinstance(ent, str | int) and not isinstance(ent, bool):
        return str(ent)
    if isinstance(ent, Mapping) and ent:
        return "|".join(f"{k}={ent[k]}" for k in sorted(ent, key=str))
    return None


def _score(p: Predictor, outputs: Mapping[str, list[Any]], i: int) -> float | None:
    fields = p.outputs.fields
    if len(fields) == 1 and fields[0].dtype in ("float32", "float64"):
        f = fields[0]
        if f.min is not None and f.max is not None and f.min >= 0 and f.max <= 1:
            v = outputs[f.name][i]
            if isinstance(v, float) and math.isfinite(v):
                return min(1.0, max(0.0, v))
    return None


@dataclass
class Variant:
    role: str
    predictor: Predictor
    batcher: MicroBatcher
    window: CanaryWindow | None = None


@dataclass(frozen=True)
class CanaryConfig:
    fraction: float = 0.1
    policy: CanaryPolicy = field(default_factory=CanaryPolicy)

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ConfigError(f"canary fraction must be in [0, 1], got {self.fraction}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ModelService:
    """Serves one model name. Create it, then use it from one event loop."""

    def __init__(
        self,
        name: str,
        primary: Predictor | None = None,
        *,
        store: Any = None,
        log: PredictionLog | None = None,
        telemetry: ServingTelemetry | None = None,
        batching: BatchingConfig | None = None,
        canary: CanaryConfig | None = None,
        publish: Callable[[str, Mapping[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        max_instances: int = MAX_INSTANCES,
    ) -> None:
        self.name = name
        self.store = store
        self.log = log
        self.telemetry = telemetry or ServingTelemetry()
        self.batching = batching or BatchingConfig()
        self.canary = canary or CanaryConfig()
        self.publish = publish
        self._clock = clock
        self._wall = wall_clock
        self._new_id = new_id
        self.max_instances = max_instances
        self.variants: dict[str, Variant] = {}
        self._fetch_hist = self.telemetry.feature_fetch.labels(model=name)
        self._retired: list[MicroBatcher] = []
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.canary_failures: list[dict[str, Any]] = []
        self._metric_cache: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        if primary is not None:
            self.set_variant("primary", primary)

    # -- variants ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return "primary" in self.variants

    @property
    def primary(self) -> Predictor:
        v = self.variants.get("primary")
        if v is None:
            raise UnavailableError(f"model {self.name!r} is not loaded yet")
        return v.predictor

    def set_variant(self, role: str, predictor: Predictor | None) -> None:
        """Install, hot-swap or (with None) remove a variant. Thread-safe to call from the
        loop only (use ``loop.call_soon_threadsafe`` from a watcher thread)."""
        if role not in ROLES:
            raise ConfigError(f"variant role must be one of {ROLES}, got {role!r}")
        t = self.telemetry
        if predictor is None:
            old = self.variants.pop(role, None)
            if old is not None:
                self._retired.append(old.batcher)
            return
        cur = self.variants.get(role)
        if cur is not None:
            cur.predictor = predictor  # atomic: the next request picks it up
            if cur.window is not None:
                cur.window = CanaryWindow(self.canary.policy.window)
            t.swaps.labels(model=self.name, variant=role).inc()
        else:
            fwd = t.forward_rows.labels(model=self.name, variant=role)
            sli_batch = t.sli.batch_size.labels(model=self.name) if role == "primary" else None

            def on_batch(rows: int) -> None:
                fwd.observe(rows)
                if sli_batch is not None:
                    sli_batch.observe(rows)

            batcher = MicroBatcher(
                lambda p, x: p.predict(x), self.batching, on_batch=on_batch, clock=self._clock
            )
            window = CanaryWindow(self.canary.policy.window) if role == "canary" else None
            self.variants[role] = Variant(role, predictor, batcher, window)
        t.model_info.labels(model=self.name, variant=role).set(predictor.loaded_at)

    def _route(self, instances: Sequence[Mapping[str, Any]]) -> Variant:
        primary = self.variants.get("primary")
        if primary is None:
            raise UnavailableError(f"model {self.name!r} is not loaded yet")
        canary = self.variants.get("canary")
        if canary is not None and self.canary.fraction > 0:
            key = _first_entity(instances)
            if key is not None and entity_bucket(key) < self.canary.fraction:
                return canary
        return primary

    # -- requests ---------------------------------------------------------------------------
    def _instances(self, body: Any) -> tuple[list[Mapping[str, Any]], str]:
        if not isinstance(body, Mapping):
            raise MalformedRequestError("the body must be a JSON object with `instances`")
        extra = sorted(set(body) - {"instances", "request_id"})
        if extra:
            raise InvalidInputError(
                f"unknown top-level field(s) {extra}: expected `instances` and optional `request_id`",
                [{"field": str(k)[:64], "error": "is not a request field"} for k in extra],
            )
        inst = body.get("instances")
        if not isinstance(inst, list) or not inst:
            raise InvalidInputError(
                "`instances` must be a non-empty list of {entity, features} objects",
                [{"field": "instances", "error": "must be a non-empty list"}],
            )
        if len(inst) > self.max_instances:
            raise InvalidInputError(
                f"{len(inst)} instances exceed the limit of {self.max_instances}: split the request",
                [{"field": "instances", "error": f"at most {self.max_instances}"}],
            )
        errors = []
        for i, x in enumerate(inst):
            if not isinstance(x, Mapping):
                errors.append({"instance": i, "field": None, "error": "must be an object"})
                continue
            for k in x:
                if k not in ("entity", "features"):
                    errors.append(
                        {
                            "instance": i,
                            "field": str(k)[:64],
                            "error": "is not an instance field (entity, features)",
                        }
                    )
        if errors:
            raise InvalidInputError(f"{len(errors)} malformed instance(s)", errors)
        rid = body.get("request_id")
        if rid is None:
            rid = self._new_id()
        elif not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
            raise InvalidInputError(
                f"request_id must be a string of 1..{MAX_REQUEST_ID_CHARS} characters",
                [{"field": "request_id", "error": "bad request id"}],
            )
        return inst, rid

    async def predict(self, body: Any) -> dict[str, Any]:
        """``/v1/predict``: entity-keyed instances -> predictions (see the README)."""
        t0 = self._clock()
        variant: Variant | None = None
        p: Predictor | None = None
        try:
            instances, rid = self._instances(body)
            variant = self._route(instances)
            p = variant.predictor
            rows = self._rows(p, instances)
            x = p.inputs.encode_rows(rows)
            y = await variant.batcher.submit(p, x)
            outputs = p.outputs.decode(y)
        except BaseException as e:
            self._account(
                variant,
                p,
                t0,
                e,
                len(body.get("instances") or [])
                if isinstance(body, Mapping) and isinstance(body.get("instances"), list)
                else 0,
            )
            raise
        latency = self._clock() - t0
        self._account(variant, p, t0, None, len(instances))
        n = len(instances)
        preds = [{k: v[i] for k, v in outputs.items()} for i in range(n)]
        if self.log is not None:
            self._log(rid, variant.role, p, instances, rows, outputs, latency)
        shadow = self.variants.get("shadow")
        if shadow is not None and variant.role == "primary":
            task = asyncio.get_running_loop().create_task(self._shadow(shadow, rid, instances))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return {
            "request_id": rid,
            "model": self.name,
            "version": p.version,
            "digest": p.digest,
            "variant": variant.role,
            "predictions": preds,
        }

    def _rows(self, p: Predictor, instances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        views = p.feature_views
        if views and self.store is None:
            raise UnavailableError(
                f"model {p.name!r} reads feature views {[v for v, _ in views]} but no online "
                "store is configured (set online_url)"
            )
        fetcher = FeatureFetcher(self.store, views, clock=self._clock)
        rows = fetcher.rows(instances, p.inputs.names)
        if views:
            self._fetch_hist.observe(fetcher.last_fetch_s)
        return rows

    async def infer_v2(self, body: Any) -> dict[str, Any]:
        """Open Inference Protocol v2 ``infer``: named input tensors -> output tensors.
        Inputs are the model's features by name (shape ``[n]`` or ``[n, 1]``); served by
        the primary variant (v2 requests carry no entity to route a canary by)."""
        t0 = self._clock()
        variant = self.variants.get("primary")
        p = variant.predictor if variant is not None else None
        n = 0
        try:
            if variant is None or p is None:
                raise UnavailableError(f"model {self.name!r} is not loaded yet")
            rid, columns, n = _v2_columns(body, self._new_id)
            x = p.inputs.encode_columns(columns, n)
            y = await variant.batcher.submit(p, x)
            outputs = p.outputs.decode(y)
        except BaseException as e:
            self._account(variant, p, t0, e, n)
            raise
        latency = self._clock() - t0
        self._account(variant, p, t0, None, n)
        if self.log is not None:
            rows = [{k: columns[k][i] for k in columns} for i in range(n)]
            self._log(rid, "primary", p, [{} for _ in range(n)], rows, outputs, latency)
        by_name = {f.name: f for f in p.outputs.fields}
        return {
            "model_name": self.name,
            "model_version": p.version,
            "id": rid,
            "parameters": {"digest": p.digest},
            "outputs": [
                {
                    "name": k,
                    "datatype": by_name[k].v2_datatype,
                    "shape": [n],
                    "data": v,
                }
                for k, v in outputs.items()
            ],
        }

    # -- accounting -------------------------------------------------------------------------
    def _children(self, role: str, version: str, outcome: str) -> tuple[Any, ...]:
        """The labelled metric children of one (variant, version, outcome), resolved once:
        a labels() lookup (with its cardinality guard) costs more than the observation."""
        key = (role, version, outcome)
        got = self._metric_cache.get(key)
        if got is None:
            t, m = self.telemetry, self.name
            got = (
                t.sli.requests.labels(model=m, version=version, outcome=outcome),
                t.sli.latency.labels(model=m, version=version),
                t.sli.predictions.labels(model=m, version=version),
                t.variant_requests.labels(model=m, variant=role, outcome=outcome),
                t.variant_latency.labels(model=m, variant=role),
                t.queue_rows.labels(model=m, variant=role),
            )
            if len(self._metric_cache) > 1000:
                self._metric_cache.clear()
            self._metric_cache[key] = got
        return got

    def _account(
        self,
        variant: Variant | None,
        p: Predictor | None,
        t0: float,
        exc: BaseException | None,
        rows: int,
    ) -> None:
        latency = self._clock() - t0
        version = p.version if p is not None else "none"
        role = variant.role if variant is not None else "primary"
        if isinstance(exc, OverloadedError):
            # A shed (admission queue full, model shutting down) is load we chose not to
            # take: counted in shed_total only — not an error of the availability SLI, not a
            # latency sample, not a canary failure (an overload must not stop a canary).
            t = self.telemetry
            t.shed.labels(model=self.name, variant=role).inc()
            if variant is not None:
                t.queue_rows.labels(model=self.name, variant=role).set(variant.batcher.queued_rows)
            return
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, InvalidInputError | MalformedRequestError):
            outcome = "invalid"
        else:
            outcome = "error"
        requests, lat, preds, v_requests, v_lat, queue_rows = self._children(role, version, outcome)
        requests.inc()
        lat.observe(latency)
        if outcome == "ok" and rows:
            preds.inc(rows)
        v_requests.inc()
        if outcome != "invalid":
            v_lat.observe(latency)
        if variant is not None:
            queue_rows.set(variant.batcher.queued_rows)
            if variant.window is not None and outcome != "invalid":
                variant.window.add(outcome == "ok", latency)
                reason = self.canary.policy.decide(variant.window)
                if reason is not None and self.variants.get("canary") is variant:
                    self._stop_canary(variant, reason)

    def _stop_canary(self, variant: Variant, reason: str) -> None:
        self.set_variant("canary", None)
        self.telemetry.canary_stopped.labels(model=self.name).inc()
        p = variant.predictor
        payload = {
            "model": self.name,
            "version": p.version,
            "digest": p.digest,
            "reason": reason,
            "time": self._wall().isoformat(),
        }
        self.canary_failures.append(payload)
        if self.publish is not None:
            # the stop itself already happened; the event is best effort
            with contextlib.suppress(Exception):
                self.publish(CANARY_FAILED, payload)

    def _log(
        self,
        rid: str,
        role: str,
        p: Predictor,
        instances: Sequence[Mapping[str, Any]],
        rows: Sequence[Mapping[str, Any]],
        outputs: Mapping[str, list[Any]],
        latency: float,
    ) -> None:
        assert self.log is not None
        for i, row in enumerate(rows):
            ent = instances[i].get("entity") if i < len(instances) else None
            rec: dict[str, Any] = {
                "request_id": rid,
                "instance": i,
                "model": self.name,
                "model_digest": p.digest,
                "version": p.version,
                "variant": role,
                "entity": ent if isinstance(ent, str) else (None if ent is None else str(ent)),
                "features": {k: row.get(k) for k in p.inputs.names},
                "output": {k: v[i] for k, v in outputs.items()},
                "latency_s": latency,
            }
            s = _score(p, outputs, i)
            if s is not None:
                rec["score"] = s
            self.log.log(rec)

    async def _shadow(
        self, shadow: Variant, rid: str, instances: Sequence[Mapping[str, Any]]
    ) -> None:
        t0 = self._clock()
        p = shadow.predictor
        try:
            rows = self._rows(p, instances)
            x = p.inputs.encode_rows(rows)
            y = await shadow.batcher.submit(p, x)
            outputs = p.outputs.decode(y)
        except ServingError as e:
            self._account(shadow, p, t0, e, len(instances))
            return
        except Exception as e:  # a shadow's failure never reaches the caller
            self._account(shadow, p, t0, e, len(instances))
            return
        self._account(shadow, p, t0, None, len(instances))
        if self.log is not None:
            self._log(rid, "shadow", p, instances, rows, outputs, self._clock() - t0)

    async def aclose(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        for v in self.variants.values():
            await v.batcher.aclose()
        for b in self._retired:
            await b.aclose()


def _v2_columns(body: Any, new_id: Callable[[], str]) -> tuple[str, dict[str, list[Any]], int]:
    if not isinstance(body, Mapping):
        raise MalformedRequestError("the body must be a JSON object with `inputs`")
    extra = sorted(set(body) - {"id", "inputs", "outputs", "parameters"})
    if extra:
        raise InvalidInputError(
            f"unknown field(s) {extra} in the inference request",
            [{"field": str(k)[:64], "error": "is not an inference request field"} for k in extra],
        )
    rid = body.get("id")
    if rid is None:
        rid = new_id()
    elif not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
        raise InvalidInputError(
            "id must be a string",
            [{"field": "id", "error": f"1..{MAX_REQUEST_ID_CHARS} characters"}],
        )
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError(
            "`inputs` must be a non-empty list of tensors",
            [{"field": "inputs", "error": "must be a non-empty list"}],
        )
    columns: dict[str, list[Any]] = {}
    errors: list[dict[str, Any]] = []
    ns: set[int] = set()
    for j, t in enumerate(inputs):
        if not isinstance(t, Mapping) or not isinstance(t.get("name"), str):
            errors.append(
                {"field": f"inputs[{j}]", "error": "must be an object with a string `name`"}
            )
            continue
        name = t["name"]
        shape, data = t.get("shape"), t.get("data")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            errors.append({"field": name, "error": "shape must be [n] or [n, 1]"})
            continue
        if not isinstance(data, list) or len(data) != shape[0]:
            errors.append(
                {"field": name, "error": f"data must be a flat list of {shape[0]} values"}
            )
            continue
        if name in columns:
            errors.append({"field": name, "error": "is given twice"})
            continue
        columns[name] = data
        ns.add(shape[0])
    if not errors and len(ns) != 1:
        errors.append(
            {"field": "inputs", "error": f"inputs disagree on the batch size: {sorted(ns)}"}
        )
    if not errors and 0 in ns:
        errors.append({"field": "inputs", "error": "batch size must be >= 1"})
    if not errors and max(ns) > MAX_INSTANCES:
        errors.append({"field": "inputs", "error": f"batch size must be <= {MAX_INSTANCES}"})
    if errors:
        raise InvalidInputError(f"{len(errors)} malformed input tensor(s)", errors)
    return rid, columns, ns.pop()
