"""Benchmark keel.telemetry against raw prometheus_client, measured in the same run.

    ./pants run tools/bench/telemetry:telemetry -- [--quick]

- labels().inc(): a Keel GuardedCounter (cardinality guard on) vs a raw
  prometheus_client Counter, cycling through 50 label values;
- labels().observe(): the same for a histogram with LATENCY_BUCKETS_SECONDS;
- scrape: GET /metrics of a registry with 500 series from Keel's
  start_metrics_server vs prometheus_client's start_http_server, p50/p99.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from keel.telemetry import LATENCY_BUCKETS_SECONDS, ComponentMetrics, start_metrics_server

VALUES = [f"model-{i}" for i in range(50)]


def best_rate(fn: Callable[[int], None], n: int, repeats: int = 3) -> float:
    """Operations per second, best of `repeats` runs of n operations."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn(n)
        best = max(best, n / (time.perf_counter() - t))
    return best


def inc_loop(counter: Counter) -> Callable[[int], None]:
    def run(n: int) -> None:
        vals = VALUES
        k = len(vals)
        for i in range(n):
            counter.labels(model=vals[i % k]).inc()

    return run


def observe_loop(hist: Histogram) -> Callable[[int], None]:
    def run(n: int) -> None:
        vals = VALUES
        k = len(vals)
        for i in range(n):
            hist.labels(model=vals[i % k]).observe(0.0042)

    return run


def populate(reg: CollectorRegistry, keel: bool) -> None:
    c: Counter
    if keel:
        m = ComponentMetrics("bench", registry=reg, max_label_values=1000)
        c = m.counter("requests_total", "Requests.", labels=("model", "route"))
    else:
        c = Counter("keel_bench_requests_total", "Requests.", ("model", "route"), registry=reg)
    for i in range(100):
        for r in range(5):
            c.labels(model=f"m{i}", route=f"r{r}").inc(i + r)


def scrape_latencies(port: int, n: int) -> list[float]:
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        out.append(time.perf_counter() - t)
        assert resp.status == 200 and body
        if resp.getheader("Connection", "").lower() == "close" or resp.version == 10:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()
    return out


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small smoke size")
    args = ap.parse_args()
    n = 20_000 if args.quick else 300_000
    scrapes = 50 if args.quick else 500

    m = ComponentMetrics("bench")
    keel_c = m.counter("inc_total", "x", labels=("model",))
    raw_c = Counter("raw_inc_total", "x", ("model",), registry=CollectorRegistry())
    keel_h = m.histogram("obs_seconds", "x", labels=("model",))
    raw_h = Histogram(
        "raw_obs_seconds",
        "x",
        ("model",),
        registry=CollectorRegistry(),
        buckets=LATENCY_BUCKETS_SECONDS,
    )

    keel_inc = best_rate(inc_loop(keel_c), n)
    raw_inc = best_rate(inc_loop(raw_c), n)
    keel_obs = best_rate(observe_loop(keel_h), n)
    raw_obs = best_rate(observe_loop(raw_h), n)

    keel_reg, raw_reg = CollectorRegistry(), CollectorRegistry()
    populate(keel_reg, keel=True)
    populate(raw_reg, keel=False)
    srv = start_metrics_server(keel_reg, host="127.0.0.1", port=0)
    raw_server, raw_thread = start_http_server(0, addr="127.0.0.1", registry=raw_reg)
    try:
        keel_lat = scrape_latencies(srv.port, scrapes)
        raw_lat = scrape_latencies(raw_server.server_address[1], scrapes)
    finally:
        srv.stop()
        raw_server.shutdown()
        raw_server.server_close()

    figures = {
        "ops": n,
        "keel_labels_inc_per_s": round(keel_inc),
        "raw_labels_inc_per_s": round(raw_inc),
        "keel_labels_observe_per_s": round(keel_obs),
        "raw_labels_observe_per_s": round(raw_obs),
        "scrapes": scrapes,
        "series": 500,
        "keel_scrape_p50_ms": round(pct(keel_lat, 50) * 1e3, 3),
        "keel_scrape_p99_ms": round(pct(keel_lat, 99) * 1e3, 3),
        "raw_scrape_p50_ms": round(pct(raw_lat, 50) * 1e3, 3),
        "raw_scrape_p99_ms": round(pct(raw_lat, 99) * 1e3, 3),
    }
    ratios = {
        "keel_guarded_vs_raw_labels_inc_overhead": round(raw_inc / keel_inc, 3),
        "keel_guarded_vs_raw_labels_observe_overhead": round(raw_obs / keel_obs, 3),
        "keel_vs_prometheus_client_server_scrape_p50_ratio": round(
            pct(keel_lat, 50) / pct(raw_lat, 50), 3
        ),
    }
    goals = {
        "guard_overhead_inc_le_2x": ratios["keel_guarded_vs_raw_labels_inc_overhead"] <= 2.0,
        "guard_overhead_observe_le_2x": ratios["keel_guarded_vs_raw_labels_observe_overhead"]
        <= 2.0,
        "scrape_p50_within_2x_of_prometheus_client": ratios[
            "keel_vs_prometheus_client_server_scrape_p50_ratio"
        ]
        <= 2.0,
    }
    for k, v in {**figures, **ratios}.items():
        print(f"{k:55s} {v}")
    print(
        json.dumps({"bench": "telemetry", "figures": figures, "ratios": ratios, "goals_met": goals})
    )


if __name__ == "__main__":
    main()
