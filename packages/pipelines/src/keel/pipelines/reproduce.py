"""`keel reproduce`: rebuild a registered model from its records and prove it equal.

    from keel.pipelines.reproduce import reproduce

    verdict = reproduce(registry, "fraud", "champion", work_dir=home / "reproduce",
                        signing_key=key, trust=trust, repo=Path("."))
    verdict.status          # "identical" | "differs" | "refused"
    verdict.link            # the first link that differs, or the input that is gone

What a registered version records (its signed artifact's manifest; the keel.trainer MLflow
run whose ``keel.artifact_digest`` tag is the version's digest: the job spec, data path,
params, worker count) is checked link by link, in this order, and the first link that
differs is the verdict:

1. **data fingerprint** — the training file's SHA-256 now vs the manifest's;
2. **code version** — the checkout reproduce runs in vs the manifest's commit (which must be
   in the repository's git history, and must not have been a dirty tree);
3. **lock hash** — the dependency lockfile now vs the manifest's;
4. **parameters** — the job that will run (the recorded one, or ``job=``) vs the run's
   recorded MLflow params, worker count and the manifest's architecture;
5. **weights** — only when every input matches, the job is re-run on CPU in a scratch home
   (fresh checkpoints, no tracking), packaged and signed, and the new artifact digest is
   compared with the registered one; if they differ, the max absolute difference of every
   tensor is reported.

A model trained by the pipelines (``pipelines=PipelinesSource(home, options)``) has its
data link taken from the offline event log first: `rematerialise` walks the pipelines
provenance back to the run that produced the digest and rebuilds its training set with
keel.features' point-in-time build (the recorded feature-view versions, the run's recorded
``start``/``end``/``holdout_from``) from the log as it was known then — the rows recorded
(bus publish time) up to the run's recorded ``as_of``, so a correction appended after
training does not leak in, while an event edited in place still does and is caught — then
compares that set's fingerprint with the manifest's (a run recorded before ``as_of``
existed is rebuilt from the whole log). When they differ, it names the offline datasets
whose content changed since the run and the first training rows that differ. No
keel.trainer MLflow run is needed then: the code version and lock hash links are checked as
above; the parameters link is the job the given options train on the recorded set (its
digest: seed, model, data, train settings) vs the run's recorded train step; the weights
link re-runs the pipelines' own ``train`` → ``evaluate`` → ``package_sign``
(keel.pipelines.local, on the re-materialised set, in a scratch home with a scratch bus and
signing key, no tracking) with step contexts rebuilt from the run's provenance, so the
rebuilt artifact is the pipelines' package (weights, drift profile, model card, evaluation)
and its digest is compared with the registered one.

An input that is gone (the data file, the commit, the lockfile, the job spec record) is a
``refused`` verdict naming it, not an exception. The verdict is stored as the version's
``keel.reproduce`` tag (read back by the evidence pack) and as ``verdict.json`` in the work
directory. Importing this module loads neither torch, Ray nor MLflow; ``reproduce`` does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from keel.pipelines._errors import InvalidInputError, NotFoundError, PipelinesError

LINKS = ("data fingerprint", "code version", "lock hash", "parameters", "weights")
Status = Literal["identical", "differs", "refused"]
VERDICT_TAG = "keel.reproduce"
# Params that name where the data was read, not what it was: the data fingerprint link
# covers the content.
_LOCATION_PARAMS = frozenset({"data.path"})


@dataclass(frozen=True)
class LinkCheck:
    """One link of the chain: what was recorded, what reproduce found, whether they match."""

    link: str
    same: bool
    recorded: str
    found: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "same": self.same,
            "recorded": self.recorded,
            "found": self.found,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of one reproduction. ``link``: the first link that differs, or the
    input that is missing (``refused``); None when identical."""

    model: str
    version: int
    digest: str
    status: Status
    link: str | None
    message: str
    checks: tuple[LinkCheck, ...] = ()
    reproduced_digest: str | None = None
    weight_diffs: Mapping[str, float] = field(default_factory=dict)
    retrained: bool = False
    training_run: str | None = None
    at: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "identical"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "keel.reproduce_verdict",
            "schema_version": 1,
            "model": self.model,
            "version": self.version,
            "digest": self.digest,
            "status": self.status,
            "link": self.link,
            "message": self.message,
            "checks": [c.to_dict() for c in self.checks],
            "reproduced_digest": self.reproduced_digest,
            "weight_diffs": dict(self.weight_diffs),
            "retrained": self.retrained,
            "training_run": self.training_run,
            "at": self.at,
            "seconds": round(self.seconds, 3),
        }


OPTIONS_FILE = Path("pipelines") / "options.json"


def record_options(home: Path, options: Mapping[str, Any]) -> Path:
    """Write the executors' ``options`` (plain JSON, as ``build_executors`` took them) to
    ``home/pipelines/options.json``, where `read_options` (and `keel reproduce`) find them:
    a model the pipelines trained in ``home`` is then reproduced from ``home`` alone."""
    path = Path(home) / OPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(options), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_options(home: Path) -> dict[str, Any] | None:
    """The options `record_options` wrote under ``home`` (None when there are none);
    unreadable ones are an `InvalidInputError` naming the file."""
    path = Path(home) / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"pipelines options {path}: {e}") from None
    if not isinstance(out, dict):
        raise InvalidInputError(f"pipelines options {path}: not a JSON object")
    return out


@dataclass(frozen=True)
class PipelinesSource:
    """Where a model trained by the pipelines (keel.pipelines.local) had its training set
    built: ``home`` (its KEEL_HOME: offline store, work dir), ``options`` (the JSON
    ``build_executors`` took: feature definitions, views, features, labels dataset...) and
    the pipelines database holding the run's provenance (default
    ``home/pipelines/pipelines.db``)."""

    home: Path
    options: Mapping[str, Any]
    db_path: Path | None = None


@dataclass(frozen=True)
class SetCheck:
    """The training set re-materialised from the offline log vs the one the run recorded."""

    same: bool
    recorded: str
    found: str
    run_id: str
    path: Path  # the re-materialised set's folder (set/train/holdout.parquet)
    rows: int
    changed_sources: tuple[str, ...]  # offline datasets whose content changed since the run
    differing_rows: tuple[str, ...]  # the first rows that differ, described
    feature_views: Mapping[str, Any]
    trainer_run: str = ""  # the run's train step's tracking run id
    output: Mapping[str, Any] = field(default_factory=dict)  # the re-run step's output
    lineage: Any = None  # the run's verified `Lineage`
    as_of: str | None = None  # the record time the set was rebuilt as of (None: the whole log)

    def describe(self) -> str:
        parts = []
        if self.changed_sources:
            parts.append(
                "offline dataset(s) changed since the run: " + ", ".join(self.changed_sources)
            )
        if self.differing_rows:
            parts.append("first differing training rows: " + "; ".join(self.differing_rows))
        return ". ".join(parts)


class _Stop(Exception):
    """Internal: ends the walk with a verdict (refused or differs)."""

    def __init__(self, status: Status, link: str, message: str) -> None:
        super().__init__(message)
        self.status, self.link, self.message = status, link, message


def parse_target(target: str) -> tuple[str, str]:
    """``MODEL@ALIAS`` or ``MODEL@VERSION`` → (model, ref)."""
    model, sep, ref = target.partition("@")
    if not sep or not model or not ref:
        raise InvalidInputError(f"{target!r}: write MODEL@ALIAS (e.g. fraud@champion) or MODEL@3")
    return model, ref


def resolve_version(registry: Any, model: str, ref: str) -> Any:
    """The registry's ``ModelVersionInfo`` for an alias or a version number."""
    from keel.registry_client import NotFoundError as RegistryNotFound
    from keel.registry_client import RegistryError

    try:
        if ref.isdigit():
            return registry.get_version(model, int(ref))
        return registry.get_by_alias(model, ref)
    except RegistryNotFound as e:
        raise NotFoundError(f"{model}@{ref}: {e}") from None
    except RegistryError as e:
        raise PipelinesError(f"registry: {e}") from None


def training_run(client: Any, digest: str) -> Any:
    """The keel.trainer MLflow run that exported ``digest`` (tag ``keel.artifact_digest``),
    or None. Searches every experiment of the tracking store ``client`` points at."""
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return None
    runs = client.search_runs(
        exps,
        filter_string=f"tags.`keel.artifact_digest` = '{digest}'",
        max_results=10,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def commit_in_history(repo: Path, commit: str) -> bool:
    """Whether ``commit`` is a commit object of the git repository at ``repo``."""
    if not commit or not all(c in "0123456789abcdef" for c in commit.lower()):
        return False
    try:
        r = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def find_lock(repo: Path, lock_file: Path | None) -> Path | None:
    """``lock_file``, else the first ``3rdparty/python/default.lock`` at or above ``repo``."""
    if lock_file is not None:
        return lock_file
    here = repo.resolve()
    for d in [here, *here.parents]:
        p = d / "3rdparty" / "python" / "default.lock"
        if p.is_file():
            return p
    return None


def weight_diffs(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, float]:
    """Max absolute difference per tensor name (NumPy arrays); a tensor only one side has,
    or with another shape, is reported as ``inf``."""
    import numpy as np

    out: dict[str, float] = {}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or np.shape(a[name]) != np.shape(b[name]):
            out[name] = float("inf")
            continue
        x = np.asarray(a[name], dtype=np.float64)
        y = np.asarray(b[name], dtype=np.float64)
        out[name] = float(np.max(np.abs(x - y))) if x.size else 0.0
    return out


def _utc(clock: Callable[[], datetime]) -> str:
    return clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reproduce(
    registry: Any,
    model: str,
    ref: str,
    *,
    work_dir: Path,
    signing_key: Any,
    trust: Any,
    repo: Path | None = None,
    data: Path | None = None,
    job: Any = None,
    code: tuple[str, bool] | None = None,
    lock_file: Path | None = None,
    tracking_client: Any = None,
    builders: Any = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    record: bool = True,
    pipelines: PipelinesSource | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Verdict:
    """Reproduce ``model@ref`` (an alias or a version number) and return the verdict.

    ``registry``: an open ``keel.registry_client.Registry``; ``tracking_client``: the
    ``MlflowClient`` of the tracking store the trainer logged to (default: the registry's).
    ``signing_key`` signs the rebuilt artifact; ``trust`` (a ``TrustPolicy``) verifies the
    registered one. ``repo``: the git checkout whose code runs (default: the working
    directory); ``code``: its (commit, dirty), default read from git there. ``data``: where
    the training file is now (default: where it was read). ``job``: a ``TrainJob`` to run
    instead of the recorded one (e.g. the job file as it is now). ``work_dir``: scratch
    space (emptied first). ``pipelines``: the model was trained by keel.pipelines — its
    training set is re-materialised from the offline event log (see `rematerialise`) and
    that set's fingerprint is the data link, and the pipelines' own train/evaluate/
    package_sign rebuild the artifact (no keel.trainer MLflow run needed). Raises
    ``NotFoundError`` for an unknown model/alias/version;
    everything else that stops a reproduction is a ``refused`` verdict.
    """
    from keel.artifacts import ArtifactError, TrustPolicy, load_artifact

    if signing_key is None or not hasattr(signing_key, "public_pem"):
        raise InvalidInputError(
            "reproduce needs a signing key (keel.artifacts.SigningKey) for the rebuilt artifact"
        )
    t0 = time.perf_counter()
    repo = (repo or Path.cwd()).resolve()
    mv = resolve_version(registry, model, ref)
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    checks: list[LinkCheck] = []
    state: dict[str, Any] = {"run_id": None}

    def verdict(status: Status, link: str | None, message: str, **kw: Any) -> Verdict:
        v = Verdict(
            model=model,
            version=int(mv.version),
            digest=mv.digest,
            status=status,
            link=link,
            message=message,
            checks=tuple(checks),
            training_run=state["run_id"],
            at=_utc(clock),
            seconds=time.perf_counter() - t0,
            **kw,
        )
        if record:
            _record(registry, v, work_dir)
        return v

    try:
        # -- what was registered ------------------------------------------------------------
        try:
            archive = registry.download_archive(model, int(mv.version), work_dir / "registered")
            registered = load_artifact(archive, trust, framework="numpy")
        except ArtifactError as e:
            raise _Stop(
                "refused",
                "registered artifact",
                f"the registered archive of {model} version {mv.version} does not verify "
                f"against the trust policy: {e}",
            ) from None
        except Exception as e:  # registry/MLflow download failures
            raise _Stop(
                "refused",
                "registered artifact",
                f"cannot download {model} version {mv.version}'s archive: {e}",
            ) from None
        man = registered.manifest
        client = tracking_client if tracking_client is not None else registry.mlflow_client
        if pipelines is not None:
            # 1. the training set, re-materialised from the offline event log ----------------
            rebuilt_set = rematerialise(pipelines, model, mv.digest, work_dir=work_dir, now=clock())
            _check(
                checks,
                "data fingerprint",
                man.training_data_fingerprint,
                rebuilt_set.found,
                "the training set re-materialised from the offline log is not the one this "
                f"model was trained on (pipelines run {rebuilt_set.run_id}). "
                + (rebuilt_set.describe() or "the offline log's content changed since training"),
            )
            state["run_id"] = rebuilt_set.run_id
            if rebuilt_set.as_of and rebuilt_set.changed_sources:
                checks[-1] = LinkCheck(
                    "data fingerprint",
                    True,
                    checks[-1].recorded,
                    checks[-1].found,
                    f"rebuilt as of record time {rebuilt_set.as_of}: rows recorded since in "
                    + ", ".join(rebuilt_set.changed_sources)
                    + " were left out",
                )
            # 2, 3. code version, lock hash ---------------------------------------------------
            _check_code_and_lock(checks, man, repo, code, lock_file)
            # 4, 5. parameters, weights: the pipelines' own train/evaluate/package_sign -------
            rebuilt = _pipelines_rebuild(
                checks,
                pipelines,
                rebuilt_set,
                man,
                work_dir=work_dir,
                now=clock(),
                ray_address=ray_address,
                ray_num_cpus=ray_num_cpus,
            )
        else:
            run = training_run(client, mv.digest)
            if run is None:
                raise _Stop(
                    "refused",
                    "training run",
                    f"no keel.trainer MLflow run records artifact {mv.digest} in this tracking "
                    "store: was it trained by keel.trainer with tracking enabled? (pass the "
                    "trainer's tracking store if it is another one)",
                )
            state["run_id"] = run.info.run_id
            tags, params = dict(run.data.tags), dict(run.data.params)
            spec_text = tags.get("keel.job_spec")
            if not spec_text and job is None:
                raise _Stop(
                    "refused",
                    "job spec",
                    f"training run {run.info.run_id} does not record its job spec (tag "
                    "keel.job_spec; trained by an older keel.trainer): pass the job file with "
                    "--job (its parameters are still checked against the run's)",
                )
            from keel.trainer import InvalidJobError, TrainJob, parse_job

            if spec_text:
                try:
                    recorded_job: TrainJob = parse_job(
                        json.loads(spec_text), where="(keel.job_spec)"
                    )
                except (InvalidJobError, ValueError) as e:
                    raise _Stop(
                        "refused", "job spec", f"recorded job spec is unreadable: {e}"
                    ) from None
            else:
                recorded_job = job
            run_job_spec: TrainJob = job if job is not None else recorded_job

            # 1. data fingerprint ----------------------------------------------------------------
            from keel.trainer import fingerprint

            data_path = Path(data or tags.get("keel.data_path") or recorded_job.data.path)
            recorded_fp = man.training_data_fingerprint
            if not data_path.is_file():
                raise _Stop(
                    "refused",
                    "data fingerprint",
                    f"the training data is gone: {data_path} does not exist (recorded "
                    f"fingerprint {man.training_data_fingerprint}); restore it or pass its new "
                    "location (--data)",
                )
            fp = fingerprint(data_path)
            _check(
                checks,
                "data fingerprint",
                recorded_fp,
                fp,
                f"{data_path} is not the data this model was trained on: its content changed "
                "since training (a different model would be trained from it)",
            )

            # 2. code version, 3. lock hash ----------------------------------------------------
            commit, dirty, lock = _check_code_and_lock(checks, man, repo, code, lock_file)

            # 4. parameters ----------------------------------------------------------------------
            _check_parameters(checks, run_job_spec, params, tags, man)

            # 5. weights -------------------------------------------------------------------------
            from keel.trainer import run_job

            scratch = work_dir / "home"
            runnable = run_job_spec.model_copy(
                update={
                    "data": run_job_spec.data.model_copy(update={"path": data_path}),
                    "export": run_job_spec.export.model_copy(
                        update={"out_dir": work_dir / "artifacts", "signing_key": None}
                    ),
                }
            )
            result = run_job(
                runnable,
                home=scratch,
                registry=builders,
                fresh=True,
                on_event=on_event,
                ray_address=ray_address,
                ray_num_cpus=ray_num_cpus,
                export=True,
                signing_key=signing_key,
                tracking=False,
                code=(commit, dirty),
                lock_file=lock,
                lock=man.dependency_lock_hash if lock is None else None,
            )
            if result.artifact_path is None:
                raise PipelinesError(f"the re-run of {run_job_spec.name!r} exported no artifact")
            rebuilt = load_artifact(
                result.artifact_path,
                TrustPolicy((signing_key.public_pem,)),
                framework="numpy",
            )
        if rebuilt.digest == mv.digest:
            checks.append(LinkCheck("weights", True, mv.digest, rebuilt.digest))
            return verdict(
                "identical",
                None,
                f"{model} version {mv.version} rebuilt byte for byte: {rebuilt.digest}",
                reproduced_digest=rebuilt.digest,
                retrained=True,
            )
        diffs = weight_diffs(registered.tensors, rebuilt.tensors)
        worst = max(diffs.values(), default=0.0)
        if worst > 0:
            detail = ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items() if v > 0)
            checks.append(
                LinkCheck("weights", False, mv.digest, rebuilt.digest, f"max |diff| {detail}")
            )
            return verdict(
                "differs",
                "weights",
                f"retrained with identical inputs, the weights differ (max |diff| per tensor: "
                f"{detail})",
                reproduced_digest=rebuilt.digest,
                weight_diffs=diffs,
                retrained=True,
            )
        from keel.artifacts import diff_manifests

        changes = "; ".join(str(c) for c in diff_manifests(man, rebuilt.manifest))
        checks.append(LinkCheck("weights", True, mv.digest, rebuilt.digest, "all tensors equal"))
        checks.append(LinkCheck("manifest", False, mv.digest, rebuilt.digest, changes))
        return verdict(
            "differs",
            "manifest",
            f"the weights are equal but the manifests differ: {changes}",
            reproduced_digest=rebuilt.digest,
            weight_diffs=diffs,
            retrained=True,
        )
    except _Stop as stop:
        return verdict(stop.status, stop.link, stop.message)


def rematerialise(
    source: PipelinesSource,
    model: str,
    digest: str,
    *,
    work_dir: Path,
    now: datetime,
    max_rows: int = 3,
) -> SetCheck:
    """Rebuild the training set of the pipelines run that produced ``digest`` from the
    offline log, with keel.features' point-in-time build (the same code the run's
    ``build_training_set`` step ran), the recorded feature views and the run's recorded
    parameters (``start``/``end``/``holdout_from``) plus its recorded ``as_of`` (rows
    recorded after it are left out; absent from runs recorded before it existed: the whole
    log), in a scratch home under ``work_dir``.
    Compares its fingerprint with the recorded one; when they differ, names the offline
    datasets whose content changed (against the run's recorded source fingerprints) and,
    when the run's own set file is still there, the first rows that differ.

    Raises `_Stop` (refused) when the provenance or the offline log is gone, (differs) when
    the feature-view definitions changed version."""
    import polars as pl

    from keel.pipelines import Controller, ProvenanceTamperedError, StepContext
    from keel.pipelines.local import LocalExecutors, LocalOptions

    home = Path(source.home).expanduser().resolve()
    db = Path(source.db_path or home / "pipelines" / "pipelines.db")
    if not db.is_file():
        raise _Stop(
            "refused",
            "data fingerprint",
            f"no pipelines database at {db}: the run that built {digest}'s training set is "
            "not on record here (give the database the controller used)",
        )
    ctl = Controller(None, clock=lambda: now, db_path=db)
    try:
        lineage = ctl.lineage(model, digest)
    except NotFoundError as e:
        raise _Stop("refused", "data fingerprint", f"pipelines provenance: {e}") from None
    except ProvenanceTamperedError as e:
        raise _Stop(
            "refused", "data fingerprint", f"the pipelines provenance fails verification: {e}"
        ) from None
    finally:
        ctl.close()
    by_kind = {e.kind: e.record for e in lineage.entries}
    params = dict(by_kind["trigger"].get("params") or {})
    recorded = dict(by_kind["step:build_training_set"]["output"])
    as_of = recorded.get("as_of")
    if as_of:  # the log as the run knew it: rows recorded since are left out
        params["as_of"] = as_of
    options = dict(source.options)
    options.setdefault("offline_root", str(home / "offline"))
    try:
        opts = LocalOptions.parse(options)
    except PipelinesError as e:
        raise _Stop("refused", "data fingerprint", f"pipelines options: {e}") from None
    scratch = Path(work_dir) / "pipelines-home"
    ex = LocalExecutors(home=scratch, bus=None, options=opts)  # type: ignore[arg-type]
    ctx = StepContext(
        lineage.run_id,
        model,
        "build_training_set",
        params,
        lineage.code_version,
        lineage.lock_hash,
        {},
        now,
    )
    try:
        views_now = {v.name: v.version for v in ex.views}
        sources_now = dict(ex.source_fingerprints(ctx))
    except PipelinesError as e:
        raise _Stop("refused", "data fingerprint", f"the offline log is gone: {e}") from None
    views_rec = dict(recorded.get("feature_views") or {})
    if views_now != views_rec:
        raise _Stop(
            "differs",
            "data fingerprint",
            f"the feature-view definitions changed since the run: recorded {views_rec}, now "
            f"{views_now} ({opts.feature_definitions}); check out the recorded code",
        )
    rec_sources = dict(lineage.sources)
    changed = tuple(
        sorted(
            k
            for k in set(rec_sources) | set(sources_now)
            if rec_sources.get(k) != sources_now.get(k)
        )
    )
    try:
        built = dict(ex.build_training_set(ctx))
    except PipelinesError as e:
        raise _Stop(
            "refused", "data fingerprint", f"cannot re-materialise the training set: {e}"
        ) from None
    path = Path(built["path"])
    found = str(built["fingerprint"])
    same = found == str(recorded["fingerprint"])
    rows: tuple[str, ...] = ()
    old_set = Path(str(recorded.get("path", ""))) / "set.parquet"
    if not same and old_set.is_file():
        keys = [opts.time_column, *sorted({k for v in ex.views for k in v.join_keys})]
        rows = _row_diff(
            pl.read_parquet(old_set), pl.read_parquet(path / "set.parquet"), keys, max_rows
        )
    return SetCheck(
        same,
        str(recorded["fingerprint"]),
        found,
        lineage.run_id,
        path,
        int(built["rows"]),
        changed,
        rows,
        views_now,
        lineage.trainer_run,
        built,
        lineage,
        str(as_of) if as_of else None,
    )


def _row_diff(old: Any, new: Any, keys: list[str], limit: int) -> tuple[str, ...]:
    """The first rows of ``new`` not in ``old`` (all columns compared), each described by
    its key columns and the columns whose value differs from ``old``'s row with that key."""
    import polars as pl

    if old.columns != new.columns:
        return (f"columns differ: recorded {old.columns}, now {new.columns}",)
    cols = new.columns
    only_new = new.join(old, on=cols, how="anti", nulls_equal=True).head(limit)
    only_old = old.join(new, on=cols, how="anti", nulls_equal=True)
    out = []
    for row in only_new.iter_rows(named=True):
        key = ", ".join(f"{k}={row[k]}" for k in keys)
        match = only_old.filter(pl.all_horizontal([pl.col(k) == row[k] for k in keys])).head(1)
        if match.height:
            was = match.row(0, named=True)
            diff = ", ".join(
                f"{c} recorded {was[c]!r}, now {row[c]!r}" for c in cols if was[c] != row[c]
            )
            out.append(f"[{key}] {diff}")
        else:
            out.append(f"[{key}] is new")
    if not out and only_old.height:
        r = only_old.row(0, named=True)
        out.append("[" + ", ".join(f"{k}={r[k]}" for k in keys) + "] is gone")
    return tuple(out)


def _check(checks: list[LinkCheck], link: str, recorded: str, found: str, why: str) -> None:
    same = recorded == found
    checks.append(LinkCheck(link, same, recorded, found, "" if same else why))
    if not same:
        raise _Stop("differs", link, f"{link} differs: recorded {recorded}, found {found}: {why}")


def _pipelines_rebuild(
    checks: list[LinkCheck],
    source: PipelinesSource,
    rebuilt_set: SetCheck,
    manifest: Any,
    *,
    work_dir: Path,
    now: datetime,
    ray_address: str | None,
    ray_num_cpus: int | None,
) -> Any:
    """Links 4 and 5 of a pipelines-trained model: the pipelines' own ``train``,
    ``evaluate`` and ``package_sign`` (keel.pipelines.local) re-run in a scratch home on the
    re-materialised set, with step contexts rebuilt from the run's provenance (its params,
    code version, lock hash; each step's inputs as the controller passes them, JSON round
    trip included). The parameters link: the job the given options train on the recorded
    set must have the recorded job digest (seed, model, data, train settings) and the
    manifest's architecture. Returns the rebuilt artifact (loaded, numpy)."""
    from keel.artifacts import load_artifact
    from keel.events import open_bus
    from keel.pipelines import StepContext
    from keel.pipelines._canonical import canonical
    from keel.pipelines.local import LocalExecutors, LocalOptions

    lineage = rebuilt_set.lineage
    by_kind = {e.kind: e.record for e in lineage.entries}
    params = dict(by_kind["trigger"].get("params") or {})
    rec_bts = dict(by_kind["step:build_training_set"]["output"])
    rec_train = dict(by_kind["step:train"]["output"])
    options = dict(source.options)
    options.setdefault("offline_root", str(Path(source.home).expanduser().resolve() / "offline"))
    # where it runs, not what it computes: no tracking, no registry, a scratch signing key
    # (the digest covers the manifest, not the signature); Ray as given
    run_options = {
        k: v
        for k, v in options.items()
        if k not in ("signing_key", "trusted_keys", "registry_tracking_uri", "registry_db_url")
    }
    trainer = {**dict(options.get("trainer") or {}), "tracking": False}
    if ray_address is not None:
        trainer["ray_address"] = ray_address
    if ray_num_cpus is not None:
        trainer["ray_num_cpus"] = ray_num_cpus
    run_options["trainer"] = trainer
    try:
        opts, run_opts = LocalOptions.parse(options), LocalOptions.parse(run_options)
    except PipelinesError as e:
        raise _Stop("refused", "parameters", f"pipelines options: {e}") from None

    def ctx(step: str, inputs: Mapping[str, Mapping[str, Any]]) -> StepContext:
        return StepContext(
            lineage.run_id,
            lineage.model,
            step,
            params,
            lineage.code_version,
            lineage.lock_hash,
            inputs,
            now,
        )

    def stored(out: Mapping[str, Any]) -> dict[str, Any]:  # as the controller stores it
        return dict(json.loads(canonical(dict(out))))

    # 4. parameters ---------------------------------------------------------------------------
    scratch = work_dir / "pipelines-rebuild"
    no_bus: Any = None  # the job is all this one builds
    checker = LocalExecutors(home=scratch / "check", bus=no_bus, options=opts)
    job = checker._job(ctx("train", {"build_training_set": rec_bts}))
    rec_job = str(rec_train.get("job_digest", ""))
    if not rec_job:
        raise _Stop(
            "refused",
            "parameters",
            f"pipelines run {lineage.run_id}'s train step records no job digest (not trained by "
            "keel.pipelines.local's executors): its parameters are not on record",
        )
    diffs = []
    if job.digest() != rec_job:
        diffs.append(
            f"the trainer options build job {job.digest()} on the recorded set, the run trained "
            f"{rec_job} (options.trainer: seed, hidden, epochs, batch_size, lr, weight_decay, "
            "validation_fraction; options.features, label_column)"
        )
    arch = dict(manifest.architecture.args)
    arch.pop("out_activation", None)
    if arch != dict(job.model.args):
        diffs.append(f"architecture: the artifact has {arch}, the options build {job.model.args}")
    summary = f"job {rec_job}, seed {job.seed}, {len(params)} run param(s)"
    if diffs:
        detail = "; ".join(diffs)
        checks.append(LinkCheck("parameters", False, summary, f"job {job.digest()}", detail))
        raise _Stop("differs", "parameters", f"parameters differ from the run's: {detail}")
    checks.append(LinkCheck("parameters", True, summary, summary))

    # 5. weights: train -> evaluate -> package_sign in the scratch home ----------------------
    scratch.mkdir(parents=True, exist_ok=True)
    bus = open_bus(f"sqlite://{scratch / 'events.db'}")
    ex = LocalExecutors(home=scratch / "home", bus=bus, options=run_opts)
    try:
        bts = stored(rebuilt_set.output)
        tr = stored(ex.train(ctx("train", {"build_training_set": bts})))
        ev = stored(ex.evaluate(ctx("evaluate", {"build_training_set": bts, "train": tr})))
        pkg = ex.package_sign(
            ctx("package_sign", {"build_training_set": bts, "train": tr, "evaluate": ev})
        )
        return load_artifact(Path(pkg["archive"]), ex.signing()[1], framework="numpy")
    finally:
        ex.close()
        bus.close()


def _check_code_and_lock(
    checks: list[LinkCheck],
    man: Any,
    repo: Path,
    code: tuple[str, bool] | None,
    lock_file: Path | None,
) -> tuple[str, bool, Path | None]:
    """Links 2 and 3: the checkout's commit and the dependency lock vs the manifest's;
    returns (commit, dirty, lockfile or None when the record is an environment hash)."""
    # 2. code version --------------------------------------------------------------------
    recorded_code = f"{man.code.commit}{'+dirty' if man.code.dirty else ''}"
    # the pipelines record a controller's code version, "<commit>+dirty" from a dirty tree
    if man.code.dirty or man.code.commit.endswith("+dirty"):
        raise _Stop(
            "refused",
            "code version",
            "the model was trained from uncommitted changes on top of "
            f"{man.code.commit.removesuffix('+dirty')}: those changes were not recorded, so "
            "the code is gone",
        )
    if not commit_in_history(repo, man.code.commit):
        raise _Stop(
            "refused",
            "code version",
            f"code version {man.code.commit} is not in the git history of {repo}: fetch "
            "it (or run reproduce from a clone that has it)",
        )
    from keel.trainer import code_version

    commit, dirty = code if code is not None else code_version(repo)
    _check(
        checks,
        "code version",
        recorded_code,
        f"{commit}{'+dirty' if dirty else ''}",
        f"this checkout is not the recorded code: check out {man.code.commit} "
        f"(git worktree add ../keel-{man.code.commit[:12]} {man.code.commit}) and run "
        "reproduce there, with no uncommitted changes",
    )

    # 3. lock hash -----------------------------------------------------------------------
    from keel.trainer import environment_hash, lock_hash

    lock = find_lock(repo, lock_file)
    if man.dependency_lock_hash.startswith("dists-sha256:"):
        # trained outside a checkout: the record is the installed distributions' hash
        lock = None
        _check(
            checks,
            "lock hash",
            man.dependency_lock_hash,
            environment_hash(),
            "the installed distributions differ from those that trained the model (it "
            "was trained without a lockfile, from a pex or wheel install): reproduce "
            "with the same build",
        )
    else:
        if man.dependency_lock_hash and (lock is None or not lock.is_file()):
            raise _Stop(
                "refused",
                "lock hash",
                "no dependency lockfile found "
                f"({lock or f'3rdparty/python/default.lock above {repo}'}"
                f"); the model was trained with lock {man.dependency_lock_hash}",
            )
        now_lock = lock_hash(lock_file=lock) if lock is not None else ""
        _check(
            checks,
            "lock hash",
            man.dependency_lock_hash,
            now_lock,
            f"the dependency lock differs ({lock}): the environment that trained the "
            "model is gone; install the one locked at the recorded commit",
        )

    return commit, dirty, lock


def _check_parameters(
    checks: list[LinkCheck],
    job: Any,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    manifest: Any,
) -> None:
    from keel.trainer import job_params

    now = {k: v for k, v in job_params(job).items() if k not in _LOCATION_PARAMS}
    rec = {k: v for k, v in params.items() if k not in _LOCATION_PARAMS}
    diffs = [
        f"{k}: recorded {rec.get(k, '(absent)')}, now {now.get(k, '(absent)')}"
        for k in sorted(set(now) | set(rec))
        if now.get(k) != rec.get(k)
    ]
    workers = tags.get("keel.num_workers")
    if workers is not None and str(job.scaling.num_workers) != workers:
        diffs.append(f"num_workers: recorded {workers}, now {job.scaling.num_workers}")
    arch = {"builder": manifest.architecture.builder, "args": dict(manifest.architecture.args)}
    if arch != {"builder": job.model.builder, "args": dict(job.model.args)}:
        diffs.append(f"architecture: the artifact has {arch}, the job builds {job.model}")
    summary = f"seed {job.seed}, {job.scaling.num_workers} worker(s), {len(now)} params"
    if not diffs:
        checks.append(LinkCheck("parameters", True, summary, summary))
        return
    detail = "; ".join(diffs)
    checks.append(LinkCheck("parameters", False, "the training run's", "the job to run", detail))
    raise _Stop("differs", "parameters", f"parameters differ from the training run's: {detail}")


def _record(registry: Any, v: Verdict, work_dir: Path) -> None:
    """The verdict as ``verdict.json`` in the work dir and the version's ``keel.reproduce``
    tag (the evidence pack reads it); a failed tag write is logged, the verdict stands."""
    body = v.to_dict()
    (work_dir / "verdict.json").write_text(json.dumps(body, indent=2, sort_keys=True))
    short = {k: body[k] for k in ("status", "link", "reproduced_digest", "at", "training_run")}
    short["message"] = v.message[:2000]
    try:
        registry.mlflow_client.set_model_version_tag(
            v.model, str(v.version), VERDICT_TAG, json.dumps(short, sort_keys=True)
        )
    except Exception as e:  # MLflow errors: the verdict stands, the tag is missing; say so
        logging.getLogger(__name__).warning(
            "could not tag %s version %s with the reproduce verdict: %s", v.model, v.version, e
        )


def verdict_from_tag(text: str | None) -> dict[str, Any] | None:
    """The ``keel.reproduce`` tag as a mapping (None when absent or unreadable)."""
    if not text:
        return None
    try:
        out = json.loads(text)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


__all__ = [
    "LINKS",
    "OPTIONS_FILE",
    "VERDICT_TAG",
    "LinkCheck",
    "PipelinesSource",
    "SetCheck",
    "Verdict",
    "commit_in_history",
    "find_lock",
    "parse_target",
    "read_options",
    "record_options",
    "rematerialise",
    "reproduce",
    "resolve_version",
    "training_run",
    "verdict_from_tag",
    "weight_diffs",
]
