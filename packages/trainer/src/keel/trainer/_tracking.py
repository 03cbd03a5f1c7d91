"""MLflow tracking through an explicit ``MlflowClient`` (no process-global active run).

Embedded default: ``sqlite:///$KEEL_HOME/mlflow.db`` with run artifacts under
``$KEEL_HOME/mlartifacts`` — the same store keel.registry_client opens, so a trained run and
its registered versions sit side by side. A Tune trial's run is nested under its search's run
(MLflow's ``mlflow.parentRunId`` tag). Any other tracking URI (an ``mlflow server``)
works the same. A resumed job continues the MLflow run it started (its id is kept in the
run directory), so one job is one MLflow run however many drivers it took.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keel.trainer._errors import TrackingError


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


class Tracker:
    """One MLflow run of a training job; every MLflow failure becomes ``TrackingError``."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        home: Path,
        run_id_file: Path,
        clock: Callable[[], float],
        parent_run_id: str | None = None,
    ) -> None:
        self.clock = clock
        try:
            import mlflow
            from mlflow.exceptions import MlflowException
        except ImportError as e:  # pragma: no cover - mlflow-skinny is a dependency
            raise TrackingError(f"mlflow is not installed: {e}") from None
        self._exc: tuple[type[BaseException], ...] = (MlflowException, OSError)
        self.uri = uri
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = (home / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
                exp_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            self.run_id = None
            if run_id_file.exists():
                rid = run_id_file.read_text().strip()
                try:
                    run = self.client.get_run(rid)
                    if run.info.experiment_id == exp_id:
                        self.run_id = rid
                        self.resumed = True
                        if run.info.status != "RUNNING":
                            self.client.update_run(rid, status="RUNNING")
                except MlflowException:
                    self.run_id = None
            if self.run_id is None:
                self.resumed = False
                # MLflow's nesting is the parentRunId tag (what its UI groups trials by)
                nest = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
                run = self.client.create_run(exp_id, run_name=run_id_file.parent.name, tags=nest)
                self.run_id = run.info.run_id
                run_id_file.write_text(self.run_id)
        except self._exc as e:
            raise TrackingError(f"MLflow tracking at {uri} failed: {e}") from None

    def _call(self, fn: Any, *args: Any, **kw: Any) -> None:
        try:
            fn(*args, **kw)
        except self._exc as e:
            raise TrackingError(f"MLflow tracking at {self.uri} failed: {e}") from None

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self.resumed:
            existing = self.client.get_run(self.run_id).data.params  # type: ignore[arg-type]
            params = {k: v for k, v in params.items() if k not in existing}
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(
            self.client.log_batch,
            self.run_id,
            tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())],
        )

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(self.clock() * 1000)
        items = [
            Metric(k, float(v), ts, step) for k, v in sorted(metrics.items()) if math.isfinite(v)
        ]
        if items:
            self._call(self.client.log_batch, self.run_id, metrics=items)

    def finish(self, status: str) -> None:
        self._call(self.client.set_terminated, self.run_id, status=status)
