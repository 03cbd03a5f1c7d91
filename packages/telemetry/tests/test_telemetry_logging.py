"""Structured JSON logging: one JSON object per record, correlation ids from context."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from keel.telemetry import (
    configure_logging,
    correlation_scope,
    current_correlation_id,
    get_logger,
    with_correlation,
)


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging(level="DEBUG", stream=buf, propagate=False)
    yield buf
    configure_logging(level="INFO", propagate=True)


def records(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_records_are_json_with_extras_and_correlation_id(out: io.StringIO) -> None:
    log = get_logger("keel.events")
    log.info("outside")
    with correlation_scope("req-42") as cid:
        assert cid == "req-42" and current_correlation_id() == "req-42"
        log.warning("published %d", 3, extra={"stream": "orders", "ids": ["a", "b"]})
    recs = records(out)
    assert recs[0]["correlation_id"] is None and recs[0]["msg"] == "outside"
    second = recs[1]
    assert second["correlation_id"] == "req-42"
    assert second["msg"] == "published 3"
    assert second["level"] == "WARNING" and second["logger"] == "keel.events"
    assert second["stream"] == "orders" and second["ids"] == ["a", "b"]
    assert str(second["ts"]).endswith("+00:00")


def test_nested_scopes_restore_outer_id_and_generate_ids(out: io.StringIO) -> None:
    ids = iter(["gen-1", "gen-2"])
    with correlation_scope(id_factory=lambda: next(ids)) as outer:
        assert outer == "gen-1"
        with correlation_scope("inner"):
            assert current_correlation_id() == "inner"
        assert current_correlation_id() == "gen-1"
    assert current_correlation_id() is None


def test_exception_is_logged_with_traceback(out: io.StringIO) -> None:
    log = get_logger("keel.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    rec = records(out)[-1]
    assert rec["level"] == "ERROR"
    assert "RuntimeError: boom" in str(rec["exc"])


def test_decorator_sets_fresh_id_but_keeps_callers(out: io.StringIO) -> None:
    ids = iter(["d-1", "d-2"])

    @with_correlation(id_factory=lambda: next(ids))
    def work() -> str | None:
        get_logger("keel.test").info("work")
        return current_correlation_id()

    assert work() == "d-1"
    with correlation_scope("caller"):
        assert work() == "caller"
    assert [r["correlation_id"] for r in records(out)] == ["d-1", "caller"]


def test_decorator_on_coroutines_isolates_concurrent_tasks(out: io.StringIO) -> None:
    @with_correlation
    async def handle(n: int) -> str | None:
        await asyncio.sleep(0)
        get_logger("keel.test").info("handled", extra={"n": n})
        await asyncio.sleep(0)
        return current_correlation_id()

    async def main() -> list[str | None]:
        return list(await asyncio.gather(*(handle(i) for i in range(5))))

    got = asyncio.run(main())
    assert len(set(got)) == 5 and all(got)
    by_n = {r["n"]: r["correlation_id"] for r in records(out)}
    assert [by_n[i] for i in range(5)] == got


def test_threads_do_not_share_correlation_ids(out: io.StringIO) -> None:
    seen: dict[str, str | None] = {}

    def run(name: str) -> None:
        with correlation_scope(name):
            get_logger("keel.test").info("t")
            seen[name] = current_correlation_id()

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {f"t{i}": f"t{i}" for i in range(4)}
    assert sorted(str(r["correlation_id"]) for r in records(out)) == [f"t{i}" for i in range(4)]


def test_names_outside_keel_are_nested_under_keel(out: io.StringIO) -> None:
    log = get_logger("my_app")
    assert log.name == "keel.my_app"
    log.debug("dbg")
    assert records(out)[-1]["level"] == "DEBUG"


def test_propagation_reaches_root_handlers_when_enabled() -> None:
    buf = io.StringIO()
    configure_logging(stream=io.StringIO(), propagate=True)
    root_handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(root_handler)
    try:
        get_logger("keel.test").warning("to root")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert "to root" in buf.getvalue()


@pytest.mark.parametrize("bad", ["", None])
def test_bad_inputs_are_rejected(bad: str | None) -> None:
    with pytest.raises(ValueError):
        get_logger(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError), correlation_scope(id_factory=lambda: ""):
        pass
