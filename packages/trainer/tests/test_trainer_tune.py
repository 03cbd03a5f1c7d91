"""Ray Tune search: the [tune] spec's validation, the pure trial plan, seeds and best-trial
rule (one decision at a time), and one real ASHA search on the local Ray (3 trials, 1 worker
each, nested MLflow runs in embedded SQLite, the best trial's signed artifact)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from trainer_testdata import job

from keel.trainer import (
    InvalidJobError,
    TrainingFailedError,
    TrialOutcome,
    choose_best,
    load_job,
    plan_trials,
    sample_params,
    trial_outcome,
    trial_seed,
)

SPACE: dict[str, Any] = {
    "train.optimizer.lr": {"loguniform": [1e-4, 1e-1]},
    "model.args.hidden": {"choice": [[8], [16, 16]]},
    "train.batch_size": {"grid": [32, 64]},
}


def _tuned(data: Path, **tune: Any) -> Any:
    return job("search", data, tune={"space": SPACE, **tune})


# --- the spec ---------------------------------------------------------------------------


def test_tune_section_loads_from_toml(tmp_path: Path, regression_data: Path) -> None:
    p = tmp_path / "job.toml"
    p.write_text(
        f"""
name = "s"
seed = 4
[model]
builder = "mlp"
args = {{ n_in = 8, hidden = [8], n_out = 1 }}
[data]
path = "{regression_data}"
features = {json.dumps([f"f{i}" for i in range(8)])}
target = "y"
[train]
epochs = 3
metrics = ["mae"]
[tune]
metric = "val_mae"
num_samples = 2
asha = {{ grace_period = 1, reduction_factor = 3 }}
[tune.space]
"train.optimizer.lr" = {{ loguniform = [1e-4, 1e-2] }}
"""
    )
    j = load_job(p)
    assert j.tune is not None and j.tune.metric == "val_mae" and j.tune.asha.reduction_factor == 3
    assert [t.trial_id for t in plan_trials(j)] == ["trial-000", "trial-001"]


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"space": {}}, "tune.space: Dictionary should have at least 1 item"),
        ({"space": {"seed": {"choice": [1, 2]}}}, "not a tunable path"),
        ({"space": {"train.epochs": {"grid": [1, 2]}}}, "ASHA's time budget"),
        ({"space": {"train.optimizer.lr": {"uniform": [0.1, 0.01]}}}, "finite low < high"),
        ({"space": {"train.optimizer.lr": {"loguniform": [0.0, 0.1]}}}, "low > 0"),
        ({"space": {"train.optimizer.lr": {"choice": [0.1], "grid": [0.2]}}}, "exactly one of"),
        ({"space": {"train.optimizer.lr": {}}}, "exactly one of"),
        ({"space": SPACE, "metric": "val_accuracy"}, "tune.metric 'val_accuracy' is not reported"),
        ({"space": SPACE, "asha": {"grace_period": 9}}, "exceeds train.epochs 3"),
        ({"space": SPACE, "samples": 3}, "tune.samples: unknown key"),
        ({"space": {"train.batch_size": {"grid": [64, 63]}}}, "trial-001"),
        ({"space": {"train.optimizer.name": {"choice": ["lbfgs"]}}}, "train.optimizer.name"),
    ],
)
def test_bad_tune_sections_name_what_to_fix(
    regression_data: Path, tune: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        job("search", regression_data, tune=tune)


def test_run_job_refuses_a_search_job(regression_data: Path, tmp_path: Path) -> None:
    from keel.trainer import run_job

    with pytest.raises(InvalidJobError, match=r"has a \[tune\] section: .*run_search"):
        run_job(_tuned(regression_data), home=tmp_path)


# --- the plan: pure, reproducible -------------------------------------------------------


def test_trials_are_samples_times_grid_in_a_fixed_order(regression_data: Path) -> None:
    j = _tuned(regression_data, num_samples=3)
    trials = plan_trials(j)
    assert [t.trial_id for t in trials] == [f"trial-{i:03d}" for i in range(6)]
    assert [t.params["train.batch_size"] for t in trials] == [32, 64] * 3
    for t in trials:
        lr = t.params["train.optimizer.lr"]
        assert 1e-4 <= lr <= 1e-1
        assert t.params["model.args.hidden"] in ([8], [16, 16])
        # the values are applied to the trial's own validated job, with its derived seed
        assert (
            t.job.train.optimizer.lr == lr
            and t.job.train.batch_size == t.params["train.batch_size"]
        )
        assert t.job.model.args["hidden"] == t.params["model.args.hidden"]
        assert t.job.seed == t.seed == trial_seed(j.seed, t.params)
        assert t.job.name == f"search.{t.trial_id}" and t.job.tune is None
    # the same job plans the same trials; another job seed draws other values
    assert [t.params for t in plan_trials(_tuned(regression_data, num_samples=3))] == [
        t.params for t in trials
    ]
    other = sample_params(j.tune, j.seed + 1)  # type: ignore[arg-type]
    assert [p["train.optimizer.lr"] for p in other] != [
        t.params["train.optimizer.lr"] for t in trials
    ]


def test_trial_seed_is_a_pure_function_of_job_seed_and_params() -> None:
    p = {"train.optimizer.lr": 0.01, "model.args.hidden": [8]}
    s = trial_seed(7, p)
    assert s == trial_seed(7, dict(reversed(list(p.items()))))  # key order does not matter
    assert 0 <= s < 2**31
    assert s != trial_seed(8, p)
    assert s != trial_seed(7, {**p, "train.optimizer.lr": 0.02})
    # documented derivation: sha256 of the canonical JSON, first 8 hex digits, mod 2**31
    import hashlib

    blob = json.dumps({"params": p, "seed": 7}, sort_keys=True, separators=(",", ":"))
    assert s == int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16) % 2**31


# --- the best-trial rule, one decision at a time ---------------------------------------


def _o(tid: str, status: str, value: float | None) -> TrialOutcome:
    return TrialOutcome(tid, status, value, 3)


def test_best_is_the_lowest_value_for_min_and_highest_for_max() -> None:
    outs = [_o("trial-000", "completed", 0.5), _o("trial-001", "completed", 0.2)]
    assert choose_best(outs, "val_loss", "min").trial_id == "trial-001"
    assert choose_best(outs, "val_accuracy", "max").trial_id == "trial-000"


def test_ties_go_to_the_lowest_trial_id_whatever_the_order() -> None:
    outs = [_o("trial-002", "completed", 0.2), _o("trial-001", "early_stopped", 0.2)]
    assert choose_best(outs, "val_loss", "min").trial_id == "trial-001"
    assert choose_best(list(reversed(outs)), "val_loss", "max").trial_id == "trial-001"


def test_pruned_failed_and_valueless_trials_are_never_chosen() -> None:
    outs = [
        _o("trial-000", "pruned", 0.01),  # better value, but ASHA stopped it
        _o("trial-001", "failed", 0.0),
        _o("trial-002", "completed", None),
        _o("trial-003", "completed", math.nan),
        _o("trial-004", "completed", 0.9),
    ]
    assert choose_best(outs, "val_loss", "min").trial_id == "trial-004"


def test_no_finished_trial_is_an_error_naming_each_trial() -> None:
    with pytest.raises(TrainingFailedError, match="trial-000: pruned, trial-001: failed"):
        choose_best([_o("trial-000", "pruned", 1.0), _o("trial-001", "failed", None)], "m", "min")
    with pytest.raises(ValueError, match="mode"):
        choose_best([_o("trial-000", "completed", 1.0)], "m", "best")


# --- a trial's outcome, from its committed checkpoint ----------------------------------


def _loop(
    epoch: int, values: list[float], stopped_early: bool = False, step: int = 0
) -> dict[str, Any]:
    hist = [{"epoch": float(i), "val_loss": v} for i, v in enumerate(values)]
    return {"epoch": epoch, "global_step": step, "stopped_early": stopped_early, "history": hist}


def test_trial_outcome_reads_the_committed_loop_state(regression_data: Path) -> None:
    t = plan_trials(_tuned(regression_data))[0]  # train.epochs = 3
    done = trial_outcome(t, _loop(3, [0.9, 0.5, 0.4]), "val_loss", None, "r1")
    assert (done.status, done.value, done.epochs, done.mlflow_run_id) == ("completed", 0.4, 3, "r1")
    early = trial_outcome(t, _loop(2, [0.9, 0.95], stopped_early=True), "val_loss", None, None)
    assert (early.status, early.value) == ("early_stopped", 0.95)
    pruned = trial_outcome(t, _loop(1, [0.9]), "val_loss", None, None)
    assert (pruned.status, pruned.epochs) == ("pruned", 1)
    failed = trial_outcome(t, _loop(1, [0.9]), "val_loss", "RuntimeError: x", None)
    assert (failed.status, failed.error) == ("failed", "RuntimeError: x")
    never = trial_outcome(t, None, "val_loss", None, None)
    assert (never.status, never.value, never.epochs) == ("pruned", None, 0)
    # a finished trial is finished even if Tune reported an error after its last checkpoint
    assert trial_outcome(t, _loop(3, [0.3] * 3), "val_loss", "E: late", None).status == "completed"
    capped = plan_trials(job("s", regression_data, train={"max_steps": 50}, tune={"space": SPACE}))[
        0
    ]
    assert (
        trial_outcome(capped, _loop(1, [0.7], step=50), "val_loss", None, None).status
        == "completed"
    )


# --- a real search ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_asha_search_tracks_nested_trials_and_exports_the_best(
    ray_cluster: Any,
    regression_data: Path,
    tmp_path: Path,
    signing_keys: tuple[bytes, bytes],
) -> None:
    """Trials run one at a time (max_concurrent_trials = 1), so ASHA's decisions are
    reproducible: trial-000 (lr 0.01) sets the first rung; trial-001 (lr 1e-6, barely moves)
    is worse at epoch 1 and is stopped there."""
    import mlflow
    import torch

    from keel.artifacts import SigningKey, TrustPolicy, load_artifact
    from keel.trainer import default_registry, final_weights, run_search

    j = job(
        "search",
        regression_data,
        train={"epochs": 2, "checkpoint_every_steps": 1000},
        scaling={"num_workers": 1},
        tracking={"enabled": True},
        tune={
            "space": {"train.optimizer.lr": {"grid": [0.01, 1e-6, 0.02]}},
            "asha": {"grace_period": 1, "reduction_factor": 2},
        },
    )
    home = tmp_path / "home"
    seen: list[TrialOutcome] = []
    r = run_search(
        j,
        home=home,
        signing_key=SigningKey.from_pem(signing_keys[0]),
        on_trial=seen.append,
        code=("0" * 40, False),
    )
    by_id = {o.trial_id: o for o in r.trials}
    assert [o.trial_id for o in seen] == ["trial-000", "trial-001", "trial-002"]
    assert by_id["trial-000"].status == "completed" and by_id["trial-000"].epochs == 2
    assert by_id["trial-001"].status == "pruned" and by_id["trial-001"].epochs == 1
    assert r.best == choose_best(r.trials, "val_loss", "min")
    assert r.best.status == "completed"

    # every trial is a nested MLflow run holding its own per-epoch metrics and seed
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    parent = client.get_run(r.mlflow_run_id)  # type: ignore[arg-type]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["keel.tune.best_trial"] == r.best.trial_id
    assert parent.data.tags["keel.artifact_digest"] == r.artifact_digest
    assert parent.data.metrics["best_val_loss"] == r.best.value
    trials = plan_trials(j)
    for t in trials:
        o = by_id[t.trial_id]
        run = client.get_run(o.mlflow_run_id)  # type: ignore[arg-type]
        assert run.data.tags["mlflow.parentRunId"] == r.mlflow_run_id
        assert run.data.tags["keel.tune.status"] == o.status
        assert run.data.params["seed"] == str(t.seed) == str(trial_seed(j.seed, t.params))
        hist = client.get_metric_history(run.info.run_id, "val_loss")
        assert len(hist) == o.epochs and hist[-1].value == o.value
        assert run.info.status == ("KILLED" if o.status == "pruned" else "FINISHED")

    # the artifact is the best trial's final committed checkpoint, signed
    assert r.artifact_path is not None
    loaded = load_artifact(r.artifact_path, TrustPolicy((signing_keys[1],)))
    assert loaded.digest == r.artifact_digest
    assert loaded.manifest.metrics["val_loss"] == r.best.value
    best_lr = dict(zip([t.trial_id for t in trials], [t.params for t in trials], strict=True))[
        r.best.trial_id
    ]["train.optimizer.lr"]
    assert loaded.manifest.architecture.builder == "mlp" and best_lr in (0.01, 0.02)
    want = final_weights(r.best_checkpoint)
    got = dict(loaded.build_model(default_registry()).state_dict())
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
