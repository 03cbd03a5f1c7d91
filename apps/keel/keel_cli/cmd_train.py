"""`keel train <job.toml>`: run a keel.trainer job with a live progress line.

Local Ray by default (bounded to this machine's CPUs), or the cluster at $RAY_ADDRESS.
Ctrl-C once: the workers stop right after their next committed checkpoint (re-run the same
command to resume); twice: abort now (the last committed checkpoint is still there).
The last line names the artifact digest and the MLflow run. A job with a ``[tune]`` section
runs its Ray Tune search instead (ASHA; one line per trial, then the best trial, whose
artifact is exported; Ctrl-C is Tune's: it stops the search, and re-running resumes each
unfinished trial from its committed checkpoint). torch, Ray and MLflow are imported only
when the command runs.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)


class ProgressLine:
    """Renders worker events as one updating line: epoch, step, loss, samples/s, ETA."""

    def __init__(self, out: Any = None, batch_size: int = 1) -> None:
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.batch_size = batch_size
        self.total = 0
        self.last_print = 0.0

    def line(self, e: dict[str, Any]) -> str:
        steps_per_s = e["samples_per_s"] / self.batch_size if self.batch_size else 0.0
        left = max(0, self.total - e["step"])
        eta = left / steps_per_s if steps_per_s > 0 else float("inf")
        eta_s = "?" if eta == float("inf") else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        return (
            f"epoch {e['epoch'] + 1} step {e['step']}/{self.total} loss {e['loss']:.4g} "
            f"{e['samples_per_s']:,.0f} samples/s ETA {eta_s}"
        )

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["type"]
        if kind == "start":
            self.total = int(e["total_steps"])
            where = (
                f"resuming from step {e['resumed_from']}"
                if e.get("resumed_from")
                else "from scratch"
            )
            self._emit(f"training on {e['world_size']} worker(s), {where}", final=True)
        elif kind == "progress":
            now = time.monotonic()
            if self.tty or now - self.last_print >= 5.0:
                self.last_print = now
                self._emit(self.line(e), final=not self.tty)
        elif kind == "epoch":
            shown = " ".join(
                f"{k} {v:.4g}" for k, v in sorted(e["metrics"].items()) if k != "epoch"
            )
            self._emit(f"epoch {e['epoch'] + 1} done: {shown}", final=True)

    def _emit(self, text: str, final: bool) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


def train(
    job_file: Annotated[Path, typer.Argument(help="the job TOML (see `keel.trainer` README)")],
    home: Annotated[
        Path | None, typer.Option(help="KEEL_HOME (default: $KEEL_HOME or ./.keel)")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="discard this job name's checkpoints")
    ] = False,
    signing_key: Annotated[
        Path | None, typer.Option(help="PEM private key to sign the artifact (or KEEL_SIGNING_KEY)")
    ] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="train only, no artifact")] = False,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster")
    ] = None,
) -> None:
    """Train a model on Ray (PyTorch DDP), resume from committed checkpoints, export a signed
    artifact and track the run in MLflow. With a [tune] section: an ASHA search on Ray Tune
    whose best trial is exported."""
    from keel_cli.config import load_config

    from keel.trainer import TrainingStoppedError, ensure_ray, load_job, run_job

    job = load_job(job_file)
    key = None
    if signing_key is not None:
        from keel.artifacts import SigningKey

        key = SigningKey.from_pem(signing_key.read_bytes())
    root = home or load_config().home
    if job.tune is not None:
        _search(job, root, fresh=fresh, key=key, export=not no_export, ray_address=ray_address)
        return
    stop = threading.Event()
    interrupts = [0]

    def on_sigint(signum: int, frame: Any) -> None:
        interrupts[0] += 1
        if interrupts[0] == 1:
            stop.set()
            console.print("\nstopping after the next committed checkpoint (Ctrl-C again to abort)")
        else:
            raise KeyboardInterrupt

    # Ray's start-up installs its own signal handlers: start it first, then install ours.
    ensure_ray(address=ray_address)
    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        result = run_job(
            job,
            home=root,
            fresh=fresh,
            stop=stop,
            signing_key=key,
            export=not no_export,
            ray_address=ray_address,
            on_event=ProgressLine(batch_size=job.train.batch_size),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    if result.status == "stopped":
        raise TrainingStoppedError(
            f"stopped at step {result.step} after a committed checkpoint: run `keel train "
            f"{job_file}` again to resume",
            result.step,
        )
    typer.echo(
        f"trained {job.name}: {result.status} at step {result.step}; artifact "
        f"{result.artifact_digest or '-'} ({result.artifact_path or 'not exported'}); "
        f"mlflow run {result.mlflow_run_id or '-'}"
    )


def _search(
    job: Any, root: Path, *, fresh: bool, key: Any, export: bool, ray_address: str | None
) -> None:
    """The job has a [tune] section: run its ASHA search, one line per trial, then the best."""
    from keel.trainer import plan_trials, run_search

    def on_trial(o: Any) -> None:
        value = "-" if o.value is None else f"{o.value:.6g}"
        typer.echo(
            f"{o.trial_id} {o.status} after {o.epochs} epoch(s): {job.tune.metric} {value} "
            f"{json.dumps(o.params, sort_keys=True)}"
        )

    console.print(f"tuning {job.name}: {len(plan_trials(job))} trial(s) with ASHA on Ray Tune")
    r = run_search(
        job,
        home=root,
        fresh=fresh,
        signing_key=key,
        export=export,
        ray_address=ray_address,
        on_trial=on_trial,
    )
    typer.echo(
        f"tuned {job.name}: best {r.best.trial_id} ({r.metric} {r.best.value:.6g}) of "
        f"{len(r.trials)} trial(s); artifact {r.artifact_digest or '-'} "
        f"({r.artifact_path or 'not exported'}); mlflow run {r.mlflow_run_id or '-'}"
    )
