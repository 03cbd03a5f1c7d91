"""Envelope construction and the strict wire codec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.events import Event, InvalidEventError, decode_event, encode_event

T0 = datetime(2024, 1, 1, tzinfo=UTC)

events = st.builds(
    lambda i, t, k, p, v, h, tz: Event.create(
        id=i,
        type=t,
        key=k,
        event_time=T0.astimezone(timezone(timedelta(minutes=tz))),
        payload=p,
        schema_version=v,
        headers=h,
    ),
    i=st.text(min_size=1, max_size=40),
    t=st.text(min_size=1, max_size=20),
    k=st.text(max_size=20),
    p=st.binary(max_size=200),
    v=st.integers(1, 10_000),
    h=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    tz=st.integers(-600, 600),
)


@given(events)
def test_encode_decode_roundtrip(e: Event) -> None:
    back = decode_event(encode_event(e))
    assert back == e
    assert back.event_time == e.event_time


def test_create_defaults_and_json_payload() -> None:
    e = Event.create(type="t", key="k", event_time=T0, payload={"a": [1, 2]})
    assert len(e.id) == 32 and e.schema_version == 1 and e.publish_time is None
    assert e.payload == b'{"a":[1,2]}' and e.json() == {"a": [1, 2]}

    class P(msgspec.Struct):
        a: list[int]

    assert e.decode(P) == P(a=[1, 2])
    with pytest.raises(InvalidEventError, match="does not match"):
        e.decode(dict[str, str])
    assert Event.create(type="t", key="k", event_time=T0, payload=P(a=[3])).json() == {"a": [3]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"event_time": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"schema_version": 0}, "schema_version"),
        ({"schema_version": True}, "schema_version"),
        ({"type": ""}, "event type"),
        ({"payload": 3.5}, "payload must be"),
        ({"id": ""}, "event id"),
        ({"headers": {"a": 1}}, "headers"),
    ],
)
def test_create_rejects_bad_input(kwargs: dict, match: str) -> None:
    base = {"type": "t", "key": "k", "event_time": T0, "payload": b""}
    with pytest.raises(InvalidEventError, match=match):
        Event.create(**{**base, **kwargs})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode(["k9", "id", "t", "k", T0, b"", 1, {}, None]),  # unknown tag
        msgspec.msgpack.encode(["k1", "id", "t", "k", datetime(2024, 1, 1), b"", 1, {}, None]),
        msgspec.msgpack.encode(["k1", "", "t", "k", T0, b"", 1, {}, None]),  # empty id
        msgspec.msgpack.encode(["k1", "id", "t", "k", T0, b"", 0, {}, None]),  # version 0
        msgspec.msgpack.encode({"id": "x"}),
    ],
)
def test_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(InvalidEventError, match="malformed event envelope"):
        decode_event(data)


def test_bad_json_payload_is_a_clear_error() -> None:
    e = Event.create(type="t", key="k", event_time=T0, payload=b"{nope")
    with pytest.raises(InvalidEventError, match="not valid JSON"):
        e.json()
