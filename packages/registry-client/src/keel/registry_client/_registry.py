"""The registry: idempotent registration keyed by artifact digest, audited alias moves.

MLflow is the store (models Keel registers are ordinary MLflow registered models, versions,
tags and aliases); Keel adds, in its own tables beside MLflow's (see `_tables`):
* a digest -> version claim, so a retried or concurrent `register` of the same artifact
  returns the existing version instead of creating a second one;
* an append-only, hash-chained audit entry with a decision record for every alias move.

Crash windows (each recovers on the next call): an intent row is written before MLflow
creates a version, so a version created but not yet claimed is found again by its
`keel.digest` tag (searched only for digests with such a pending intent); an audit entry is written *before* the alias moves, so
the log never misses a move (a crash between the two leaves an entry whose move did not
happen: `promote` again to re-apply it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.registry_client._artifact import (
    TAG_DIGEST,
    Registrable,
    canonical_digest,
    check_fields,
    check_files,
    version_tags,
)
from keel.registry_client._audit import (
    AuditEntry,
    AuditProblem,
    Decision,
    check_alias,
    format_head,
    next_entry,
    parse_head,
    rollback_target,
    verify_chain,
)
from keel.registry_client._errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from keel.registry_client._tables import PENDING, PostgresTables, SqliteTables, Tables

if TYPE_CHECKING:
    from keel.artifacts import BuiltArtifact, TrustPolicy, VerifiedArtifact

EXPERIMENT = "keel-registry"
ARTIFACT_DIR = "keel"  # the run's artifact folder holding the archive and manifest
TAG_AUDIT_HEAD = "keel.audit_head"
ALIAS_MOVED = "model.alias_moved"


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version as Keel reads it back from MLflow."""

    name: str
    version: int
    digest: str
    source: str
    run_id: str
    tags: Mapping[str, str]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    aliases: Mapping[str, int]
    latest_version: int | None


@dataclass(frozen=True)
class AliasMoved:
    """The `model.alias_moved` event payload handed to the injected publisher."""

    model: str
    alias: str
    from_version: int | None
    to_version: int
    action: str
    audit_seq: int
    audit_hash: str
    decision: Decision
    time: str
    type: str = field(default=ALIAS_MOVED)

    @property
    def event_id(self) -> str:
        """A stable id for this move (its audit entry's hash): re-sending the same move, e.g.
        after a crash between the alias move and the publish, is deduplicated by the bus."""
        return f"{ALIAS_MOVED}:{self.audit_hash}"

    def to_json(self) -> dict[str, Any]:
        """The event payload: JSON types only."""
        return {
            "model": self.model,
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "action": self.action,
            "audit_seq": self.audit_seq,
            "audit_hash": self.audit_hash,
            "decision": {
                "who": self.decision.who,
                "why": self.decision.why,
                "evidence_digest": self.decision.evidence_digest,
            },
            "time": self.time,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AliasMoved:
        try:
            return cls(
                model=str(d["model"]),
                alias=str(d["alias"]),
                from_version=None if d["from_version"] is None else int(d["from_version"]),
                to_version=int(d["to_version"]),
                action=str(d["action"]),
                audit_seq=int(d["audit_seq"]),
                audit_hash=str(d["audit_hash"]),
                decision=Decision(**d["decision"]),
                time=str(d["time"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInputError(f"not a {ALIAS_MOVED} payload: {e}") from None


@dataclass(frozen=True)
class AuditReport:
    entries: int
    models: int
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


Publisher = Callable[[AliasMoved], None]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Translate MLflow's exceptions at the boundary."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        msg = f"{what}: {e.message if hasattr(e, 'message') else e}"
        # MLflow reports an unset alias as an invalid parameter "... not found".
        if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower():
            raise NotFoundError(msg) from None
        if code == "RESOURCE_ALREADY_EXISTS":
            raise ConflictError(msg) from None
        if code == "INVALID_PARAMETER_VALUE":
            raise InvalidInputError(msg) from None
        raise UnavailableError(msg) from None
    except (OSError, ConnectionError) as e:
        raise UnavailableError(f"{what}: {e}") from None


class Registry:
    """Keel's model registry on one MLflow store. Use one instance per thread."""

    def __init__(
        self,
        client: Any,
        tables: Tables,
        *,
        artifact_location: str | None,
        clock: Clock = _utc_now,
        publisher: Publisher | None = None,
    ) -> None:
        self._client = client
        self._tables = tables
        self._artifact_location = artifact_location
        self._clock = clock
        self._publisher = publisher
        self._experiment_id: str | None = None
        self._known_models: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------
    @property
    def mlflow_client(self) -> Any:
        """The underlying `mlflow.MlflowClient` (reads only: writes bypass Keel's guarantees)."""
        return self._client

    def close(self) -> None:
        self._tables.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_lock(self, model: str) -> contextlib.AbstractContextManager[None]:
        return self._tables.lock(model) if self._tables.serialize_all else contextlib.nullcontext()

    def _experiment(self) -> str:
        if self._experiment_id is None:
            with _mlflow_errors("keel-registry experiment"), self._tables.lock(EXPERIMENT):
                exp = self._client.get_experiment_by_name(EXPERIMENT)
                if exp is None:
                    self._experiment_id = self._client.create_experiment(
                        EXPERIMENT, artifact_location=self._artifact_location
                    )
                else:
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- registration ---------------------------------------------------------------------
    def register(
        self,
        artifact: Registrable | BuiltArtifact | VerifiedArtifact | str | Path,
        *,
        trust: TrustPolicy | None = None,
        parent_version: int | None = None,
    ) -> ModelVersionInfo:
        """Register `artifact` as a new version of its model, once.

        `artifact` is a keel.artifacts artifact — an archive or directory path, a
        `BuiltArtifact` or a `VerifiedArtifact` — verified against `trust` (signature,
        manifest, every file hash) before anything is written, its name, digest and lineage
        tags taken from the verified manifest (`parent_version` is the caller's); an artifact
        that fails is refused with `UnverifiedArtifactError`. Or it is any `Registrable`
        (e.g. `RegistrableArtifact`), whose fields are taken as given (`trust` and
        `parent_version` must then be left unset).

        Keyed by the artifact digest: a retry, or a concurrent call with the same artifact from
        any process, returns the version already registered. The version carries the archive
        and manifest as MLflow artifacts and the lineage tags (`keel.digest`, ...).
        """
        from keel.registry_client._keel_artifact import is_keel_artifact, verified_registrable

        if is_keel_artifact(artifact):
            with verified_registrable(artifact, trust, parent_version=parent_version) as r:
                return self._register(r)
        if trust is not None or parent_version is not None:
            raise InvalidInputError(
                "register: trust and parent_version apply to keel.artifacts artifacts; a "
                "Registrable carries its own parent_version"
            )
        if not isinstance(artifact, Registrable):
            raise InvalidInputError(
                f"register: cannot register a {type(artifact).__name__}; give a keel.artifacts "
                "archive path, BuiltArtifact or VerifiedArtifact, or a RegistrableArtifact"
            )
        return self._register(artifact)

    def _register(self, artifact: Registrable) -> ModelVersionInfo:
        check_fields(artifact)
        check_files(artifact)
        name, digest = artifact.name, canonical_digest(artifact.digest)
        if hit := self._tables.claimed(name, digest):
            return self.get_version(name, hit)
        with self._write_lock(name):
            if self._tables.serialize_all and (hit := self._tables.claimed(name, digest)):
                return self.get_version(name, hit)
            run_id, source = self._upload(artifact)  # outside the per-model lock on PostgreSQL
            with self._tables.lock(name):
                state = self._tables.claimed(name, digest)
                # Only an intent row without a version (a crashed registration) needs the search.
                version = state or (
                    self._find_by_digest(name, digest) if state == PENDING else None
                )
                if version is not None:
                    with _mlflow_errors(f"register {name}"):
                        self._client.delete_run(run_id)  # a duplicate's upload is not needed
                    if not state:
                        self._tables.claim(name, digest, version)
                    return self.get_version(name, version)
                if state is None:
                    self._tables.intend(name, digest, run_id)
                with _mlflow_errors(f"register {name}"):
                    self._ensure_model(name)
                    mv = self._client.create_model_version(
                        name, source, run_id=run_id, tags=version_tags(artifact)
                    )
                self._tables.claim(name, digest, int(mv.version))
        return self._info(mv, ())

    def _upload(self, a: Registrable) -> tuple[str, str]:
        with _mlflow_errors(f"upload {a.name}"):
            run = self._client.create_run(
                self._experiment(),
                tags={
                    TAG_DIGEST: canonical_digest(a.digest),
                    "mlflow.runName": f"register-{a.name}",
                },
            )
            run_id = run.info.run_id
            self._client.log_artifact(run_id, str(a.archive), ARTIFACT_DIR)
            self._client.log_artifact(run_id, str(a.manifest), ARTIFACT_DIR)
            if (model_dir := getattr(a, "mlflow_model", None)) is not None:
                # MLmodel + code file: the folder is an MLflow model (models:/ URIs load it)
                self._client.log_artifacts(run_id, str(model_dir), ARTIFACT_DIR)
            self._client.set_terminated(run_id)
        return run_id, f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        if name in self._known_models:
            return
        try:
            self._client.create_registered_model(name, tags={"keel.managed": "true"})
        except MlflowException as e:
            if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        self._known_models.add(name)

    def _find_by_digest(self, name: str, digest: str) -> int | None:
        with _mlflow_errors(f"search {name}"):
            found = self._client.search_model_versions(
                f"name = '{name}' and tags.`{TAG_DIGEST}` = '{digest}'"
            )
        versions = sorted(int(v.version) for v in found)
        return versions[0] if versions else None

    # -- reads ----------------------------------------------------------------------------
    def _info(self, mv: Any, aliases: tuple[str, ...] | None = None) -> ModelVersionInfo:
        tags = dict(mv.tags or {})
        return ModelVersionInfo(
            name=mv.name,
            version=int(mv.version),
            digest=tags.get(TAG_DIGEST, ""),
            source=mv.source or "",
            run_id=mv.run_id or "",
            tags=tags,
            aliases=tuple(aliases if aliases is not None else (getattr(mv, "aliases", None) or ())),
        )

    def get_version(self, name: str, version: int) -> ModelVersionInfo:
        with _mlflow_errors(f"{name} version {version}"):
            return self._info(self._client.get_model_version(name, str(int(version))))

    def get_by_alias(self, name: str, alias: str) -> ModelVersionInfo:
        """The version `name@alias` points at; NotFoundError if the alias is not set."""
        check_alias(alias)
        with _mlflow_errors(f"{name}@{alias}"):
            return self._info(self._client.get_model_version_by_alias(name, alias))

    def aliases(self, name: str) -> dict[str, int]:
        with _mlflow_errors(f"model {name}"):
            rm = self._client.get_registered_model(name)
        return {a: int(v) for a, v in (rm.aliases or {}).items()}

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """All versions of `name`, oldest first (aliases read from the registered model)."""
        by_version: dict[int, list[str]] = {}
        for a, v in self.aliases(name).items():
            by_version.setdefault(v, []).append(a)
        with _mlflow_errors(f"versions of {name}"):
            found = _all_pages(
                lambda token: self._client.search_model_versions(
                    f"name = '{name}'", max_results=10_000, page_token=token
                )
            )
        out = [self._info(mv, tuple(sorted(by_version.get(int(mv.version), [])))) for mv in found]
        return sorted(out, key=lambda i: i.version)

    def models(self) -> list[ModelInfo]:
        with _mlflow_errors("list models"):
            found = _all_pages(
                lambda token: self._client.search_registered_models(
                    max_results=1000, page_token=token
                )
            )
        out = []
        for rm in found:
            latest = [int(v.version) for v in (rm.latest_versions or [])]
            out.append(
                ModelInfo(
                    name=rm.name,
                    aliases={a: int(v) for a, v in (rm.aliases or {}).items()},
                    latest_version=max(latest) if latest else None,
                )
            )
        return sorted(out, key=lambda m: m.name)

    def download(self, name: str, version: int, dst: Path) -> Path:
        """Download the version's archive and manifest into `dst`; returns the folder."""
        mv = self.get_version(name, version)
        with _mlflow_errors(f"download {name} version {version}"):
            self._client.download_artifacts(mv.run_id, ARTIFACT_DIR, str(dst))
        return dst / ARTIFACT_DIR

    def download_archive(self, name: str, version: int, dst: Path) -> Path:
        """Download the version's folder into `dst` and return its signed archive (the one
        file that is not part of the MLflow model wrapper: MLmodel, code file, manifest,
        requirements)."""
        from keel.registry_client._mlflow_model import RESERVED_NAMES

        folder = self.download(name, version, dst)
        files = [p for p in folder.iterdir() if p.is_file() and p.name not in RESERVED_NAMES]
        if len(files) != 1:
            raise NotFoundError(
                f"{name} version {version}: expected one archive in its registered folder, "
                f"found {sorted(p.name for p in files)} (registered by an older Keel?)"
            )
        return files[0]

    # -- aliases --------------------------------------------------------------------------
    def promote(self, name: str, alias: str, version: int, decision: Decision) -> AuditEntry:
        """Point `name@alias` at `version`, recording the decision in the audit log."""
        check_alias(alias)
        if not isinstance(decision, Decision):
            raise InvalidInputError("promote: a Decision(who, why, evidence_digest) is required")
        self.get_version(name, version)  # NotFoundError before anything is written
        return self._move(name, alias, "promote", lambda entries, current: int(version), decision)

    def rollback(self, name: str, alias: str, decision: Decision) -> AuditEntry:
        """Point `name@alias` back at its previous holder (from the audit log)."""
        check_alias(alias)
        if not isinstance(decision, Decision):
            raise InvalidInputError("rollback: a Decision(who, why, evidence_digest) is required")

        def target(entries: list[AuditEntry], current: int | None) -> int:
            holder, previous = rollback_target(entries, name, alias)
            if current != holder:
                raise ConflictError(
                    f"{name}@{alias} points at {current} in MLflow but the audit log says {holder}: "
                    "the alias was moved outside Keel; promote explicitly"
                )
            return previous

        return self._move(name, alias, "rollback", target, decision)

    def _move(
        self,
        name: str,
        alias: str,
        action: str,
        target: Callable[[list[AuditEntry], int | None], int],
        decision: Decision,
    ) -> AuditEntry:
        with self._tables.lock(name):
            entries = self._tables.entries(name)
            current = self.aliases(name).get(alias)
            if action == "promote" and (done := _already_promoted(entries, alias, current, target)):
                # Idempotent re-run: the log already records this move. Finish it if a crash
                # left it half-applied (entry written, alias not moved), and re-send its event
                # with the same id (a crash may have come before the publish), append nothing.
                if current != done.to_version:
                    self._apply(name, alias, done, head=done is entries[-1])
                self._publish(done)
                return done
            to_version = target(entries, current)
            entry = next_entry(
                entries[-1] if entries else None,
                model=name,
                time=self._clock().astimezone(UTC).isoformat(),
                action=action,
                alias=alias,
                from_version=current,
                to_version=to_version,
                decision=decision,
            )
            self._tables.append(entry)  # audit first: the log never misses a move
            self._apply(name, alias, entry, head=True)
        self._publish(entry)
        return entry

    def _apply(self, name: str, alias: str, entry: AuditEntry, *, head: bool) -> None:
        with _mlflow_errors(f"{entry.action} {name}@{alias}"):
            self._client.set_registered_model_alias(name, alias, str(entry.to_version))
            if head:
                self._client.set_registered_model_tag(name, TAG_AUDIT_HEAD, format_head(entry))

    def _publish(self, entry: AuditEntry) -> None:
        if self._publisher is None:
            return
        moved = AliasMoved(
            model=entry.model,
            alias=entry.alias,
            from_version=entry.from_version,
            to_version=entry.to_version,
            action=entry.action,
            audit_seq=entry.seq,
            audit_hash=entry.hash,
            decision=entry.decision,
            time=entry.time,
        )
        try:
            self._publisher(moved)
        except Exception as e:  # the publisher is the caller's: translate whatever it raises
            raise UnavailableError(
                f"{entry.model}@{entry.alias} moved to {entry.to_version} (audit seq "
                f"{entry.seq}) but publishing {ALIAS_MOVED} failed: {type(e).__name__}: {e}. "
                "Re-run the same promote to re-send it (same event id, deduplicated)"
            ) from e

    # -- audit ----------------------------------------------------------------------------
    def audit(self, name: str) -> list[AuditEntry]:
        """`name`'s alias moves, oldest first."""
        return self._tables.entries(name)

    def audited_models(self) -> list[str]:
        return self._tables.audited_models()

    def verify_audit(self, name: str | None = None) -> AuditReport:
        """Check every chain (or `name`'s): edited, reordered or deleted entries are problems."""
        if name is not None:
            names = [name]
        else:  # a model whose whole log was deleted still has its head tag in MLflow
            heads = {m.name for m in self.models() if self._head(m.name) is not None}
            names = sorted(set(self._tables.audited_models()) | heads)
        problems: list[AuditProblem] = []
        total = 0
        for n in names:
            entries = self._tables.entries(n)
            total += len(entries)
            problems.extend(verify_chain(n, entries, self._head(n)))
        return AuditReport(entries=total, models=len(names), problems=tuple(problems))

    def _head(self, name: str) -> tuple[int, str] | None:
        try:
            with _mlflow_errors(f"model {name}"):
                rm = self._client.get_registered_model(name)
        except NotFoundError:
            return None
        return parse_head((rm.tags or {}).get(TAG_AUDIT_HEAD))


def _already_promoted(
    entries: list[AuditEntry],
    alias: str,
    current: int | None,
    target: Callable[[list[AuditEntry], int | None], int],
) -> AuditEntry | None:
    """The alias's last logged move if promoting would repeat it: the move went to the same
    version and the alias holds it, or it was a promotion whose alias move a crash prevented
    (the alias is still where that move started)."""
    last = next((e for e in reversed(entries) if e.alias == alias), None)
    if last is None or last.to_version != target(entries, current):
        return None
    if current == last.to_version:
        return last
    return last if last.action == "promote" and current == last.from_version else None


def _all_pages(fetch: Callable[[str | None], Any]) -> list[Any]:
    out: list[Any] = []
    token: str | None = None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def open_registry(
    home: Path | str | None = None,
    *,
    tracking_uri: str | None = None,
    db_url: str | None = None,
    clock: Clock = _utc_now,
    publisher: Publisher | None = None,
) -> Registry:
    """Open the registry.

    Embedded (default): `open_registry(home)` keeps MLflow's SQL store in
    `home/mlflow.db` (`sqlite:///`) and artifacts under `home/mlartifacts`; no server.
    Real service: `open_registry(tracking_uri="http://host:port", db_url="postgresql://...")`
    talks to an `mlflow server` and keeps Keel's tables in the server's PostgreSQL database.
    `publisher` receives an `AliasMoved` after every alias move (e.g. a keel.events bus
    publish, wired by the caller).
    """
    if tracking_uri is None:
        if home is None:
            raise InvalidInputError(
                "open_registry: give `home` (embedded) or `tracking_uri` + `db_url`"
            )
        root = Path(home).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        db = root / "mlflow.db"
        tables: Tables = SqliteTables(db)
        uri = f"sqlite:///{db}"
        artifact_location: str | None = (root / "mlartifacts").as_uri()
    else:
        if not tracking_uri.startswith(("http://", "https://")):
            raise InvalidInputError(
                f"tracking_uri {tracking_uri!r}: expected the server's http(s):// URL"
            )
        if not db_url or not db_url.startswith(("postgresql", "postgres://")):
            raise InvalidInputError(
                "db_url: the MLflow server's PostgreSQL database URL is required with tracking_uri "
                "(Keel keeps its claims and audit log there)"
            )
        tables = PostgresTables(db_url)
        uri = tracking_uri
        artifact_location = None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    if isinstance(tables, SqliteTables):
        with tables.lock(""), _mlflow_errors(f"open {uri}"):
            client.search_experiments(max_results=1)  # create/upgrade MLflow's tables, once
    return Registry(
        client, tables, artifact_location=artifact_location, clock=clock, publisher=publisher
    )
