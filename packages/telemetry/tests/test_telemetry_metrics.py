"""ComponentMetrics: naming rules, golden exposition per metric type, the cardinality guard."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from keel.telemetry import (
    DURATION_BUCKETS_SECONDS,
    LATENCY_BUCKETS_SECONDS,
    OTHER_LABEL_VALUE,
    ComponentMetrics,
    InvalidMetricError,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
# `_created` samples carry the wall-clock creation time: mask only their value.
_CREATED = re.compile(r"^(\S*_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def normalise(exposition: bytes) -> str:
    return _CREATED.sub(r"\1 <created>", exposition.decode("utf-8"))


def assert_golden(name: str, exposition: bytes) -> None:
    path = GOLDEN_DIR / name
    text = normalise(exposition)
    if os.environ.get("KEEL_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"exposition differs from {path}; KEEL_UPDATE_GOLDEN=1 rewrites it"


def samples(m: ComponentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition back (prometheus_client's parser as the oracle)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --- golden exposition, one per metric type ---------------------------------------


def test_golden_counter() -> None:
    m = ComponentMetrics("events")
    c = m.counter("published_total", "Events published.", labels=("stream",))
    c.labels(stream="orders").inc()
    c.labels(stream="orders").inc(2)
    c.labels(stream="payments").inc()
    assert_golden("counter.prom", m.exposition())


def test_golden_gauge() -> None:
    m = ComponentMetrics("features")
    g = m.gauge("freshness_seconds", "Age of the newest event applied.", labels=("feature_view",))
    g.labels(feature_view="card_txn_1h").set(12.5)
    g.labels(feature_view="merchant_7d").set(3600)
    u = m.gauge("online_store_up", "1 if the online store answers.")
    u.set(1)
    assert_golden("gauge.prom", m.exposition())


def test_golden_histogram() -> None:
    m = ComponentMetrics("serving")
    h = m.histogram("request_latency_seconds", "Request latency.", labels=("model", "version"))
    for v in (0.0004, 0.003, 0.003, 0.02, 0.3, 12.0):
        h.labels(model="fraud", version="3").observe(v)
    assert_golden("histogram.prom", m.exposition())


def test_golden_guarded_label() -> None:
    m = ComponentMetrics("serving", max_label_values=2)
    c = m.counter("requests_total", "Requests.", labels=("model", "outcome"))
    for model in ("a", "b", "c", "d", "a"):
        c.labels(model=model, outcome="ok").inc()
    assert_golden("guarded.prom", m.exposition())


def test_golden_openmetrics() -> None:
    m = ComponentMetrics("events")
    m.counter("published_total", "Events published.", labels=("stream",)).labels("s").inc()
    text = m.exposition(openmetrics=True)
    assert text.endswith(b"# EOF\n")
    assert b"# TYPE keel_events_published counter" in text
    assert b'keel_events_published_total{stream="s"} 1.0' in text


# --- the goldens read by an independent parser ----------------------------------
# The goldens above are the implementation's own earlier output. Here each golden file is
# read by prometheus_client's text *parser* and compared with values worked out by hand
# from what each golden test observed, so a golden cannot silently encode a wrong value.
# (`promtool check metrics` lints the same files in tests/integration/telemetry.)

_LATENCY_OBSERVED = (0.0004, 0.003, 0.003, 0.02, 0.3, 12.0)
GOLDEN_EXPECTED: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {
    "counter.prom": {
        ("keel_events_published_total", (("stream", "orders"),)): 3.0,
        ("keel_events_published_total", (("stream", "payments"),)): 1.0,
    },
    "gauge.prom": {
        ("keel_features_freshness_seconds", (("feature_view", "card_txn_1h"),)): 12.5,
        ("keel_features_freshness_seconds", (("feature_view", "merchant_7d"),)): 3600.0,
        ("keel_features_online_store_up", ()): 1.0,
    },
    "histogram.prom": {
        ("keel_serving_request_latency_seconds_count", (("model", "fraud"), ("version", "3"))): 6.0,
        ("keel_serving_request_latency_seconds_sum", (("model", "fraud"), ("version", "3"))): sum(
            _LATENCY_OBSERVED
        ),
        **{
            (
                "keel_serving_request_latency_seconds_bucket",
                (("le", le), ("model", "fraud"), ("version", "3")),
            ): float(sum(v <= float(le) for v in _LATENCY_OBSERVED))
            for le in ("0.001", "0.005", "0.025", "0.5", "10.0", "+Inf")
        },
    },
    "guarded.prom": {
        # a, b admitted (limit 2); c and d collapse into __other__; a counted twice
        ("keel_serving_requests_total", (("model", "a"), ("outcome", "ok"))): 2.0,
        ("keel_serving_requests_total", (("model", "b"), ("outcome", "ok"))): 1.0,
        ("keel_serving_requests_total", (("model", "__other__"), ("outcome", "ok"))): 2.0,
        (
            "keel_serving_label_overflow_total",
            (("label", "model"), ("metric", "keel_serving_requests_total")),
        ): 2.0,
    },
}


@pytest.mark.parametrize("name", sorted(GOLDEN_EXPECTED))
def test_golden_files_parse_to_the_hand_computed_values(name: str) -> None:
    text = (GOLDEN_DIR / name).read_text(encoding="utf-8").replace("<created>", "0")
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }
    for key, value in GOLDEN_EXPECTED[name].items():
        assert key in parsed, (name, key, sorted(parsed))
        assert parsed[key] == pytest.approx(value), (name, key)


def test_every_golden_file_has_hand_computed_values() -> None:
    assert {p.name for p in GOLDEN_DIR.glob("*.prom")} == set(GOLDEN_EXPECTED)


# --- exposition values against the parser --------------------------------------


def test_histogram_buckets_are_cumulative_and_match_observations() -> None:
    m = ComponentMetrics("serving")
    h = m.histogram("request_latency_seconds", "Latency.", labels=("model",))
    values = [0.0001, 0.0012, 0.004, 0.004, 0.06, 0.09, 0.7, 3.0, 30.0]
    for v in values:
        h.labels(model="m").observe(v)
    got = samples(m)
    for bound in LATENCY_BUCKETS_SECONDS:
        key = ("keel_serving_request_latency_seconds_bucket", (("le", str(bound)), ("model", "m")))
        assert got[key] == sum(1 for v in values if v <= bound), bound
    assert got[("keel_serving_request_latency_seconds_count", (("model", "m"),))] == len(values)
    assert got[("keel_serving_request_latency_seconds_sum", (("model", "m"),))] == pytest.approx(
        sum(values)
    )


def test_shared_registry_holds_several_components() -> None:
    reg = CollectorRegistry()
    a = ComponentMetrics("events", registry=reg)
    b = ComponentMetrics("features", registry=reg)
    a.counter("published_total", "x").inc()
    b.gauge("freshness_seconds", "y").set(2)
    assert a.registry is reg and b.registry is reg
    text = a.exposition()
    assert b"keel_events_published_total 1.0" in text
    assert b"keel_features_freshness_seconds 2.0" in text


def test_same_component_twice_in_one_registry_is_refused() -> None:
    reg = CollectorRegistry()
    ComponentMetrics("events", registry=reg)
    with pytest.raises(InvalidMetricError, match="already registered"):
        ComponentMetrics("events", registry=reg)


def test_redeclaring_same_metric_returns_it_and_conflicts_fail() -> None:
    m = ComponentMetrics("events")
    c1 = m.counter("published_total", "Events.", labels=("stream",))
    c2 = m.counter("published_total", "Events.", labels=("stream",))
    assert c1 is c2
    with pytest.raises(InvalidMetricError, match="different"):
        m.counter("published_total", "Events.", labels=("stream", "extra"))


# --- naming rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "fragment"),
    [
        ("counter", "published", "_total"),
        ("gauge", "lag_total", "only counters"),
        ("histogram", "latency_ms", "_seconds"),
        ("gauge", "size_mb", "_bytes"),
        ("gauge", "cpu_percent", "_ratio"),
        ("counter", "keel_events_total", "prefix"),
        ("gauge", "Bad-Name", "lower_snake_case"),
        ("histogram", "latency_seconds_count", "reserved"),
    ],
)
def test_bad_metric_names_are_rejected(kind: str, name: str, fragment: str) -> None:
    m = ComponentMetrics("events")
    with pytest.raises(InvalidMetricError, match=re.escape(fragment)):
        getattr(m, kind)(name, "doc")


@pytest.mark.parametrize("component", ["", "Events", "keel_events", "1x", "a-b"])
def test_bad_component_names_are_rejected(component: str) -> None:
    with pytest.raises(InvalidMetricError):
        ComponentMetrics(component)


@pytest.mark.parametrize("labels", [("le",), ("__x",), ("a", "a"), ("Model",), "model"])
def test_bad_labels_are_rejected(labels: tuple[str, ...]) -> None:
    m = ComponentMetrics("events")
    with pytest.raises(InvalidMetricError):
        m.gauge("lag_events", "doc", labels=labels)


@pytest.mark.parametrize("buckets", [(), (0.1, 0.1), (0.2, 0.1), (-1.0,), (float("inf"),)])
def test_bad_buckets_are_rejected(buckets: tuple[float, ...]) -> None:
    m = ComponentMetrics("events")
    with pytest.raises(InvalidMetricError):
        m.histogram("latency_seconds", "doc", buckets=buckets)


def test_wrong_label_names_at_use_time_fail_clearly() -> None:
    m = ComponentMetrics("events")
    c = m.counter("published_total", "doc", labels=("stream",))
    with pytest.raises(InvalidMetricError, match="declared labels"):
        c.labels(topic="x")
    with pytest.raises(InvalidMetricError, match="declared labels"):
        c.labels("a", "b")


def test_bucket_sets_are_increasing_and_in_seconds() -> None:
    for buckets in (LATENCY_BUCKETS_SECONDS, DURATION_BUCKETS_SECONDS):
        assert list(buckets) == sorted(set(buckets))
    # ms-scale serving: sub-millisecond resolution at the bottom, 10 s at the top.
    assert LATENCY_BUCKETS_SECONDS[0] <= 0.001 and LATENCY_BUCKETS_SECONDS[-1] >= 10.0


# --- cardinality guard ----------------------------------------------------------


def test_guard_collapses_values_past_limit_and_counts_overflow() -> None:
    m = ComponentMetrics("serving", max_label_values=3)
    c = m.counter("requests_total", "Requests.", labels=("model",))
    for i in range(10):
        c.labels(model=f"m{i}").inc()
    c.labels(model="m0").inc()  # an admitted value keeps its own series
    got = samples(m)
    assert got[("keel_serving_requests_total", (("model", "m0"),))] == 2
    assert got[("keel_serving_requests_total", (("model", OTHER_LABEL_VALUE),))] == 7
    overflow_key = (
        "keel_serving_label_overflow_total",
        (("label", "model"), ("metric", "keel_serving_requests_total")),
    )
    assert got[overflow_key] == 7
    assert m.distinct_label_values("requests_total", "model") == 3


def test_guard_limit_per_metric_overrides_component_default() -> None:
    m = ComponentMetrics("serving", max_label_values=100)
    g = m.gauge("queue_depth_requests", "Depth.", labels=("tenant",), max_label_values=1)
    g.labels(tenant="a").set(1)
    g.labels(tenant="b").set(2)
    got = samples(m)
    assert got[("keel_serving_queue_depth_requests", (("tenant", "a"),))] == 1
    assert got[("keel_serving_queue_depth_requests", (("tenant", OTHER_LABEL_VALUE),))] == 2


def test_guard_clear_forgets_admitted_values() -> None:
    m = ComponentMetrics("serving", max_label_values=1)
    g = m.gauge("queue_depth_requests", "Depth.", labels=("tenant",))
    g.labels(tenant="a").set(1)
    g.clear()
    g.labels(tenant="b").set(2)
    assert samples(m)[("keel_serving_queue_depth_requests", (("tenant", "b"),))] == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_guard_limit_must_be_positive_int(limit: object) -> None:
    with pytest.raises(InvalidMetricError):
        ComponentMetrics("serving", max_label_values=limit)  # type: ignore[arg-type]


@given(
    limit=st.integers(min_value=1, max_value=6),
    calls=st.lists(st.tuples(st.sampled_from("abcdefghij"), st.sampled_from("xyz")), max_size=60),
)
def test_guard_matches_naive_model(limit: int, calls: list[tuple[str, str]]) -> None:
    """Oracle: a per-label first-come admission list, replayed naively."""
    m = ComponentMetrics("serving", max_label_values=limit)
    c = m.counter("requests_total", "Requests.", labels=("model", "route"))
    admitted: dict[str, list[str]] = {"model": [], "route": []}
    expected: dict[tuple[str, str], int] = {}
    overflow = {"model": 0, "route": 0}
    for model, route in calls:
        out = {}
        for label, value in (("model", model), ("route", route)):
            seen = admitted[label]
            if value in seen or len(seen) < limit:
                if value not in seen:
                    seen.append(value)
                out[label] = value
            else:
                out[label] = OTHER_LABEL_VALUE
                overflow[label] += 1
        key = (out["model"], out["route"])
        expected[key] = expected.get(key, 0) + 1
        c.labels(model=model, route=route).inc()
    got = samples(m)
    series = {
        (dict(k[1])["model"], dict(k[1])["route"]): v
        for k, v in got.items()
        if k[0] == "keel_serving_requests_total"
    }
    assert series == expected
    for label in ("model", "route"):
        overflow_key = (
            "keel_serving_label_overflow_total",
            (("label", label), ("metric", "keel_serving_requests_total")),
        )
        assert got.get(overflow_key, 0) == overflow[label]
        assert (
            len({k[0] if label == "model" else k[1] for k in series} - {OTHER_LABEL_VALUE}) <= limit
        )
