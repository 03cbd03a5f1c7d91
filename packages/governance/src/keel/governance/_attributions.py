"""Feature attributions for torch models: Integrated Gradients (Sundararajan et al., 2017).

    IG_i(x) = (x_i - x'_i) · integral_0^1 df(x' + a(x - x'))/dx_i da

The integral is a Gauss-Legendre quadrature over ``steps`` nodes (Captum's default rule),
evaluated for all rows and all nodes in one forward/backward pass per chunk of
``chunk_rows`` rows — no Python loop per row or per step. Completeness
(sum_i IG_i = f(x) - f(x')) holds up to the quadrature error, reported per row as
``delta``; it is exact for a model linear in its inputs, where IG = w · (x - x').

torch is imported lazily, inside `integrated_gradients`: ``import keel.governance`` never
loads it (tested). Results are NumPy arrays, so cards and serving can use them without
torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from keel.governance._errors import InvalidInputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Attributions:
    """Per-row attributions (rows x features) and the completeness error of each row."""

    values: npt.NDArray[np.float64]
    delta: npt.NDArray[np.float64]  # sum attributions - (f(x) - f(baseline)), per row
    output: npt.NDArray[np.float64]  # f(x), per row
    baseline_output: npt.NDArray[np.float64]  # f(baseline), per row


@dataclass(frozen=True)
class FeatureImportance:
    feature: str
    mean_abs: float  # mean |attribution|: the global ranking key
    mean: float  # mean signed attribution: direction of the effect

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "mean_abs": self.mean_abs, "mean": self.mean}


def _select(out: torch.Tensor, target: int | None) -> torch.Tensor:
    if out.ndim == 1:
        if target not in (None, 0):
            raise InvalidInputError(f"model has one output; target {target} does not exist")
        return out
    if out.ndim == 2:
        if out.shape[1] == 1 and target in (None, 0):
            return out[:, 0]
        if target is None:
            raise InvalidInputError(
                f"model has {out.shape[1]} outputs: pass target= (the output to explain)"
            )
        if not 0 <= target < out.shape[1]:
            raise InvalidInputError(f"target {target} out of range for {out.shape[1]} outputs")
        return out[:, target]
    raise InvalidInputError(
        f"model output must be (rows,) or (rows, outputs); got {tuple(out.shape)}"
    )


def integrated_gradients(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: Any,
    baseline: Any = None,
    *,
    target: int | None = None,
    steps: int = 50,
    chunk_rows: int = 1024,
) -> Attributions:
    """Integrated Gradients of ``model`` at ``inputs`` (rows x features) against ``baseline``.

    ``baseline``: None (zeros), one row broadcast to all rows, or one row per input row.
    ``model`` maps a float tensor (rows x features) to (rows,) or (rows, outputs); pick the
    explained output with ``target``. The model is not switched to eval mode here: do that
    before (dropout would make attributions random).
    """
    import torch

    if steps < 1:
        raise InvalidInputError("steps must be >= 1")
    if chunk_rows < 1:
        raise InvalidInputError("chunk_rows must be >= 1")
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInputError(
            f"inputs must be a non-empty rows x features array; got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise InvalidInputError("inputs hold NaN or infinite values")
    if baseline is None:
        b = torch.zeros_like(x)
    else:
        b = torch.as_tensor(
            np.asarray(baseline) if not isinstance(baseline, torch.Tensor) else baseline
        ).to(dtype=x.dtype, device=x.device)
        if b.ndim == 1:
            b = b.unsqueeze(0)
        if b.shape[1] != x.shape[1] or b.shape[0] not in (1, x.shape[0]):
            raise InvalidInputError(
                f"baseline shape {tuple(b.shape)} does not fit inputs {tuple(x.shape)}"
            )
        b = b.expand_as(x)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor(0.5 * (nodes + 1.0), dtype=x.dtype, device=x.device)
    wts = torch.as_tensor(0.5 * weights, dtype=x.dtype, device=x.device)

    parts: list[torch.Tensor] = []
    for lo in range(0, x.shape[0], chunk_rows):
        xc, bc = x[lo : lo + chunk_rows], b[lo : lo + chunk_rows]
        diff = xc - bc
        # (steps, rows, features) -> (steps·rows, features): one batched forward/backward
        path = (bc.unsqueeze(0) + alphas.view(-1, 1, 1) * diff.unsqueeze(0)).reshape(-1, x.shape[1])
        path = path.detach().requires_grad_(True)
        with torch.enable_grad():
            out = _select(model(path), target)
            (grads,) = torch.autograd.grad(out.sum(), path)
        avg = (grads.view(steps, xc.shape[0], -1) * wts.view(-1, 1, 1)).sum(dim=0)
        parts.append((avg * diff).detach())
    attr = torch.cat(parts).to(torch.float64).cpu().numpy()
    with torch.no_grad():
        fx = _select(model(x), target).to(torch.float64).cpu().numpy()
        fb = _select(model(b), target).to(torch.float64).cpu().numpy()
    return Attributions(
        values=attr, delta=attr.sum(axis=1) - (fx - fb), output=fx, baseline_output=fb
    )


def global_importance(
    attributions: Attributions | npt.ArrayLike, feature_names: Sequence[str]
) -> list[FeatureImportance]:
    """Features ranked by mean |attribution| over rows (the card's global ranking)."""
    values = (
        attributions.values if isinstance(attributions, Attributions) else np.asarray(attributions)
    )
    if values.ndim != 2 or values.shape[1] != len(feature_names):
        raise InvalidInputError(
            f"attributions of shape {values.shape} do not match {len(feature_names)} feature names"
        )
    mean_abs = np.abs(values).mean(axis=0)
    mean = values.mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    return [
        FeatureImportance(str(feature_names[i]), float(mean_abs[i]), float(mean[i])) for i in order
    ]
