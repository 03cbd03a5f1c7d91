"""The prediction log: every prediction as a ``prediction.made`` event on keel.events.

Payload (the drift monitor's input contract, plus what a label join needs)::

    {"request_id", "instance", "model", "model_digest", "version", "variant",
     "entity", "features": {name: value}, "output": {name: value}, "score"?, "latency_s"}

``score`` is set when the model has one float output in [0, 1] (a probability), which is
what keel.drift's monitor reads. Event id ``<request_id>:<instance>:<variant>`` (a retried
publish is deduplicated by the bus); key = the entity (else the request id).

Publishing never blocks a request: records go to a bounded in-memory queue that one thread
publishes in batches. A full queue or a failing bus drops records and counts them
(``keel_serving_prediction_log_dropped_total``) — losing a log line is preferred to
failing a prediction; the counter makes it visible and alertable.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from keel.serving._telemetry import ServingTelemetry

PREDICTION_TYPE = "prediction.made"
DEFAULT_STREAM = "predictions"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PredictionLog:
    """Publishes prediction records to ``stream`` on ``bus`` from a background thread."""

    def __init__(
        self,
        bus: Any,
        *,
        stream: str = DEFAULT_STREAM,
        telemetry: ServingTelemetry | None = None,
        max_queue: int = 100_000,
        batch: int = 500,
        flush_s: float = 0.05,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        from keel.events import Event

        self._event = Event
        self.bus = bus
        self.stream = stream
        self.telemetry = telemetry
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(max_queue)
        self._batch = batch
        self._flush_s = flush_s
        self._clock = clock
        self.published = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="keel-prediction-log", daemon=True)
        self._thread.start()

    def log(self, record: dict[str, Any]) -> None:
        record.setdefault("time", self._clock())
        try:
            self._q.put_nowait(record)
        except queue.Full:
            self._drop(record.get("model", ""), 1)

    def _drop(self, model: str, n: int) -> None:
        self.dropped += n
        if self.telemetry is not None:
            self.telemetry.log_dropped.labels(model=model).inc(n)

    def _to_event(self, r: dict[str, Any]) -> Any:
        t = r.pop("time")
        key = str(r.get("entity") or r["request_id"])[:1024]
        return self._event.create(
            type=PREDICTION_TYPE,
            key=key,
            event_time=t,
            payload=r,
            id=f"{r['request_id']}:{r['instance']}:{r['variant']}"[:512],
        )

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._q.get(timeout=self._flush_s)
            except queue.Empty:
                continue
            if first is None:
                break
            recs = [first]
            while len(recs) < self._batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                recs.append(nxt)
            self._publish(recs)

    def _publish(self, recs: list[dict[str, Any]]) -> None:
        model = str(recs[0].get("model", ""))
        try:
            events = [self._to_event(r) for r in recs]
            self.bus.publish_batch(self.stream, events)
        except Exception:  # the bus's own error: count, keep serving
            self._drop(model, len(recs))
            return
        self.published += len(recs)
        if self.telemetry is not None:
            self.telemetry.log_published.labels(model=model).inc(len(recs))

    def close(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued, then stop the thread."""
        self._q.put(None)
        self._thread.join(timeout_s)
