"""The door (raw ASGI refusal before the router) and the in-flight limit policies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keel.serving import AdaptiveLimit, ConfigError, Door, FixedLimit, LimitConfig
from keel.serving._door import SHED_BODY, inference_model


def test_inference_paths_are_recognised_and_others_pass() -> None:
    assert inference_model("/v1/predict") == ""
    assert inference_model("/v2/models/credit/infer") == "credit"
    assert inference_model("/v1/models/credit/predict") == "credit"
    for other in ("/metrics", "/v2/models/credit", "/v2/models/credit/ready", "/v1/predictx"):
        assert inference_model(other) is None


def _scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


def test_a_request_beyond_the_limit_is_refused_before_its_body_is_read() -> None:
    """With the one slot taken, the next inference request gets 503 + Retry-After and the
    constant body; its ``receive`` is never called and the inner app never sees it. GETs
    and non-inference POSTs pass whatever the load; the slot frees when the first ends."""

    async def main() -> None:
        release = asyncio.Event()
        seen: list[str] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            if scope["path"] == "/v1/predict":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        sheds: list[str] = []
        door = Door(inner, FixedLimit(1), sheds.append, retry_after_s=2)

        async def never_receive() -> dict[str, Any]:
            raise AssertionError("the refused request's body was read")

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        sent: list[dict[str, Any]] = []

        async def send(msg: Any) -> None:
            sent.append(msg)

        async def ignore(msg: Any) -> None:
            pass

        first = asyncio.create_task(door(_scope("/v1/predict"), receive, ignore))
        while door.in_flight < 1:
            await asyncio.sleep(0)
        await door(_scope("/v2/models/other/infer"), never_receive, send)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 503
        headers = dict(sent[0]["headers"])
        assert headers[b"retry-after"] == b"2"
        assert headers[b"content-length"] == str(len(SHED_BODY)).encode()
        assert sent[1]["body"] == SHED_BODY and b'"overloaded"' in SHED_BODY
        assert sheds == ["other"] and door.shed == 1
        assert seen == ["/v1/predict"]  # the refused one never reached the app
        await door(_scope("/metrics", "GET"), receive, ignore)
        await door(_scope("/v2/models/x/ready", "POST"), receive, ignore)
        assert seen == ["/v1/predict", "/metrics", "/v2/models/x/ready"]
        release.set()
        await first
        assert door.in_flight == 0
        await door(_scope("/v1/predict"), receive, ignore)  # admitted again
        assert seen[-1] == "/v1/predict" and door.shed == 1

    asyncio.run(main())


def test_the_slot_is_freed_when_the_app_fails() -> None:
    async def main() -> None:
        async def inner(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("boom")

        door = Door(inner, FixedLimit(1), lambda m: None)

        async def nothing() -> dict[str, Any]:
            return {}

        async def ignore(msg: Any) -> None:
            pass

        for _ in range(2):
            with pytest.raises(RuntimeError):
                await door(_scope("/v1/predict"), nothing, ignore)
        assert door.in_flight == 0 and door.shed == 0

    asyncio.run(main())


def _feed(limit: AdaptiveLimit, latency_s: float, windows: int, *, refused: bool) -> None:
    for _ in range(windows):
        for _ in range(limit.config.window):
            if refused:
                limit.on_refused()
            limit.on_sample(latency_s)


def test_adaptive_limit_shrinks_only_on_a_lasting_overshoot_under_refusals() -> None:
    cfg = LimitConfig(initial=32, min_limit=2, max_limit=64, window=10, warmup=2, patience=2)
    lim = AdaptiveLimit(cfg)
    _feed(lim, 0.010, 2, refused=False)  # warm-up: learns 10 ms, decides nothing
    assert lim.limit == 32 and lim.baseline_s == pytest.approx(0.010)
    assert lim.target_s == pytest.approx(0.020)  # tolerance 2 x baseline
    # slow windows with no refusals (no overload): the host's noise, the limit stays
    _feed(lim, 0.050, 3, refused=False)
    assert lim.limit == 32
    # an overload: refusals and 4x the target ... one window is not enough
    lim2 = AdaptiveLimit(cfg)
    _feed(lim2, 0.010, 2, refused=False)
    _feed(lim2, 0.080, 1, refused=True)
    assert lim2.limit == 32
    _feed(lim2, 0.080, 1, refused=True)  # the second in a row: x max(0.5, target/short)
    assert lim2.limit == 16
    _feed(lim2, 0.080, 20, refused=True)  # never below min_limit
    assert lim2.limit == 2
    # the overload passes: latency back under the target while the limit binds -> +1/window
    _feed(lim2, 0.010, 3, refused=True)
    assert lim2.limit == 5
    # under the target and not binding: unchanged
    _feed(lim2, 0.010, 3, refused=False)
    assert lim2.limit == 5


def test_adaptive_limit_grows_to_its_cap_while_binding_and_meeting_the_target() -> None:
    lim = AdaptiveLimit(LimitConfig(initial=4, min_limit=1, max_limit=6, window=5, warmup=1))
    _feed(lim, 0.005, 1, refused=False)
    for _ in range(10):
        lim.on_binding()
        _feed(lim, 0.005, 1, refused=False)
    assert lim.limit == 6


def test_adaptive_limit_baseline_follows_a_fall_fast_and_a_rise_slowly() -> None:
    lim = AdaptiveLimit(LimitConfig(window=4, warmup=1, recover=0.5, drift=0.01))
    _feed(lim, 0.020, 1, refused=False)
    _feed(lim, 0.010, 1, refused=False)
    assert lim.baseline_s == pytest.approx(0.015)
    _feed(lim, 0.115, 1, refused=False)
    assert lim.baseline_s == pytest.approx(0.016)


def test_fixed_target_and_bad_configs() -> None:
    lim = AdaptiveLimit(LimitConfig(target_s=0.003))
    assert lim.target_s == 0.003
    for bad in (
        {"min_limit": 0},
        {"initial": 200},
        {"target_s": 0.0},
        {"tolerance": 0.5},
        {"window": 0},
        {"backoff": 1.0},
        {"warmup": 0},
    ):
        with pytest.raises(ConfigError):
            LimitConfig(**bad)
    with pytest.raises(ValueError):
        FixedLimit(0)


def test_the_lag_gate_refuses_in_a_surge_while_the_loop_runs_late() -> None:
    """A stalled event loop (as a surge of socket reads makes one) is seen by the probe.
    Outside a surge the lag is ignored (a hot swap's load must not cost a caller a 503).
    Once the in-flight limit was reached (a surge), inference requests arriving while the
    loop is late are refused before their body is read, even with a slot free; GETs pass;
    once the probe has run on time again the door admits. The door's clock is a fake that
    moves only when the test says (the stalls), so a busy host adds no lateness."""

    async def main() -> None:
        seen: list[str] = []
        now = [1000.0]
        hold = asyncio.Event()

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["path"])
            if scope.get("hold"):
                await hold.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})

        door = Door(
            inner, FixedLimit(2), lambda m: None, max_loop_lag_s=0.005, clock=lambda: now[0]
        )
        lag = door.lag
        assert lag is not None and lag.interval_s == 0.002

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def never_receive() -> dict[str, Any]:
            raise AssertionError("the refused request's body was read")

        statuses: list[int] = []

        async def send(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                statuses.append(msg["status"])

        now[0] += 0.05  # a stall outside a surge: ignored, the probe is not even running
        await door(_scope("/v1/predict"), receive, send)
        assert statuses == [200] and lag.ticks == 0
        # a surge: both slots taken (the limit reached), then one freed
        a = asyncio.create_task(door({**_scope("/v1/predict"), "hold": True}, receive, send))
        b = asyncio.create_task(door({**_scope("/v1/predict"), "hold": True}, receive, send))
        while door.in_flight < 2:
            await asyncio.sleep(0)
        await door(_scope("/v1/predict"), never_receive, send)  # full: the limit refuses
        assert statuses == [200, 503] and door.lag_shed == 0
        hold.set()
        await asyncio.gather(a, b)
        while lag.ticks < 1:  # the probe ran (on time: the clock stood still)
            await asyncio.sleep(0.001)
        assert lag.late(now[0]) == 0.0
        now[0] += 0.05  # the loop stalls 50 ms within the surge: the probe is overdue
        assert lag.late(now[0]) > 0.04 and door.in_flight == 0
        await door(_scope("/v2/models/credit/infer"), never_receive, send)
        assert statuses[-1] == 503 and door.lag_shed == 1 and door.shed == 2
        await door(_scope("/metrics", "GET"), receive, send)  # not an inference request
        assert seen[-1] == "/metrics"
        while lag.late(now[0]) > 0.005:  # the probe wakes late once, then on time
            await asyncio.sleep(0.001)
        await door(_scope("/v1/predict"), receive, send)
        assert statuses[-1] == 200 and door.lag_shed == 1
        now[0] += 2.0  # the surge is over: the probe stops at its next wake-up
        while lag._task is not None and not lag._task.done():
            await asyncio.sleep(0.001)
        await door(_scope("/v1/predict"), receive, send)
        assert statuses[-1] == 200 and door.lag_shed == 1
        lag.close()

    asyncio.run(main())


def test_the_lag_gate_needs_a_positive_threshold() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(ValueError, match="max_loop_lag_s"):
        Door(inner, FixedLimit(1), lambda m: None, max_loop_lag_s=0)
    assert Door(inner, FixedLimit(1), lambda m: None).lag is None
