"""Online features for a request: read the artifact's feature views from the online store.

An instance names its entity either as one key for every view (``"entity": "card-1"``) or
per view (``"entity": {"card_stats": "card-1", "merchant_stats": "m-9"}``). For each view
the values stored under namespace ``<view>:<version>`` (keel.features' ``namespace``) fill
the schema fields of the same name, and the fields named ``<view>__<feature>`` — the names
keel.features' point-in-time training sets give view features, so a model trained by
keel.pipelines is served with the same columns it learnt from; the request's own ``features``
fill the others (request-time features). A field offered by both is refused: the store is the
source of truth for what it serves.

Unknown entity (no row for it in a view the model reads): the instance is refused with 422
and code ``unknown_entity``, naming the entity and the view — never scored on made-up values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keel.serving._errors import InvalidInputError, UnavailableError, UnknownEntityError

MAX_ENTITY_KEY_CHARS = 512


class FeatureFetcher:
    """Reads the views of one model from an online store (keel.features OnlineStore)."""

    def __init__(
        self,
        store: Any,
        views: Sequence[tuple[str, str]],
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.store = store
        self.views = list(views)
        self._clock = clock
        self.last_fetch_s = 0.0

    def entity_keys(self, instances: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        """Each instance's entity key per view; InvalidInputError naming bad ones."""
        errors: list[dict[str, Any]] = []
        out: list[dict[str, str]] = []
        names = [v for v, _ in self.views]
        for i, inst in enumerate(instances):
            ent = inst.get("entity")
            keys: dict[str, str] = {}
            if isinstance(ent, str | int) and not isinstance(ent, bool):
                keys = {v: str(ent) for v in names}
            elif isinstance(ent, Mapping):
                for v in names:
                    k = ent.get(v)
                    if isinstance(k, str | int) and not isinstance(k, bool):
                        keys[v] = str(k)
                    else:
                        errors.append(
                            {
                                "instance": i,
                                "field": f"entity.{v}",
                                "error": "is missing (a string key)",
                            }
                        )
                for v in ent:
                    if v not in names:
                        errors.append(
                            {
                                "instance": i,
                                "field": f"entity.{str(v)[:64]}",
                                "error": f"is not a feature view of this model (views: {names})",
                            }
                        )
            else:
                errors.append(
                    {
                        "instance": i,
                        "field": "entity",
                        "error": "must be a string key or an object {view: key}",
                    }
                )
            for v, k in keys.items():
                if not k or len(k) > MAX_ENTITY_KEY_CHARS:
                    errors.append(
                        {
                            "instance": i,
                            "field": f"entity.{v}",
                            "error": f"must be 1..{MAX_ENTITY_KEY_CHARS} characters",
                        }
                    )
            out.append(keys)
        if errors:
            raise InvalidInputError(f"{len(errors)} bad entity key(s)", errors)
        return out

    def rows(
        self, instances: Sequence[Mapping[str, Any]], schema_names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Merge online values and request features into one row per instance."""
        wanted = set(schema_names)
        keys = self.entity_keys(instances) if self.views else [{} for _ in instances]
        t0 = self._clock()
        fetched: dict[str, list[Any]] = {}
        try:
            for v, ver in self.views:
                fetched[v] = self.store.read_many(f"{v}:{ver}", [k[v] for k in keys])
        except Exception as e:  # the store's UnavailableError, or its client's own error
            raise UnavailableError(f"online store read failed: {type(e).__name__}: {e}") from None
        finally:
            self.last_fetch_s = self._clock() - t0
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        unknown: list[dict[str, Any]] = []
        for i, inst in enumerate(instances):
            own = inst.get("features", {})
            if own is None:
                own = {}
            if not isinstance(own, Mapping):
                errors.append({"instance": i, "field": "features", "error": "must be an object"})
                rows.append({})
                continue
            row: dict[str, Any] = {}
            for v, _ in self.views:
                online = fetched[v][i]
                if online is None:
                    unknown.append(
                        {
                            "instance": i,
                            "field": "entity",
                            "view": v,
                            "entity": keys[i][v],
                            "error": f"unknown entity {keys[i][v]!r}: no online features in view {v!r}",
                        }
                    )
                    continue
                for name, value in online.values.items():
                    for field in (name, f"{v}__{name}"):  # bare, or as a training set names it
                        if field in wanted and field not in row:
                            row[field] = value
            for name, value in own.items():
                if name in row:
                    errors.append(
                        {
                            "instance": i,
                            "field": str(name)[:128],
                            "error": "is served by a feature view; do not send it in `features`",
                        }
                    )
                else:
                    row[name] = value
            rows.append(row)
        if unknown:
            raise UnknownEntityError(
                f"{len(unknown)} unknown entit{'y' if len(unknown) == 1 else 'ies'}: "
                + ", ".join(sorted({repr(u["entity"]) for u in unknown})[:10]),
                unknown,
            )
        if errors:
            raise InvalidInputError(f"{len(errors)} invalid request feature(s)", errors)
        return rows
