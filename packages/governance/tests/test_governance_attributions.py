"""Integrated Gradients: exact on linear models, complete on nonlinear ones, equal to Captum's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from governance_testdata import german_credit

from keel.governance import InvalidInputError, global_importance, integrated_gradients


def _mlp(d: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return (
        torch.nn.Sequential(
            torch.nn.Linear(d, 16),
            torch.nn.Tanh(),
            torch.nn.Linear(16, 8),
            torch.nn.Softplus(),
            torch.nn.Linear(8, 1),
            torch.nn.Sigmoid(),
        )
        .to(torch.float64)
        .eval()
    )


def test_linear_model_gets_exactly_weight_times_distance() -> None:
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 1).to(torch.float64)
    x = torch.randn(40, 6, dtype=torch.float64)
    base = torch.randn(6, dtype=torch.float64)
    attr = integrated_gradients(lin, x, base, steps=3)
    expected = lin.weight.detach().numpy()[0] * (x.numpy() - base.numpy())
    np.testing.assert_allclose(attr.values, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(attr.delta, 0.0, atol=1e-12)


@pytest.mark.parametrize("chunk_rows", [1, 7, 1024])
def test_completeness_on_a_nonlinear_model(chunk_rows: int) -> None:
    data = german_credit()
    model = _mlp(data.x.shape[1])
    x = torch.as_tensor(data.x[:60])
    attr = integrated_gradients(model, x, data.x.mean(axis=0), steps=64, chunk_rows=chunk_rows)
    with torch.no_grad():
        fx = model(x)[:, 0].numpy()
        fb = model(torch.as_tensor(data.x.mean(axis=0))[None])[:, 0].numpy()
    np.testing.assert_allclose(attr.values.sum(axis=1), fx - fb, atol=1e-6)
    assert np.abs(attr.delta).max() < 1e-6
    np.testing.assert_allclose(attr.output, fx)


def test_equals_captum_integrated_gradients() -> None:
    data = german_credit()
    model = _mlp(data.x.shape[1], seed=3)
    x = torch.as_tensor(data.x[:100])
    base = torch.zeros_like(x)
    ours = integrated_gradients(model, x, None, steps=50)
    theirs = IntegratedGradients(model).attribute(
        x, baselines=base, target=0, n_steps=50, method="gausslegendre"
    )
    np.testing.assert_allclose(
        ours.values, theirs.detach().numpy(), rtol=1e-9, atol=1e-10
    )  # float64 summation order


def test_multi_output_needs_a_target_and_float32_works() -> None:
    torch.manual_seed(2)
    lin = torch.nn.Linear(4, 3)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(InvalidInputError, match="target="):
        integrated_gradients(lin, x)
    attr = integrated_gradients(lin, x, target=2, steps=2)
    expected = lin.weight.detach().numpy()[2] * x
    np.testing.assert_allclose(attr.values, expected, rtol=1e-5, atol=1e-6)


def test_global_importance_ranks_by_mean_absolute_attribution() -> None:
    vals = np.array([[0.1, -2.0, 0.5], [0.1, 2.0, -0.7]])
    ranking = global_importance(vals, ["a", "b", "c"])
    assert [r.feature for r in ranking] == ["b", "c", "a"]
    assert ranking[0].mean_abs == 2.0 and ranking[0].mean == 0.0
    with pytest.raises(InvalidInputError):
        global_importance(vals, ["a"])


def test_bad_inputs_are_clear_errors() -> None:
    lin = torch.nn.Linear(3, 1)
    with pytest.raises(InvalidInputError, match="rows x features"):
        integrated_gradients(lin, np.zeros(3))
    with pytest.raises(InvalidInputError, match="baseline shape"):
        integrated_gradients(lin, np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(InvalidInputError, match="NaN"):
        integrated_gradients(lin, np.full((2, 3), np.nan))
    with pytest.raises(InvalidInputError, match="steps"):
        integrated_gradients(lin, np.zeros((2, 3)), steps=0)
