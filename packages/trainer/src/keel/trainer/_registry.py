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

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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
            raise UnknownBuilderError(
                f"model.builder {name!r} is not registered (have {sorted(self._builders)}); "
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


def mlp(
    n_in: int,
    hidden: list[int] | tuple[int, ...] = (64,),
    n_out: int = 1,
    activation: str = "relu",
    dropout: float = 0.0,
) -> Any:
    """A plain multi-layer perceptron: Linear -> act (-> Dropout) per hidden layer -> Linear."""
    import torch  # (heavy: only when a model is built)

    acts: dict[str, type[torch.nn.Module]] = {
        "relu": torch.nn.ReLU,
        "gelu": torch.nn.GELU,
        "tanh": torch.nn.Tanh,
        "silu": torch.nn.SiLU,
    }
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
    sizes = [int(n_in), *[int(h) for h in hidden]]
    if any(s < 1 for s in [*sizes, int(n_out)]):
        raise ValueError(f"layer sizes must be >= 1, got n_in={n_in} hidden={hidden} n_out={n_out}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), acts[activation]()]
        if dropout:
            layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(sizes[-1], int(n_out)))
    return torch.nn.Sequential(*layers)


def default_registry() -> ModelRegistry:
    """A fresh registry holding Keel's built-in builders (``mlp``)."""
    return ModelRegistry({"mlp": mlp})
