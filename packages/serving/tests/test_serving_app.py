"""The HTTP surface in-process (httpx ASGI transport): OIP v2, /v1/predict with online
features, the bad-input battery, prediction log, metrics."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from testutil.serving_artifacts import Keys, make_artifact, reference

from keel.events import open_bus
from keel.features import SQLiteOnlineStore
from keel.serving import (
    PREDICTION_TYPE,
    BatchingConfig,
    ModelService,
    PredictionLog,
    ServingTelemetry,
    create_app,
    load_predictor,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture()
def world(tmp_path: Path, keys: Keys) -> Iterator[dict[str, Any]]:
    path, model = make_artifact(tmp_path, keys, seed=1)
    store = SQLiteOnlineStore(tmp_path / "online.db")
    store.write(
        "card_stats:v1",
        [
            ("c1", {"f0": 1.5, "f1": -3.0, "f2": 0.25, "other": 9}, T0),
            ("c2", {"f0": 0.0, "f1": 2.0, "f2": -1.0}, T0),
        ],
    )
    bus = open_bus(f"sqlite:///{tmp_path}/events.db")
    yield {"path": path, "model": model, "store": store, "bus": bus, "keys": keys}
    bus.close()
    store.close()


def run(
    world: dict[str, Any],
    body: Callable[[httpx.AsyncClient, ModelService], Awaitable[None]],
    app_kw: dict[str, Any] | None = None,
    **svc_kw: Any,
) -> ModelService:
    async def main() -> ModelService:
        tel = ServingTelemetry()
        log = PredictionLog(world["bus"], telemetry=tel, flush_s=0.01)
        p = load_predictor(world["path"], world["keys"].policy)
        svc = ModelService("credit", p, store=world["store"], log=log, telemetry=tel, **svc_kw)
        app = create_app(svc, **(app_kw or {}))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            await body(c, svc)
        await svc.aclose()
        log.close()
        return svc

    return asyncio.run(main())


def test_v1_predict_reads_online_features_and_logs_the_prediction(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        r = await c.post(
            "/v1/predict",
            json={
                "request_id": "r1",
                "instances": [
                    {"entity": "c1", "features": {"channel": "atm"}},
                    {"entity": "c2", "features": {"channel": "web"}},
                ],
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        want = reference(world["model"], [[1.5, -3.0, 0.25, 2.0], [0.0, 2.0, -1.0, 0.0]])
        assert [p["p_default"] for p in out["predictions"]] == pytest.approx(want, abs=1e-6)
        assert out["variant"] == "primary" and out["digest"] == svc.primary.digest

    run(world, body)
    events = [e.event for e in world["bus"].replay("predictions")]
    assert [e.type for e in events] == [PREDICTION_TYPE] * 2
    p0 = events[0].json()
    assert p0["request_id"] == "r1" and p0["entity"] == "c1" and p0["variant"] == "primary"
    assert p0["features"] == {"f0": 1.5, "f1": -3.0, "f2": 0.25, "channel": "atm"}
    assert 0 <= p0["score"] <= 1 and p0["output"]["p_default"] == p0["score"]
    assert p0["model_digest"].startswith("sha256:") and p0["latency_s"] >= 0


def test_unknown_entity_is_422_naming_entity_and_view(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        r = await c.post(
            "/v1/predict",
            json={"instances": [{"entity": "nobody", "features": {"channel": "web"}}]},
        )
        assert r.status_code == 422
        j = r.json()
        assert j["code"] == "unknown_entity"
        assert j["errors"][0]["entity"] == "nobody" and j["errors"][0]["view"] == "card_stats"

    run(world, body)


def test_view_features_under_their_training_set_names_are_read_online(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """A model trained on a keel.features training set reads ``<view>__<feature>`` columns:
    serving fills them from the view's online values, exactly as the bare names."""
    keys = world["keys"]
    names = ["card_stats__f0", "card_stats__f1", "f2"]
    path, model = make_artifact(tmp_path, keys, seed=3, dirname="full-names", features=names)

    async def main() -> tuple[httpx.Response, httpx.Response]:
        log = PredictionLog(world["bus"], flush_s=0.01)
        svc = ModelService(
            "credit", load_predictor(path, keys.policy), store=world["store"], log=log
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://t"
        ) as c:
            ok = await c.post(
                "/v1/predict",
                json={"instances": [{"entity": "c1", "features": {"channel": "pos"}}]},
            )
            dup = await c.post(
                "/v1/predict",
                json={
                    "instances": [
                        {"entity": "c1", "features": {"channel": "pos", "card_stats__f0": 0.0}}
                    ]
                },
            )
        await svc.aclose()
        log.close()
        return ok, dup

    ok, dup = asyncio.run(main())
    assert ok.status_code == 200, ok.text
    want = reference(model, [[1.5, -3.0, 0.25, 1.0]])  # channel "pos" is category 1
    assert ok.json()["predictions"][0]["p_default"] == pytest.approx(want[0], abs=1e-6)
    assert dup.status_code == 422 and "served by a feature view" in dup.text
    logged = [e.event.json() for e in world["bus"].replay("predictions")]
    assert logged[0]["features"] == {
        "card_stats__f0": 1.5,
        "card_stats__f1": -3.0,
        "f2": 0.25,
        "channel": "pos",
    }


def test_v2_protocol_endpoints(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).status_code == 200
        assert (await c.get("/v2/models/credit/ready")).json()["ready"] is True
        meta = (await c.get("/v2/models/credit")).json()
        assert [i["name"] for i in meta["inputs"]] == ["f0", "f1", "f2", "channel"]
        assert meta["inputs"][3]["datatype"] == "BYTES" and meta["outputs"][0]["datatype"] == "FP64"
        r = await c.post(
            "/v2/models/credit/infer",
            json={
                "id": "x",
                "inputs": [
                    {"name": "f0", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]},
                    {"name": "f1", "shape": [2, 1], "datatype": "FP64", "data": [0.0, 1.0]},
                    {"name": "f2", "shape": [2], "datatype": "FP64", "data": [3.0, -3.0]},
                    {"name": "channel", "shape": [2], "datatype": "BYTES", "data": ["pos", "atm"]},
                ],
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "x" and out["model_name"] == "credit"
        o = out["outputs"][0]
        assert o["name"] == "p_default" and o["shape"] == [2]
        assert o["data"] == pytest.approx(
            reference(world["model"], [[1, 0, 3, 1], [2, 1, -3, 2]]), abs=1e-6
        )
        assert (await c.get("/v2/models/nope")).status_code == 404
        assert (await c.post("/v2/models/nope/infer", json={})).status_code == 404
        spec = (await c.get("/openapi.json")).json()
        assert "/v2/models/{name}/infer" in spec["paths"] and "/v1/predict" in spec["paths"]

    run(world, body)


BAD: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    ("not json", b"{nope", 400, "bad_request"),
    ("empty", b"", 400, "bad_request"),
    ("array body", b"[1,2]", 400, "bad_request"),
    ("no instances", {"x": 1}, 422, "invalid_input"),
    ("empty instances", {"instances": []}, 422, "invalid_input"),
    ("instance not object", {"instances": [3]}, 422, "invalid_input"),
    ("extra instance field", {"instances": [{"entity": "c1", "foo": 1}]}, 422, "invalid_input"),
    ("entity wrong type", {"instances": [{"entity": [1]}]}, 422, "invalid_input"),
    (
        "wrong type",
        {"instances": [{"entity": "c1", "features": {"channel": 7}}]},
        422,
        "invalid_input",
    ),
    ("missing field", {"instances": [{"entity": "c1"}]}, 422, "invalid_input"),
    (
        "extra field",
        {"instances": [{"entity": "c1", "features": {"channel": "web", "zz": 1}}]},
        422,
        "invalid_input",
    ),
    (
        "view field sent",
        {"instances": [{"entity": "c1", "features": {"channel": "web", "f0": 1}}]},
        422,
        "invalid_input",
    ),
    (
        "huge integer",
        b'{"instances": [{"entity": "c1", "features": {"channel": "web"}}], "x": 1}',
        422,
        "invalid_input",
    ),
    ("bad request id", {"request_id": 5, "instances": [{"entity": "c1"}]}, 422, "invalid_input"),
]


@pytest.mark.parametrize(("case", "payload", "status", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_battery(
    world: dict[str, Any], case: str, payload: Any, status: int, code: str
) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        r = await c.post("/v1/predict", content=data, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        j = r.json()
        assert j["code"] == code and j["error"]
        if status == 422:
            assert j["errors"], "a 422 names its fields"

    run(world, body)


def test_huge_numbers_are_422_not_500(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        big, big_neg = "1" + "0" * 400, "-1" + "0" * 30
        data = (
            '{"inputs": [{"name": "f0", "shape": [1], "datatype": "FP64", "data": [' + big + "]},"
            '{"name": "f1", "shape": [1], "datatype": "FP64", "data": [1e400]},'
            '{"name": "f2", "shape": [1], "datatype": "FP64", "data": [' + big_neg + "]},"
            '{"name": "channel", "shape": [1], "datatype": "BYTES", "data": ["web"]}]}'
        )
        r = await c.post("/v2/models/credit/infer", content=data)
        assert r.status_code == 422, r.text
        assert {e["field"] for e in r.json()["errors"]} == {"f0", "f1", "f2"}

    run(world, body)


def test_nan_and_inf_literals_get_422_naming_the_field(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        data = json.dumps(
            {
                "inputs": [
                    {"name": "f0", "shape": [1], "datatype": "FP64", "data": [math.nan]},
                    {"name": "f1", "shape": [1], "datatype": "FP64", "data": [math.inf]},
                    {"name": "f2", "shape": [1], "datatype": "FP64", "data": [1.0]},
                    {"name": "channel", "shape": [1], "datatype": "BYTES", "data": ["web"]},
                ]
            }
        )
        assert "NaN" in data
        r = await c.post("/v2/models/credit/infer", content=data)
        assert r.status_code == 422
        assert {e["field"] for e in r.json()["errors"]} == {"f0", "f1"}

    run(world, body)


def test_oversized_body_is_413_without_reading_it_all(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        big = b'{"instances": [' + b'{"entity": "c1"},' * 700_000 + b'{"entity": "c1"}]}'
        assert len(big) > 10_000_000
        r = await c.post("/v1/predict", content=big)
        assert r.status_code == 413 and r.json()["code"] == "too_large"

    run(world, body)


def test_metrics_count_ok_invalid_and_latency(world: dict[str, Any]) -> None:
    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        ok = {"instances": [{"entity": "c1", "features": {"channel": "web"}}]}
        for _ in range(3):
            assert (await c.post("/v1/predict", json=ok)).status_code == 200
        assert (
            await c.post("/v1/predict", json={"instances": [{"entity": "c1"}]})
        ).status_code == 422
        text = (await c.get("/metrics")).text
        v = svc.primary.version
        assert (
            f'keel_serving_requests_total{{model="credit",outcome="ok",version="{v}"}} 3.0' in text
        )
        assert (
            f'keel_serving_requests_total{{model="credit",outcome="invalid",version="{v}"}} 1.0'
            in text
        )
        assert (
            'keel_serving_variant_latency_seconds_count{model="credit",variant="primary"} 3.0'
            in text
        )
        assert 'keel_serving_feature_fetch_seconds_count{model="credit"} 4.0' in text

    run(world, body, batching=BatchingConfig(max_batch_rows=8))


def test_shadow_is_logged_but_never_answers(world: dict[str, Any], tmp_path: Path) -> None:
    shadow_path, shadow_model = make_artifact(tmp_path, world["keys"], seed=7, dirname="shadow")

    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        svc.set_variant("shadow", load_predictor(shadow_path, world["keys"].policy, version="2"))
        r = await c.post(
            "/v1/predict",
            json={
                "request_id": "s1",
                "instances": [{"entity": "c1", "features": {"channel": "web"}}],
            },
        )
        assert r.json()["variant"] == "primary"
        want_primary = reference(world["model"], [[1.5, -3.0, 0.25, 0.0]])[0]
        assert r.json()["predictions"][0]["p_default"] == pytest.approx(want_primary, abs=1e-6)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not svc._shadow_tasks:
                break

    run(world, body)
    events = [e.event.json() for e in world["bus"].replay("predictions")]
    by_variant = {e["variant"]: e for e in events}
    assert set(by_variant) == {"primary", "shadow"}
    assert by_variant["shadow"]["version"] == "2"
    want_shadow = reference(shadow_model, [[1.5, -3.0, 0.25, 0.0]])[0]
    assert by_variant["shadow"]["output"]["p_default"] == pytest.approx(want_shadow, abs=1e-6)


def test_canary_is_sticky_by_entity_and_stopped_on_slo_breach(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from keel.serving import CANARY_FAILED, CanaryConfig, CanaryPolicy, entity_bucket

    store = world["store"]
    ents = [f"e{i}" for i in range(200)]
    store.write("card_stats:v1", [(e, {"f0": 1.0, "f1": 1.0, "f2": 1.0}, T0) for e in ents])
    canary_path, _ = make_artifact(tmp_path, world["keys"], seed=9, dirname="canary")
    published: list[tuple[str, dict[str, Any]]] = []
    in_canary = [e for e in ents if entity_bucket(e) < 0.3]
    assert 30 < len(in_canary) < 90

    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        svc.set_variant("canary", load_predictor(canary_path, world["keys"].policy, version="9"))
        for e in ents[:50]:
            for _ in range(2):  # sticky: the same entity always gets the same variant
                r = await c.post(
                    "/v1/predict",
                    json={"instances": [{"entity": e, "features": {"channel": "web"}}]},
                )
                assert r.json()["variant"] == ("canary" if e in in_canary else "primary")

        def broken(x: Any) -> Any:
            raise RuntimeError("canary model broke")

        svc.variants["canary"].predictor.model = broken
        codes = []
        for e in in_canary:
            r = await c.post(
                "/v1/predict", json={"instances": [{"entity": e, "features": {"channel": "web"}}]}
            )
            codes.append(r.status_code)
        assert "canary" not in svc.variants  # stopped at once
        failed = codes.count(500)
        # errors until the policy's error rate is crossed, then the primary serves the rest
        assert 1 <= failed <= 10 and codes == [500] * failed + [200] * (len(codes) - failed)
        r = await c.post(
            "/v1/predict",
            json={"instances": [{"entity": in_canary[0], "features": {"channel": "web"}}]},
        )
        assert r.json()["variant"] == "primary"

    run(
        world,
        body,
        canary=CanaryConfig(0.3, CanaryPolicy(max_error_rate=0.1, min_requests=20, window=50)),
        publish=lambda t, p: published.append((t, dict(p))),
    )
    assert [t for t, _ in published] == [CANARY_FAILED]
    assert published[0][1]["version"] == "9" and "error rate" in published[0][1]["reason"]


def test_requests_beyond_the_in_flight_limit_are_refused_at_the_door(
    world: dict[str, Any],
) -> None:
    """With 2 inference requests in flight, a third gets 503 + Retry-After at once (its body
    never read), is counted as shed at the entry, and the two admitted ones still succeed."""
    body_json = {"instances": [{"entity": "c1", "features": {"channel": "atm"}}]}

    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        release = asyncio.Event()
        entered = 0
        real_predict = svc.predict

        async def slow_predict(payload: Any) -> Any:
            nonlocal entered
            entered += 1
            await release.wait()
            return await real_predict(payload)

        svc.predict = slow_predict  # type: ignore[method-assign,assignment]
        first = [asyncio.create_task(c.post("/v1/predict", json=body_json)) for _ in range(2)]
        while entered < 2:
            await asyncio.sleep(0.001)
        refused = await c.post("/v1/predict", content=b"{not even json")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "in flight" in refused.json()["error"]
        release.set()
        for r in await asyncio.gather(*first):
            assert r.status_code == 200, r.text
        again = await c.post("/v1/predict", json=body_json)  # the slots are free again
        assert again.status_code == 200, again.text
        expo = (await c.get("/metrics")).text
        assert 'keel_serving_shed_total{model="credit",variant="entry"} 1.0' in expo
        # the shed request is in no SLI series: 3 requests, 3 ok, 3 latency samples
        s = samples(expo)
        assert s[("keel_serving_requests_total", "ok")] == 3.0
        assert ("keel_serving_requests_total", "error") not in s
        assert s[("keel_serving_request_latency_seconds_count", None)] == 3.0

    run(world, body, app_kw={"max_in_flight": 2})


def samples(exposition: str) -> dict[tuple[str, str | None], float]:
    """The exposition's samples summed by (sample name, outcome label)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str | None], float] = {}
    for fam in text_string_to_metric_families(exposition):
        for smp in fam.samples:
            key = (smp.name, smp.labels.get("outcome"))
            out[key] = out.get(key, 0.0) + smp.value
    return out


def test_queue_sheds_are_not_errors_of_the_availability_sli(world: dict[str, Any]) -> None:
    """A full admission queue answers 503 `overloaded`; those requests are counted in
    `shed_total{variant="primary"}` only — not as `requests_total{outcome="error"}` (the
    availability SLI's bad events), not in the latency histograms (the latency SLI)."""
    import threading

    ok_body = {"instances": [{"entity": "c1", "features": {"channel": "web"}}]}

    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        p = svc.primary
        real, started, gate = p.model, threading.Event(), threading.Event()

        def held(x: Any) -> Any:  # the forward pass waits until the test lets it go
            started.set()
            gate.wait(10)
            return real(x)

        p.model = held
        batcher = svc.variants["primary"].batcher
        running = asyncio.create_task(c.post("/v1/predict", json=ok_body))
        while not started.is_set():
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(c.post("/v1/predict", json=ok_body))
        while batcher.queued_rows < 1:
            await asyncio.sleep(0.001)
        shed = [await c.post("/v1/predict", json=ok_body) for _ in range(3)]
        assert [r.status_code for r in shed] == [503] * 3
        assert {r.json()["code"] for r in shed} == {"overloaded"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
        gate.set()
        assert [r.status_code for r in await asyncio.gather(running, queued)] == [200, 200]
        bad = await c.post("/v1/predict", json={"instances": [{"entity": "c1"}]})
        assert bad.status_code == 422

        s = samples((await c.get("/metrics")).text)
        assert s[("keel_serving_shed_total", None)] == 3.0
        assert s[("keel_serving_requests_total", "ok")] == 2.0
        assert s[("keel_serving_requests_total", "invalid")] == 1.0
        assert ("keel_serving_requests_total", "error") not in s
        assert s[("keel_serving_request_latency_seconds_count", None)] == 3.0  # 2 ok + 1 invalid
        assert s[("keel_serving_variant_requests_total", "ok")] == 2.0
        assert ("keel_serving_variant_requests_total", "error") not in s
        assert s[("keel_serving_variant_latency_seconds_count", None)] == 2.0
        expo = (await c.get("/metrics")).text
        assert 'keel_serving_shed_total{model="credit",variant="primary"} 3.0' in expo

    run(world, body, batching=BatchingConfig(max_batch_rows=1, max_queue_rows=1))


def test_entry_sheds_are_labelled_with_a_served_model_not_the_path(
    world: dict[str, Any],
) -> None:
    """An entry shed on `/v2/models/<anything>/infer` counts under a served model's name:
    a caller cannot mint label values (series) by inventing model names."""

    async def body(c: httpx.AsyncClient, svc: ModelService) -> None:
        release, entered = asyncio.Event(), asyncio.Event()
        real_predict = svc.predict

        async def slow_predict(payload: Any) -> Any:
            entered.set()
            await release.wait()
            return await real_predict(payload)

        svc.predict = slow_predict  # type: ignore[method-assign,assignment]
        ok = {"instances": [{"entity": "c1", "features": {"channel": "web"}}]}
        first = asyncio.create_task(c.post("/v1/predict", json=ok))
        await entered.wait()
        for name in ("made-up-1", "made-up-2"):
            r = await c.post(f"/v2/models/{name}/infer", content=b"{}")
            assert r.status_code == 503, r.text
        release.set()
        assert (await first).status_code == 200
        expo = (await c.get("/metrics")).text
        assert 'keel_serving_shed_total{model="credit",variant="entry"} 2.0' in expo
        assert "made-up" not in expo

    run(world, body, app_kw={"max_in_flight": 1})


def test_max_in_flight_must_be_positive(world: dict[str, Any]) -> None:
    p = load_predictor(world["path"], world["keys"].policy)
    svc = ModelService("credit", p, store=world["store"])
    with pytest.raises(ValueError, match="max_in_flight"):
        create_app(svc, max_in_flight=0)
    asyncio.run(svc.aclose())
