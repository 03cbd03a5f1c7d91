"""Model builders by name: a job names one, the artifact stores the name plus JSON args.

A ``ModelRegistry`` is a plain mapping name -> builder, the same shape
``keel.artifacts.LoadedArtifact.build_model`` takes, so the registry that trained a model
also rebuilds it from its artifact. Product teams make their own and register builders:

    registry = default_registry()

    @registry.register("two-tower")
    def two_tower(n_user: int, n_item: int, dim: int = 32) -> torch.nn.Module: ...

Builders must be importable where the Ray workers run (a module on their PYTHONPATH, or a
function that cloudpickle can ship), take JSON arguments and return a ``torch.nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from keel.artifacts import BuilderNotFoundError, build_mlp, resolve_builder
from keel.trainer._errors import InvalidJobError, UnknownBuilderError

Builder = Callable[..., Any]


class ModelRegistry(Mapping[str, Builder]):
    """Name -> model builder. Registering a taken name is an error (no silent override)."""

    def __init__(self, builders: Mapping[str, Builder] | None = None) -> None:
        self._builders: dict[str, Builder] = {}
        for name, b in (builders or {}).items():
            self.add(name, b)

    def add(self, name: str, builder: Builder) -> None:
        if not name or not isinstance(name, str):
            raise InvalidJobError("a model builder needs a non-empty string name")
        if not callable(builder):
            raise InvalidJobError(f"model builder {name!r} is not callable")
        if name in self._builders:
            raise InvalidJobError(f"a model builder is already registered as {name!r}")
        self._builders[name] = builder

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def deco(fn: Builder) -> Builder:
            self.add(name, fn)
            return fn

        return deco

    def build(self, name: str, args: Mapping[str, Any]) -> Any:
        """Call the builder; a bad argument is the job's fault (``InvalidJobError``)."""
        builder = self._builders.get(name)
        if builder is None:
            try:  # the process's registered builders (keel.artifacts.register_builder, ...)
                builder = resolve_builder(name)
            except BuilderNotFoundError:
                builder = None
        if builder is None:
            raise UnknownBuilderError(
                f"model.builder {name!r} is not registered (have {sorted(self._builders)}, "
                "nor keel.artifacts.register_builder / KEEL_MODEL_BUILDERS / an entry point); "
                "register it on the ModelRegistry passed to the trainer"
            )
        try:
            return builder(**dict(args))
        except (TypeError, ValueError) as e:
            raise InvalidJobError(f"model.args do not fit builder {name!r}: {e}") from None

    def __getitem__(self, name: str) -> Builder:
        return self._builders[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


#: Keel's built-in ``mlp`` builder: keel.artifacts' own, so serving and the MLflow pyfunc
#: loader rebuild what the trainer trained with the very same function.
mlp = build_mlp


def default_registry() -> ModelRegistry:
    """A fresh registry holding Keel's built-in builders (``mlp``)."""
    return ModelRegistry({"mlp": build_mlp})
