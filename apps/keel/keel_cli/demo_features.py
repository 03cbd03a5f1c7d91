"""The demo's feature definitions, as a keel.features definitions module: the retrain
pipeline loads them by name (``feature_definitions = "keel_cli.demo_features"``)."""

from __future__ import annotations

from datetime import timedelta

from keel.features import Aggregation, Entity, EventSource, FeatureView

STREAM = "demo-transactions"

_H, _D = timedelta(hours=1), timedelta(days=1)

card_activity = FeatureView(
    name="card_activity",
    source=EventSource("txn.created", stream=STREAM),
    entities=(Entity("card"),),
    fields={"amount": "float", "merchant": "str", "country": "str", "channel": "str"},
    features=(
        Aggregation("count", None, _H),
        Aggregation("count", None, _D),
        Aggregation("sum", "amount", _D),
        Aggregation("mean", "amount", _D),
        Aggregation("max", "amount", _H),
        Aggregation("distinct_count", "merchant", _D),
        Aggregation("distinct_count", "country", _D),
    ),
    id_column="event_id",
    allowed_lateness=timedelta(minutes=10),
)
