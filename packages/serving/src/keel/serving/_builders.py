"""Model builders: the names an artifact's ``architecture.builder`` may refer to.

ONE lookup function, :func:`resolve_builders`, so a shared registry can replace it without
touching the rest of keel.serving. A builder is ``f(**architecture.args) -> torch.nn.Module``;
loading never runs code stored in an artifact, only builders installed with Keel or a
package that declares the ``keel.model_builders`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from keel.serving._errors import ConfigError

ENTRY_POINT_GROUP = "keel.model_builders"
_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
_OUT_ACTIVATIONS = (None, "sigmoid", "softmax")


def build_mlp(
    n_in: int,
    hidden: int | Sequence[int] = (),
    n_out: int = 1,
    activation: str = "relu",
    out_activation: str | None = None,
) -> Any:
    """``torch.nn.Sequential``: Linear, activation, ..., Linear[, out activation].

    Parameter names are ``<index>.weight``/``<index>.bias`` (0, 2, 4, ...): the state-dict
    layout of the same ``nn.Sequential`` built anywhere else.
    """
    import torch  # pants: no-infer-dep

    layers = [hidden] if isinstance(hidden, int) else list(hidden)
    if not isinstance(n_in, int) or n_in < 1 or not isinstance(n_out, int) or n_out < 1:
        raise ConfigError(f"mlp: n_in and n_out must be positive ints (got {n_in!r}, {n_out!r})")
    if any(not isinstance(h, int) or h < 1 for h in layers):
        raise ConfigError(f"mlp: hidden sizes must be positive ints (got {hidden!r})")
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"mlp: activation {activation!r} not in {list(_ACTIVATIONS)}")
    if out_activation not in _OUT_ACTIVATIONS:
        raise ConfigError(f"mlp: out_activation {out_activation!r} not in {list(_OUT_ACTIVATIONS)}")
    act: dict[str, Callable[[], Any]] = {
        "relu": torch.nn.ReLU,
        "tanh": torch.nn.Tanh,
        "gelu": torch.nn.GELU,
        "sigmoid": torch.nn.Sigmoid,
    }
    mods: list[Any] = []
    width = n_in
    for h in layers:
        mods += [torch.nn.Linear(width, h), act[activation]()]
        width = h
    mods.append(torch.nn.Linear(width, n_out))
    if out_activation == "sigmoid":
        mods.append(torch.nn.Sigmoid())
    elif out_activation == "softmax":
        mods.append(torch.nn.Softmax(dim=-1))
    return torch.nn.Sequential(*mods)


BUILTIN_BUILDERS: Mapping[str, Callable[..., Any]] = {"mlp": build_mlp}


def resolve_builders(
    extra: Mapping[str, Callable[..., Any]] | None = None,
) -> dict[str, Callable[..., Any]]:
    """Builders by name: built-ins, then installed ``keel.model_builders`` entry points,
    then ``extra`` (later wins). An entry point that fails to import is skipped with its
    name listed in the error only if an artifact asks for it (see LoadedArtifact.build_model)."""
    out: dict[str, Callable[..., Any]] = dict(BUILTIN_BUILDERS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            fn = ep.load()
        except Exception:  # a broken plug-in must not stop serving other models
            continue
        if callable(fn):
            out[ep.name] = fn
    if extra:
        out.update(extra)
    return out
