"""Model builders for serving: keel.artifacts' one registry, plus builders a caller passes.

An artifact's ``architecture.builder`` is resolved by :func:`resolve_builders`: the caller's
``extra`` mapping first, then keel.artifacts' registry (``register_builder``,
``KEEL_MODEL_BUILDERS``, the ``keel.model_builders`` entry points, the built-in ``mlp``).
Loading never runs code stored in an artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from keel.artifacts import BUILTIN_BUILDERS, ENTRY_POINT_GROUP, build_mlp, resolve_builder

__all__ = ["ENTRY_POINT_GROUP", "build_mlp", "resolve_builders"]

Builder = Callable[..., Any]


class _Builders(Mapping[str, Builder]):
    """``extra`` first, then the shared registry (raising ``BuilderNotFoundError``, an
    ``ArtifactError``, that names every way to register a builder)."""

    def __init__(self, extra: Mapping[str, Builder]) -> None:
        self._extra = dict(extra)

    def __getitem__(self, name: str) -> Builder:
        hit = self._extra.get(name)
        return hit if hit is not None else resolve_builder(name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except Exception:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._extra, *BUILTIN_BUILDERS]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._extra, *BUILTIN_BUILDERS]))


def resolve_builders(extra: Mapping[str, Builder] | None = None) -> Mapping[str, Builder]:
    """Builders by name for ``LoadedArtifact.build_model``: ``extra`` first, then the shared
    registry of keel.artifacts."""
    return _Builders(extra or {})
