"""Losses, validation metrics, optimisers and schedules by name (used inside the workers).

Metrics are sums over rows (all-reduced across workers, then divided), so the validation
figures do not depend on how rows are split across workers. Schedules are pure functions of
the global step: the scheduler's state is one integer, restored exactly on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keel.trainer._errors import UnknownBuilderError
from keel.trainer._spec import OptimizerSpec, ScheduleSpec

if TYPE_CHECKING:
    import torch

LOSSES = ("mse", "mae", "huber", "bce_with_logits", "cross_entropy")
METRICS = ("mse", "mae", "rmse", "accuracy")


def check_names(loss: str, metrics: list[str]) -> None:
    """Refuse unknown loss/metric names before any worker starts."""
    if loss not in LOSSES:
        raise UnknownBuilderError(f"train.loss {loss!r} is not one of {list(LOSSES)}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UnknownBuilderError(f"train.metrics {bad} are not among {list(METRICS)}")


def classification(loss: str) -> bool:
    return loss == "cross_entropy"


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import torch

    fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "mse": torch.nn.functional.mse_loss,
        "mae": torch.nn.functional.l1_loss,
        "huber": torch.nn.functional.huber_loss,
        "bce_with_logits": torch.nn.functional.binary_cross_entropy_with_logits,
        "cross_entropy": torch.nn.functional.cross_entropy,
    }
    return fns[name]


def metric_sums(
    loss: str, metrics: list[str], out: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Per-batch sums: ``loss_sum`` (the loss summed over rows) and one sum per metric."""
    import torch

    fn = make_loss(loss)
    sums: dict[str, float] = {
        "loss_sum": float(fn(out, y, reduction="sum")),  # type: ignore[call-arg]
        "_elems": float(y.numel()),
    }
    if classification(loss):
        pred = out.argmax(dim=1).to(y.dtype)
        err = (pred - y).to(torch.float64)
    else:
        pred = out
        err = (out - y).to(torch.float64)
    for m in metrics:
        if m in ("mse", "rmse"):
            sums["sq_sum"] = float((err * err).sum())
        elif m == "mae":
            sums["abs_sum"] = float(err.abs().sum())
        elif m == "accuracy":
            if classification(loss):
                sums["correct"] = float((pred == y).sum())
            elif loss == "bce_with_logits":
                sums["correct"] = float(((out > 0).to(y.dtype) == y).sum())
            else:
                sums["correct"] = float((out.round() == y).sum())
    return sums


def finish_metrics(loss: str, metrics: list[str], sums: dict[str, float]) -> dict[str, float]:
    """Means from all-reduced sums over the validation rows (per target element)."""
    elems = sums["_elems"]
    res = {"val_loss": sums["loss_sum"] / elems}
    for m in metrics:
        if m == "mse":
            res["val_mse"] = sums["sq_sum"] / elems
        elif m == "rmse":
            res["val_rmse"] = math.sqrt(sums["sq_sum"] / elems)
        elif m == "mae":
            res["val_mae"] = sums["abs_sum"] / elems
        elif m == "accuracy":
            res["val_accuracy"] = sums["correct"] / elems
    return res


def make_optimizer(spec: OptimizerSpec, params: Any) -> torch.optim.Optimizer:
    import torch

    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.name == "adam":
        return torch.optim.Adam(
            params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
        )
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)


def lr_factor(spec: ScheduleSpec, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based): warmup, then the named decay."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        return spec.gamma ** ((step - spec.warmup_steps) // spec.step_size)
    span = max(1, total_steps - spec.warmup_steps)
    t = min(1.0, (step - spec.warmup_steps) / span)
    floor = spec.min_lr_ratio
    if spec.name == "linear":
        return floor + (1.0 - floor) * (1.0 - t)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
