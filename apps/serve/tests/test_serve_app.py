"""The serve binary end to end on a real uvicorn port: registry alias, verified load,
hot swap under concurrent load with zero failed requests, prediction log, config errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from keel_serve.main import APP, run

from keel.registry_client import Decision, open_registry

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DECIDED = Decision(who="test", why="hot swap test", evidence_digest="sha256:" + "0" * 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.stop = threading.Event()
        self.code: int | None = None
        self.env = env
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = APP.main(run, [], self.env, stop=self.stop, handle_signals=False)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def wait_ready(url: str, server: Server, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.code is not None:
            raise AssertionError(f"server exited with {server.code}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("server never became ready")


@pytest.mark.slow
def test_alias_move_hot_swaps_with_zero_failed_requests(tmp_path: Path, td: Any) -> None:
    Keys, make_artifact, reference = td.Keys, td.make_artifact, td.reference
    keys = Keys()
    (tmp_path / "pub.pem").write_bytes(keys.pub)
    home = tmp_path / "home"
    v1, m1 = make_artifact(tmp_path, keys, seed=1)
    v2, m2 = make_artifact(tmp_path, keys, seed=2)
    with open_registry(home) as reg:
        assert reg.register(v1, trust=keys.policy).version == 1
        reg.promote("credit", "champion", 1, DECIDED)
        assert reg.register(v2, trust=keys.policy).version == 2
    from keel.features import open_online_store

    store = open_online_store(None, home=home)
    store.write("card_stats:v1", [("c1", {"f0": 0.5, "f1": 1.5, "f2": -2.0}, T0)])
    store.close()
    port = free_port()
    env = {
        "KEEL_SERVE_MODEL": "credit@champion",
        "KEEL_SERVE_TRUST_KEYS": json.dumps([str(tmp_path / "pub.pem")]),
        "KEEL_SERVE_HOME": str(home),
        "KEEL_SERVE_PORT": str(port),
        "KEEL_SERVE_POLL_S": "0.2",
    }
    url = f"http://127.0.0.1:{port}"
    x = [[0.5, 1.5, -2.0, 1.0]]
    want = {"1": reference(m1, x)[0], "2": reference(m2, x)[0]}
    results: list[list[tuple[int, str, float]]] = [[] for _ in range(4)]
    swapped = threading.Event()
    done = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not done.is_set():
                r = c.post(
                    "/v1/predict",
                    json={"instances": [{"entity": "c1", "features": {"channel": "pos"}}]},
                )
                j = r.json() if r.status_code == 200 else {}
                results[i].append(
                    (
                        r.status_code,
                        j.get("version", ""),
                        j.get("predictions", [{}])[0].get("p_default", -1.0),
                    )
                )
                if j.get("version") == "2":
                    swapped.set()

    with Server(env) as server:
        wait_ready(url, server)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        while sum(len(r) for r in results) < 100:
            time.sleep(0.01)
        with open_registry(home) as reg:
            reg.promote("credit", "champion", 2, DECIDED)
        assert swapped.wait(30), "the alias move was never served"
        n = sum(len(r) for r in results)
        while sum(len(r) for r in results) < n + 100:
            time.sleep(0.01)
        done.set()
        for t in threads:
            t.join(10)
        metrics = httpx.get(url + "/metrics").text
    assert server.code == 0
    flat = [r for rs in results for r in rs]
    assert all(code == 200 for code, _, _ in flat), {c for c, _, _ in flat}
    for rs in results:  # per client: version 1 until the swap, then version 2, never back
        versions = [v for _, v, _ in rs]
        k = versions.index("2")
        assert set(versions[:k]) <= {"1"} and set(versions[k:]) == {"2"}
    for _, v, p in flat:  # every answer is the one its claimed version computes
        assert p == pytest.approx(want[v], abs=1e-6)
    assert 'keel_serving_model_swaps_total{model="credit",variant="primary"} 1.0' in metrics
    assert 'keel_serving_model_loads_total{model="credit",outcome="ok"} 2.0' in metrics


def test_missing_trust_keys_is_a_configuration_error(tmp_path: Path) -> None:
    code = APP.main(
        run,
        [],
        {"KEEL_SERVE_MODEL": "x.tar", "KEEL_SERVE_HOME": str(tmp_path)},
        stop=threading.Event(),
        handle_signals=False,
    )
    assert code == 2


def test_forward_placement_and_lag_gate_settings_are_checked() -> None:
    """Defaults: forward placement per model (auto), the surge lag gate at 1 ms; true/false
    and 0 (gate off) are accepted from the environment; a word that is neither, or a
    negative lag, is a configuration error naming the variable."""
    from keel.telemetry.app import AppConfigError

    base = {"KEEL_SERVE_MODEL": "credit@champion"}
    s = APP.load(env=base)
    assert s.forward_in_thread == "auto" and s.max_loop_lag_s == 0.001
    s = APP.load(
        env={**base, "KEEL_SERVE_FORWARD_IN_THREAD": "false", "KEEL_SERVE_MAX_LOOP_LAG_S": "0"}
    )
    assert s.forward_in_thread is False and s.max_loop_lag_s == 0
    with pytest.raises(AppConfigError, match="KEEL_SERVE_FORWARD_IN_THREAD"):
        APP.load(env={**base, "KEEL_SERVE_FORWARD_IN_THREAD": "maybe"})
    with pytest.raises(AppConfigError, match="KEEL_SERVE_MAX_LOOP_LAG_S"):
        APP.load(env={**base, "KEEL_SERVE_MAX_LOOP_LAG_S": "-1"})


def test_tampered_artifact_fails_at_start(tmp_path: Path, td: Any) -> None:
    Keys, make_artifact = td.Keys, td.make_artifact
    keys = Keys()
    (tmp_path / "pub.pem").write_bytes(keys.pub)
    path, _ = make_artifact(tmp_path, keys)
    weights = path.with_suffix("") / "weights.safetensors"  # the artifact directory
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    env = {
        "KEEL_SERVE_MODEL": str(path.with_suffix("")),
        "KEEL_SERVE_HOME": str(tmp_path / "h"),
        "KEEL_SERVE_TRUST_KEYS": json.dumps([str(tmp_path / "pub.pem")]),
        "KEEL_SERVE_PORT": "0",
    }
    stop = threading.Event()
    guard = threading.Timer(60, stop.set)  # were it to start serving, the test still ends
    guard.start()
    try:
        assert APP.main(run, [], env, stop=stop, handle_signals=False) == 1
    finally:
        guard.cancel()


def test_served_artifact_answers_on_a_real_port(tmp_path: Path, td: Any) -> None:
    Keys, make_artifact, reference = td.Keys, td.make_artifact, td.reference
    keys = Keys()
    (tmp_path / "pub.pem").write_bytes(keys.pub)
    path, model = make_artifact(tmp_path, keys, views=False)
    port = free_port()
    env = {
        "KEEL_SERVE_MODEL": str(path),
        "KEEL_SERVE_HOME": str(tmp_path / "h"),
        "KEEL_SERVE_TRUST_KEYS": json.dumps([str(tmp_path / "pub.pem")]),
        "KEEL_SERVE_PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}"
    with Server(env) as server:
        wait_ready(url, server)
        r = httpx.post(
            url + "/v1/predict",
            json={"instances": [{"features": {"f0": 1, "f1": 2, "f2": 3, "channel": "web"}}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["p_default"] == pytest.approx(
            reference(model, [[1, 2, 3, 0]])[0], abs=1e-6
        )
        assert httpx.get(url + "/v2/models/credit/ready").json() == {
            "name": "credit",
            "ready": True,
        }
        text = httpx.get(url + "/metrics").text
        assert "keel_serving_requests_total" in text
    assert server.code == 0
