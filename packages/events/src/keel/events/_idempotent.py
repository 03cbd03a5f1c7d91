"""Exactly-once effects over at-least-once delivery: `IdempotentSink`.

The sink is a SQLite database holding the application's own tables *and* a table of applied
(consumer, event id) pairs. For a fetched batch it runs, in ONE transaction, "mark applied if
not yet marked; if newly marked, run the effect" for each event, commits, and only then acks.
A crash before the commit applies nothing (the events are redelivered); a crash after the commit
but before the ack redelivers events whose marks are already there, so they are skipped and
acked. The effect therefore happens once per (consumer, event id).

Dedupe window: marks are kept `window_s` after the first application (default 7 days), then
pruned — so the table is bounded by (events per window). A redelivery later than that would
apply again; the window must exceed the consumer's redelivery horizon
(max_deliver x (ack_wait_s + largest backoff)), which `apply` checks. Requeued dead letters keep
their event id: they are skipped if applied within the window.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keel.events._bus import Consumer, Delivery
from keel.events._config import check_name
from keel.events._envelope import Event
from keel.events._errors import EventsError, InvalidConfigError, UnavailableError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ApplyResult:
    """What one `apply` did: effects run, redeliveries skipped, effects that raised (nak'ed)."""

    applied: int
    skipped: int
    failed: int


class IdempotentSink:
    """Apply event effects exactly once per (consumer, event id) into a SQLite database.

    `effect(conn, event)` receives the sink's connection inside the open transaction: it must
    write only through it (and not commit). If it raises, that event's writes and mark are
    rolled back and the rest of the batch still commits; the delivery is nak'ed (redelivered
    with the consumer's backoff) until its `max_deliver`-th delivery, which is dead-lettered
    with the error as the reason. A poison event thus costs bounded retries and never stops
    the consumer.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        consumer_name: str,
        *,
        window_s: float = 7 * 86_400.0,
        clock: Callable[[], datetime] = _utc_now,
        busy_timeout_s: float = 30.0,
        prune_every: int = 10_000,
    ) -> None:
        check_name("consumer", consumer_name)
        if window_s <= 0:
            raise InvalidConfigError(f"window_s must be > 0, got {window_s}")
        self.consumer_name = consumer_name
        self.window_s = float(window_s)
        self._clock = clock
        self._prune_every = prune_every
        self._since_prune = 0
        self._lock = threading.RLock()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(
                str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self.connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS keel_applied (consumer TEXT NOT NULL, event_id TEXT "
                "NOT NULL, applied_us INTEGER NOT NULL, PRIMARY KEY (consumer, event_id)) "
                "WITHOUT ROWID"
            )
            self.connection.execute(
                "CREATE INDEX IF NOT EXISTS keel_applied_time ON keel_applied (consumer, applied_us)"
            )
        except sqlite3.Error as exc:
            raise EventsError(f"cannot open idempotent sink {path}: {exc}") from exc

    def _now_us(self) -> int:
        return (self._clock() - _EPOCH) // timedelta(microseconds=1)

    def apply(
        self,
        consumer: Consumer,
        deliveries: Sequence[Delivery],
        effect: Callable[[sqlite3.Connection, Event], None],
    ) -> ApplyResult:
        """Apply `effect` once per new event of `deliveries`, commit, then ack them."""
        cfg = consumer.config
        horizon = cfg.max_deliver * (cfg.ack_wait_s + max(cfg.backoff_s))
        if horizon >= self.window_s:
            raise InvalidConfigError(
                f"dedupe window {self.window_s}s is shorter than consumer {consumer.durable!r}'s "
                f"redelivery horizon {horizon}s (max_deliver x (ack_wait_s + max backoff)): "
                "raise window_s"
            )
        if not deliveries:
            return ApplyResult(0, 0, 0)
        applied = skipped = 0
        failed: list[Delivery] = []
        errors: dict[int, str] = {}
        c = self.connection
        with self._lock:
            now = self._now_us()
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise UnavailableError(f"idempotent sink busy: {exc}; retry") from exc
            try:
                for d in deliveries:
                    n = c.execute(
                        "INSERT OR IGNORE INTO keel_applied VALUES (?, ?, ?)",
                        (self.consumer_name, d.event.id, now),
                    ).rowcount
                    if not n:
                        skipped += 1
                        continue
                    c.execute("SAVEPOINT effect")
                    try:
                        effect(c, d.event)
                    except Exception as exc:
                        text = f"{type(exc).__name__}: {exc}"
                        errors[id(d)] = text if len(text) <= 200 else text[:197] + "..."
                        c.execute("ROLLBACK TO effect")
                        c.execute("RELEASE effect")
                        c.execute(
                            "DELETE FROM keel_applied WHERE consumer=? AND event_id=?",
                            (self.consumer_name, d.event.id),
                        )
                        failed.append(d)
                        continue
                    c.execute("RELEASE effect")
                    applied += 1
                c.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
                raise
        ok = [d for d in deliveries if d not in failed] if failed else list(deliveries)
        consumer.ack_all(ok)
        for d in failed:
            if d.delivery_count >= cfg.max_deliver:
                d.term(f"failed {d.delivery_count} times: {errors[id(d)]}")
            else:
                d.nak()
        self._since_prune += applied
        if self._since_prune >= self._prune_every:
            self.prune()
        return ApplyResult(applied, skipped, len(failed))

    def run_once(
        self,
        consumer: Consumer,
        effect: Callable[[sqlite3.Connection, Event], None],
        max_messages: int = 500,
        timeout_s: float = 1.0,
    ) -> ApplyResult:
        """Fetch one batch from `consumer` and `apply` it."""
        return self.apply(consumer, consumer.fetch(max_messages, timeout_s), effect)

    def seen(self, event_id: str) -> bool:
        """Whether `event_id` was applied by this consumer within the window."""
        with self._lock:
            row = self.connection.execute(
                "SELECT 1 FROM keel_applied WHERE consumer=? AND event_id=?",
                (self.consumer_name, event_id),
            ).fetchone()
        return row is not None

    def prune(self) -> int:
        """Forget marks older than the window; returns how many."""
        cutoff = self._now_us() - int(self.window_s * 1_000_000)
        with self._lock:
            n = self.connection.execute(
                "DELETE FROM keel_applied WHERE consumer=? AND applied_us < ?",
                (self.consumer_name, cutoff),
            ).rowcount
        self._since_prune = 0
        return int(n)

    def close(self) -> None:
        with self._lock:
            self.connection.close()

    def __enter__(self) -> IdempotentSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
