"""The model-risk evidence pack: everything a validator asks about one registered version,
assembled from the stored records, as one JSON document and one self-contained HTML page.

    from keel.pipelines.evidence import build_pack, write_pack

    pack = build_pack(registry, "fraud", "champion", ledger=ApprovalLedger(path),
                      card=load_card(text), provenance_db=home / "pipelines" / "pipelines.db",
                      generated_at=clock())
    json_path, html_path, digest = write_pack(pack, out_dir)

Sources, each named in the pack (``source``: the record kind and id or digest it came from):
the registry (version, digest, signer, aliases, the hash-chained alias audit log and its
verification), the signed artifact's manifest (read from the registered archive, verified
against ``trust`` when given), the keel.trainer MLflow run that exported the digest (params,
final metrics, data fingerprint, rows, code version, lock hash, worker count), the
approvals ledger (each decision with its ledger ``seq``/``hash``; the chain verified), the
model card (tier, owner, intended use, fairness by group, attributions, limitations) and
the pipelines provenance chain when a pipelines run produced the digest (trigger/drift
evidence, gate results, lineage, `keel provenance verify`'s result), and the last
``keel reproduce`` verdict (the version's ``keel.reproduce`` tag). What is not available is
listed under ``absent`` with the reason — never an error. Nothing is computed here that is
not in a record: the pack is a view, so every number in it can be traced.

The pack's digest (SHA-256 of its canonical JSON) is what a promotion passes as the
``Decision.evidence_digest`` — which puts it in the registry's audit log — and ``record_pack``
also stores it as the version's ``keel.evidence_pack`` tag. ``promote_with_pack`` is that
sequence (build_pack → write_pack → promote → record_pack), idempotent on a key; the
pipelines' promotion to ``champion`` runs it. ``verify_pack`` checks a pack file against the
registry's records (``keel governance pack --verify``).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keel.pipelines._errors import InvalidInputError, NotFoundError, PipelinesError

PACK_SCHEMA = "keel.evidence_pack"
PACK_SCHEMA_VERSION = 1
PACK_TAG = "keel.evidence_pack"
CARD_FILE = "model_card.json"  # the card keel.pipelines packages inside its artifacts
# Said of every pack: what Keel's records do not establish.
PLATFORM_LIMITATIONS = (
    "Bit-exact reproduction is established for CPU training only; GPU training is not "
    "claimed to be bitwise reproducible (kernels, library versions and bf16 autocast differ).",
    "Approver identities are strings recorded in the approvals ledger, not bound to an "
    "identity provider.",
)


def _src(kind: str, ident: str, **more: Any) -> dict[str, Any]:
    return {"kind": kind, "id": ident, **more}


def canonical(pack: Mapping[str, Any]) -> bytes:
    return json.dumps(
        pack, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def pack_digest(pack: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(pack)).hexdigest()


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        raise InvalidInputError("generated_at must be timezone-aware (UTC)")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_pack(
    registry: Any,
    model: str,
    ref: str,
    *,
    generated_at: datetime,
    ledger: Any = None,
    card: Mapping[str, Any] | None = None,
    provenance_db: Path | None = None,
    tracking_client: Any = None,
    trust: Any = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """The pack for ``model@ref`` (alias or version number) as a JSON-ready dict.

    ``ledger``: a ``keel.governance.ApprovalLedger``; ``card``: a loaded model card
    (``keel.governance.load_card``) of this digest; ``provenance_db``: the pipelines
    database; ``tracking_client``: the trainer's MLflow client (default: the registry's);
    ``trust``: verify the registered archive before reading its manifest (default: the
    manifest is read unverified — the registry verified it at registration); ``work_dir``:
    where the archive is downloaded (default: a temporary directory).
    """
    from keel.pipelines.reproduce import resolve_version, training_run, verdict_from_tag

    mv = resolve_version(registry, model, ref)
    digest = mv.digest
    absent: list[dict[str, str]] = []
    reg_src = _src("registry.model_version", f"{model}/{mv.version}", digest=digest)

    manifest, embedded_card = _manifest(registry, model, int(mv.version), trust, work_dir)
    man_src = _src("artifact.manifest", digest)
    tags = dict(mv.tags)
    identity = {
        "name": model,
        "version": int(mv.version),
        "digest": digest,
        "signer": tags.get("keel.signer") or None,
        "signed": bool(tags.get("keel.signer")),
        "format_version": manifest.get("format_version"),
        "aliases": sorted(mv.aliases),
        "parent_version": tags.get("keel.parent_version") or None,
        "architecture": manifest.get("architecture"),
        "source": reg_src,
    }

    # -- the training run ------------------------------------------------------------------
    client = tracking_client if tracking_client is not None else registry.mlflow_client
    provenance = _provenance(provenance_db, model, digest, absent, generated_at)
    run = training_run(client, digest)
    trainer_run = ((provenance or {}).get("lineage") or {}).get("trainer_run")
    if run is None and trainer_run:  # a pipelines run trains, then packages: its run id
        try:
            run = client.get_run(str(trainer_run))
        except Exception:  # not a run of this tracking store (tracking off): absent
            run = None
    training: dict[str, Any] | None = None
    if run is None:
        absent.append(
            {"section": "training", "reason": f"no keel.trainer MLflow run records {digest}"}
        )
    else:
        rt = dict(run.data.tags)
        training = {
            "run_id": run.info.run_id,
            "params": dict(sorted(run.data.params.items())),
            "final_metrics": dict(sorted(run.data.metrics.items())),
            "job_digest": rt.get("keel.job_digest"),
            "num_workers": _int(rt.get("keel.num_workers")),
            "seed": _int(run.data.params.get("seed")),
            "code_version": rt.get("keel.code_version"),
            "code_dirty": rt.get("keel.code_dirty") == "true",
            "lock_hash": rt.get("keel.lock_hash"),
            "ray_version": rt.get("keel.ray_version"),
            "torch_version": rt.get("keel.torch_version"),
            "status": run.info.status,
            "source": _src("mlflow.run", run.info.run_id),
        }
    data = {
        "fingerprint": manifest.get("training_data_fingerprint"),
        "rows": _int(run.data.tags.get("keel.data_rows")) if run is not None else None,
        "path": run.data.tags.get("keel.data_path") if run is not None else None,
        "feature_views": manifest.get("feature_views") or [],
        "input_schema": manifest.get("input_schema") or [],
        "source": man_src,
    }
    code = {
        "code_version": manifest.get("code"),
        "lock_hash": manifest.get("dependency_lock_hash"),
        "source": man_src,
    }

    # -- governance: card, approvals --------------------------------------------------------
    card_part: dict[str, Any] | None = None
    card_src: dict[str, Any] | None = None
    if card is None and embedded_card is not None:
        # the artifact's own card (keel.pipelines packages one): covered by the artifact's
        # signature, it names the weights it describes (an artifact cannot name its own digest)
        card = embedded_card
        card_src = _src(
            "artifact.model_card",
            f"{digest}#{CARD_FILE}",
            sha256="sha256:" + hashlib.sha256(canonical(card)).hexdigest(),
        )
    if card is None:
        absent.append({"section": "model card", "reason": "no model card was given"})
    else:
        if card_src is None and card.get("model", {}).get("digest") != digest:
            raise InvalidInputError(
                f"the model card is for {card.get('model', {}).get('digest')}, not {digest}"
            )
        card_src = card_src or _src(
            "governance.model_card",
            "sha256:" + hashlib.sha256(canonical(card)).hexdigest(),
        )
        card_part = {
            "owner": card["model"].get("owner"),
            "intended_use": card.get("intended_use"),
            "risk": card.get("risk"),
            "training_data": card.get("training_data"),
            "evaluation": card.get("evaluation"),
            "fairness": card.get("fairness"),
            "attributions": card.get("attributions"),
            "limitations": card.get("limitations") or [],
            "source": card_src,
        }
        if card_part["fairness"] is None:
            absent.append(
                {"section": "fairness", "reason": "the model card has no fairness results"}
            )
    approvals, ledger_check = _approvals(ledger, model, digest, absent)

    # -- registry audit ------------------------------------------------------------------------
    entries = registry.audit(model)
    report = registry.verify_audit(model)
    alias_history = [
        {
            "seq": e.seq,
            "at": e.time,
            "action": e.action,
            "alias": e.alias,
            "from_version": e.from_version,
            "to_version": e.to_version,
            "who": e.decision.who,
            "why": e.decision.why,
            "evidence_digest": e.decision.evidence_digest,
            "hash": e.hash,
            "source": _src("registry.audit", f"{model}#{e.seq}", hash=e.hash),
        }
        for e in entries
        if e.to_version == int(mv.version) or e.from_version == int(mv.version)
    ]
    audit = {
        "ok": report.ok,
        "entries": report.entries,
        "problems": [str(p) for p in report.problems],
    }

    # -- the last reproduce verdict ------------------------------------------------------------
    reproduce = verdict_from_tag(tags.get("keel.reproduce"))
    if reproduce is None:
        absent.append({"section": "reproduce", "reason": "keel reproduce has not run on it"})
    else:
        reproduce["source"] = _src(
            "registry.model_version_tag", f"{model}/{mv.version}#keel.reproduce"
        )

    performance = {
        "overall": manifest.get("metrics") or {},
        "source": man_src,
        "by_group": (card_part or {}).get("fairness"),
        "confidence_intervals": None,
    }
    absent.append(
        {
            "section": "confidence intervals",
            "reason": "no stored evaluation record carries confidence intervals",
        }
    )
    limitations = [*(card_part or {}).get("limitations", []), *PLATFORM_LIMITATIONS]
    return {
        "schema": PACK_SCHEMA,
        "schema_version": PACK_SCHEMA_VERSION,
        "generated_at": _iso(generated_at),
        "model": identity,
        "governance": card_part,
        "data": data,
        "code": code,
        "training": training,
        "performance": performance,
        "approvals": approvals,
        "approvals_ledger": ledger_check,
        "alias_history": alias_history,
        "registry_audit": audit,
        "provenance": provenance,
        "reproduce": reproduce,
        "limitations": limitations,
        "absent": absent,
    }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _manifest(
    registry: Any, model: str, version: int, trust: Any, work_dir: Path | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The registered archive's manifest, and (only when ``trust`` verifies the archive) the
    model card it carries, if any."""
    import tempfile

    from keel.artifacts import ArtifactError, load_artifact, read_manifest

    card = None
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        try:
            archive = registry.download_archive(model, version, Path(tmp))
            man, _ = read_manifest(archive)
            if trust is not None:
                listed = {f.path for f in man.files}
                want = [CARD_FILE] if CARD_FILE in listed else []
                loaded = load_artifact(archive, trust, framework="numpy", read_files=want)
                man = loaded.manifest
                if want:
                    card = json.loads(loaded.files[CARD_FILE])
        except ArtifactError as e:
            raise PipelinesError(f"{model} version {version}'s archive: {e}") from None
        except ValueError as e:
            raise PipelinesError(f"{model} version {version}'s {CARD_FILE}: {e}") from None
    if card is not None and (
        not isinstance(card, dict) or card.get("model", {}).get("name") != model
    ):
        card = None
    return json.loads(man.to_bytes()), card


def _approvals(
    ledger: Any, model: str, digest: str, absent: list[dict[str, str]]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if ledger is None:
        absent.append({"section": "approvals", "reason": "no approvals ledger was given"})
        return [], None
    report = ledger.verify()
    check = {
        "path": str(ledger.path),
        "ok": report.ok,
        "entries": report.entries,
        "head": str(report.head) if report.head else None,
        "problems": list(report.problems),
    }
    if not report.ok:
        return [], check  # a tampered ledger's decisions are not evidence
    out = []
    try:
        lines = Path(ledger.path).read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    for raw in lines:
        entry = json.loads(raw)
        rec = entry["record"]
        if rec.get("model") == model and rec.get("artifact_digest") == digest:
            out.append(
                {
                    **{k: rec.get(k) for k in ("approver", "role", "decision", "decided_at")},
                    "evidence_digest": rec.get("evidence_digest"),
                    "note": rec.get("note", ""),
                    "source": _src(
                        "governance.approvals_ledger",
                        f"{ledger.path}#{entry['seq']}",
                        hash=entry["hash"],
                    ),
                }
            )
    if not out:
        absent.append({"section": "approvals", "reason": f"the ledger has no decision on {digest}"})
    return out, check


def _provenance(
    db: Path | None, model: str, digest: str, absent: list[dict[str, str]], at: datetime
) -> dict[str, Any] | None:
    if db is None or not Path(db).exists():
        absent.append(
            {
                "section": "provenance",
                "reason": "no pipelines database: the version was not produced by a pipelines run",
            }
        )
        return None
    from keel.pipelines import Controller, ProvenanceTamperedError

    ctl = Controller(None, clock=lambda: at, db_path=Path(db))
    try:
        report = ctl.verify_provenance()
        verify = {
            "ok": report.ok,
            "entries": report.entries,
            "head": list(report.head or ()),
            "problems": list(report.problems),
        }
        try:
            lineage = ctl.lineage(model, digest).to_dict()
        except NotFoundError as e:
            absent.append({"section": "provenance", "reason": str(e)})
            return {"present": False, "verify": verify}
        except ProvenanceTamperedError:
            return {"present": False, "verify": verify}
    finally:
        ctl.close()
    return {
        "present": True,
        "verify": verify,
        "lineage": lineage,
        "trigger": lineage.get("trigger"),
        "gates": lineage.get("gates"),
        "source": _src("pipelines.provenance", lineage["run_id"], db=str(db)),
    }


def record_pack(registry: Any, model: str, version: int, digest: str) -> None:
    """Store the pack's digest as the version's ``keel.evidence_pack`` tag."""
    try:
        registry.mlflow_client.set_model_version_tag(model, str(version), PACK_TAG, digest)
    except Exception as e:  # MLflow errors: the pack files stand; say the tag failed
        raise PipelinesError(f"cannot tag {model} version {version} with its pack: {e}") from None


@dataclass(frozen=True)
class Promotion:
    """What `promote_with_pack` did: the audit entry of the alias move, the pack's digest
    (the entry's ``decision.evidence_digest``) and where the pack is (None when the move was
    already logged by an earlier promotion: its own pack stands)."""

    entry: Any
    evidence_digest: str
    pack_json: Path | None
    pack_html: Path | None
    already: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "evidence_digest": self.evidence_digest,
            "evidence_pack": None if self.pack_json is None else str(self.pack_json),
            "evidence_html": None if self.pack_html is None else str(self.pack_html),
            "already_champion": self.already,
        }


def promote_with_pack(
    registry: Any,
    model: str,
    version: int,
    *,
    who: str,
    why: str,
    out_root: Path,
    idempotency_key: str,
    generated_at: datetime,
    alias: str = "champion",
    **sources: Any,
) -> Promotion:
    """Promote ``model`` version ``version`` to ``alias`` with its evidence pack: build_pack →
    write_pack → promote with ``Decision(who, why, evidence_digest=<pack digest>)`` →
    record_pack. ``sources`` go to `build_pack` (ledger, card, provenance_db, trust, ...).

    Idempotent on ``idempotency_key``: the pack lives in
    ``out_root/<model>/v<version>/<key[:16]>/`` and a retry after a crash reuses it, so the
    digest in the audit log is the digest of the pack on disk. When the audit log already
    records this move (a repeat; an earlier run made it), no pack is built: the move is
    repeated with its logged decision and that decision's evidence digest is returned.
    """
    from keel.registry_client import Decision
    from keel.registry_client import NotFoundError as RegistryNotFound

    last = next((e for e in reversed(registry.audit(model)) if e.alias == alias), None)
    try:
        current = registry.aliases(model).get(alias)
    except RegistryNotFound:
        current = None
    if (
        last is not None
        and last.to_version == int(version)
        and (
            current == last.to_version
            or (last.action == "promote" and current == last.from_version)
        )
    ):
        entry = registry.promote(model, alias, int(version), last.decision)
        folder = _pack_dir(out_root, model, version, idempotency_key)
        j = folder / "evidence.json"
        digest = entry.decision.evidence_digest
        mine = j.is_file() and pack_digest(json.loads(j.read_text())) == digest
        if mine:
            record_pack(registry, model, int(version), digest)
        return Promotion(
            entry,
            digest,
            j if mine else None,
            folder / "evidence.html" if mine else None,
            already=not mine,
        )
    folder = _pack_dir(out_root, model, version, idempotency_key)
    j, h = folder / "evidence.json", folder / "evidence.html"
    if j.is_file() and h.is_file():  # a retry: the pack this key already wrote stands
        digest = pack_digest(json.loads(j.read_text()))
    else:
        pack = build_pack(registry, model, str(int(version)), generated_at=generated_at, **sources)
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        _j, _h, digest = write_pack(pack, tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
    entry = registry.promote(model, alias, int(version), Decision(who, why, digest))
    record_pack(registry, model, int(version), digest)
    return Promotion(entry, digest, j, h, already=False)


def _pack_dir(out_root: Path, model: str, version: int, key: str) -> Path:
    if not key.strip():
        raise InvalidInputError("promote_with_pack needs an idempotency key")
    return (
        Path(out_root) / model / f"v{int(version)}" / hashlib.sha256(key.encode()).hexdigest()[:16]
    )


@dataclass(frozen=True)
class PackCheck:
    """`verify_pack`'s result: ``ok`` when the pack file's digest is the one the registry
    recorded (the version's tag and an audit-log decision moving an alias to it) and the
    audit chain is intact; ``problems`` says what is not."""

    ok: bool
    digest: str
    model: str
    version: int
    audit_entries: tuple[int, ...]
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "digest": self.digest,
            "model": self.model,
            "version": self.version,
            "audit_entries": list(self.audit_entries),
            "problems": list(self.problems),
        }


def verify_pack(registry: Any, path: Path) -> PackCheck:
    """Check an ``evidence.json`` (or the folder holding it) against the registry: its digest
    (SHA-256 of its canonical JSON) must equal the version's ``keel.evidence_pack`` tag and
    the evidence digest of an audit-log entry that moved an alias to that version, and the
    audit chain must verify. Raises `InvalidInputError` for an unreadable file."""
    path = Path(path)
    if path.is_dir():
        path = path / "evidence.json"
    try:
        pack = json.loads(path.read_text())
        model, version = str(pack["model"]["name"]), int(pack["model"]["version"])
        if pack.get("schema") != PACK_SCHEMA:
            raise ValueError(f"schema is {pack.get('schema')!r}, not {PACK_SCHEMA!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(f"{path} is not a readable evidence pack: {e}") from None
    digest = pack_digest(pack)
    problems: list[str] = []
    from keel.pipelines.reproduce import resolve_version

    mv = resolve_version(registry, model, str(version))
    if mv.digest != pack["model"]["digest"]:
        problems.append(
            f"{model} version {version} has digest {mv.digest}; the pack describes {pack['model']['digest']}"
        )
    tag = dict(mv.tags).get(PACK_TAG)
    if tag != digest:
        problems.append(
            f"the version's {PACK_TAG} tag is {tag or '(absent)'}, the pack's digest is {digest}"
        )
    seqs = tuple(
        e.seq
        for e in registry.audit(model)
        if e.to_version == version and e.decision.evidence_digest == digest
    )
    if not seqs:
        problems.append(f"no audit-log decision moving an alias to v{version} names {digest}")
    report = registry.verify_audit(model)
    if not report.ok:
        problems.extend(f"audit log: {p}" for p in report.problems)
    return PackCheck(not problems, digest, model, version, seqs, tuple(problems))


def write_pack(pack: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path, str]:
    """``evidence.json`` (sorted keys, indented) and ``evidence.html`` in ``out_dir``;
    returns both paths and the pack's digest (of its canonical JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = pack_digest(pack)
    j, h = out_dir / "evidence.json", out_dir / "evidence.html"
    j.write_text(json.dumps(pack, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    h.write_text(render_pack_html(pack, digest))
    return j, h, digest


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1040px;color:#222;padding:0 16px;line-height:1.4;font-size:14px}
h1{font-size:23px;margin-bottom:2px}h3{font-size:14px;margin:14px 0 4px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:30px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:100%}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
table.kv th{width:190px}.nowrap{white-space:nowrap}.k{color:#555}
th{background:#f5f5f5}.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c0392b;font-weight:600}.muted{color:#666;font-size:12px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-size:13px;margin-right:6px}
.g{background:#2e9e5b}.r{background:#c0392b}.y{background:#d68910}.n{background:#7f8c8d}
.summary{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
"""


def _e(v: Any) -> str:
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return html.escape(f"{v:.6g}")
    if isinstance(v, dict) and v and all(not isinstance(x, dict | list) for x in v.values()):
        # a flat record (risk factors, controls, thresholds): one "key: value" per line
        return "<br>".join(
            f'<span class="k">{html.escape(str(k).replace("_", " "))}:</span> {_e(x)}'
            for k, x in sorted(v.items())
        )
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return html.escape(", ".join(v)) if v else '<span class="muted">—</span>'
    if isinstance(v, dict | list):
        return f'<span class="mono">{html.escape(json.dumps(v, sort_keys=True))}</span>'
    text = str(v)
    if text.startswith("sha256:") or (len(text) == 40 and text.isalnum()):
        return f'<span class="mono">{html.escape(text)}</span>'
    return html.escape(text)


def _when(v: Any) -> str:
    """An ISO time, short and on one line: 2026-04-02 09:30:00Z."""
    if not isinstance(v, str):
        return _e(v)
    text = v.replace("T", " ").replace("+00:00", "Z")
    if "." in text:  # drop sub-seconds
        head, _, tail = text.partition(".")
        text = head + ("Z" if tail.endswith("Z") else "")
    return f'<span class="nowrap">{html.escape(text)}</span>'


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _cell(v: Any) -> str:
    return str(v) if isinstance(v, _Raw) else _e(v)


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="muted">none recorded</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _source(part: Mapping[str, Any] | None) -> str:
    src = (part or {}).get("source")
    if not src:
        return ""
    return f'<p class="muted">source: {html.escape(src["kind"])} <span class="mono">{html.escape(str(src["id"]))}</span></p>'


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{html.escape(text)}</span>'


def _gates_html(gates: Mapping[str, Any]) -> str:
    """The gate verdict: overall status, then one row per gate (status, reasons, evidence)."""
    status = str(gates.get("status", "—"))
    head = (
        f'<p>overall: <span class="{"ok" if status == "passed" else "bad"}">'
        f"{html.escape(status)}</span></p>"
    )
    rows = [
        [
            g.get("gate"),
            _Raw(
                f'<span class="{"ok" if g.get("status") == "passed" else "bad"}">'
                f"{html.escape(str(g.get('status')))}</span>"
            ),
            "; ".join(g.get("reasons") or []) or None,
            g.get("evidence") or None,
        ]
        for g in gates.get("results") or []
    ]
    return head + _table(["gate", "status", "reasons", "evidence"], rows)


def render_pack_html(pack: Mapping[str, Any], digest: str | None = None) -> str:
    """One self-contained page (inline CSS, no scripts, nothing external; all escaped)."""
    m = pack["model"]
    gov = pack.get("governance") or {}
    risk = gov.get("risk") or {}
    rep = pack.get("reproduce")
    prov = pack.get("provenance")
    audit = pack["registry_audit"]
    led = pack.get("approvals_ledger")
    badges = [
        _badge(f"tier {risk['tier']}", "y") if risk.get("tier") else _badge("tier: no card", "n"),
        _badge("signed", "g") if m["signed"] else _badge("unsigned", "r"),
        _badge(f"reproduce: {rep['status']}", "g" if rep["status"] == "identical" else "r")
        if rep
        else _badge("reproduce: not run", "n"),
        _badge("provenance verified", "g")
        if prov and prov.get("present") and prov["verify"]["ok"]
        else _badge("no pipelines provenance", "n")
        if not prov or not prov.get("present")
        else _badge("provenance BROKEN", "r"),
        _badge("audit log intact", "g") if audit["ok"] else _badge("audit log BROKEN", "r"),
    ]
    if led is not None:
        badges.append(
            _badge("approvals ledger intact", "g") if led["ok"] else _badge("ledger BROKEN", "r")
        )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Evidence pack — {html.escape(m['name'])} v{m['version']}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evidence pack: {html.escape(m['name'])} version {m['version']}</h1>",
        f'<p class="muted">generated {html.escape(pack["generated_at"])} · schema '
        f'{PACK_SCHEMA} v{PACK_SCHEMA_VERSION}'
        + (f' · pack digest <span class="mono">{html.escape(digest)}</span>' if digest else "")
        + "</p>",
        f'<div class="summary">{"".join(badges)}</div>',
        "<h2>Model identity</h2>",
        _kv(
            [
                ("artifact digest", m["digest"]),
                ("signer (key hint)", m["signer"]),
                ("format version", m["format_version"]),
                ("aliases now", ", ".join(m["aliases"]) or None),
                ("parent version", m["parent_version"]),
                ("architecture", m["architecture"]),
            ]
        ),
        _source(m),
        "<h2>Intended use, owner and risk tier</h2>",
    ]
    if gov:
        iu = gov.get("intended_use") or {}
        parts += [
            _kv(
                [
                    ("owner", gov.get("owner")),
                    ("intended use", iu.get("use")),
                    ("out of scope", "; ".join(iu.get("out_of_scope") or []) or None),
                    ("risk tier", risk.get("tier")),
                    ("risk factors", risk.get("factors")),
                    ("required controls", risk.get("controls")),
                ]
            ),
            _source(gov),
        ]
    else:
        parts.append(
            '<p class="bad">No model card was given: tier, owner and intended use are not established.</p>'
        )
    d = pack["data"]
    parts += [
        "<h2>Data</h2>",
        _kv(
            [
                ("training-set fingerprint", d["fingerprint"]),
                ("rows", d["rows"]),
                ("read from", d["path"]),
                (
                    "feature views",
                    [
                        f"{v.get('name')} (version {v.get('version')})"
                        if isinstance(v, dict)
                        else str(v)
                        for v in d["feature_views"]
                    ]
                    or None,
                ),
                ("input schema", [f.get("name") for f in d["input_schema"]]),
                ("time range", ((gov.get("training_data") or {}).get("time_range"))),
                ("data-quality results", None),
            ]
        ),
        _source(d),
    ]
    t = pack.get("training")
    parts.append("<h2>Training run</h2>")
    if t:
        parts += [
            _kv(
                [
                    ("MLflow run", t["run_id"]),
                    ("seed", t["seed"]),
                    ("workers", t["num_workers"]),
                    ("code version", t["code_version"]),
                    ("lock hash", t["lock_hash"]),
                    ("job digest", t["job_digest"]),
                    (
                        "ray / torch",
                        f"{t['ray_version']} / {t['torch_version']}"
                        if t["ray_version"] or t["torch_version"]
                        else None,
                    ),
                ]
            ),
            _table(["parameter", "value"], sorted(t["params"].items())),
            _table(["final metric (MLflow)", "value"], sorted(t["final_metrics"].items())),
            _source(t),
        ]
    else:
        parts.append('<p class="bad">No training run record was found for this digest.</p>')
    perf = pack["performance"]
    parts += [
        "<h2>Performance</h2>",
        _table(["metric (artifact manifest)", "value"], sorted(perf["overall"].items())),
        _source(perf),
    ]
    fair = gov.get("fairness")
    parts.append("<h2>Fairness by group</h2>")
    if fair:
        verdict = fair.get("verdict") or {}
        parts.append(
            f'<p>gate: <span class="{"ok" if verdict.get("passed") else "bad"}">'
            f'{"passed" if verdict.get("passed") else "FAILED"}</span></p>'
            + _kv([("thresholds", fair.get("gate"))])
        )
        rows = []
        for attr in fair.get("attributes", []):
            for g in attr.get("groups", []):
                rows.append(
                    [
                        attr.get("attribute"),
                        g.get("group"),
                        g.get("count"),
                        g.get("selection_rate"),
                        g.get("true_positive_rate"),
                        g.get("false_positive_rate"),
                        g.get("auc"),
                    ]
                )
        parts.append(
            _table(["attribute", "group", "n", "selection rate", "TPR", "FPR", "AUC"], rows)
        )
        parts += [f"<p>{_e(r)}</p>" for r in verdict.get("reasons", [])]
    else:
        parts.append('<p class="muted">No fairness results recorded.</p>')
    attr_top = (gov.get("attributions") or {}).get("top") or []
    parts += [
        "<h2>Attributions</h2>",
        _table(
            ["feature", "mean |attribution|", "mean"],
            [[a.get("feature"), a.get("mean_abs"), a.get("mean")] for a in attr_top],
        ),
        "<h2>Drift history and gate results</h2>",
    ]
    if prov and prov.get("present"):
        parts += [
            "<h3>Trigger</h3>",
            _kv(
                [
                    (k, _Raw(_when(x)) if k == "at" else x)
                    for k, x in sorted((prov.get("trigger") or {}).items())
                ]
            ),
            "<h3>Gates against the previous champion</h3>",
            _gates_html(prov.get("gates") or {}),
            _source(prov),
        ]
    else:
        parts.append(
            '<p class="muted">This version was not produced by a pipelines run: no drift trigger or gate record.</p>'
        )
    parts += [
        "<h2>Approvals</h2>",
        _table(
            ["approver", "role", "decision", "when", "evidence digest", "ledger entry"],
            [
                [
                    a["approver"],
                    a["role"],
                    a["decision"],
                    _Raw(_when(a["decided_at"])),
                    a["evidence_digest"],
                    "#" + str(a["source"]["id"]).rsplit("#", 1)[-1],
                ]
                for a in pack["approvals"]
            ],
        ),
    ]
    if led is not None:
        parts.append(
            f'<p class="muted">ledger {html.escape(led["path"])}: {led["entries"]} entries, '
            f'{"chain intact" if led["ok"] else "FAILS verification: " + html.escape("; ".join(led["problems"]))}'
            f", head {_e(led['head'])}</p>"
        )
    parts += [
        "<h2>Alias history (registry audit log)</h2>",
        _table(
            ["seq", "when", "action", "alias", "from", "to", "who", "why", "evidence"],
            [
                [
                    h["seq"],
                    _Raw(_when(h["at"])),
                    h["action"],
                    h["alias"],
                    h["from_version"],
                    h["to_version"],
                    h["who"],
                    h["why"],
                    h["evidence_digest"],
                ]
                for h in pack["alias_history"]
            ],
        ),
        f'<p class="muted">audit chain: {audit["entries"]} entries, '
        f'{"intact" if audit["ok"] else "BROKEN: " + html.escape("; ".join(audit["problems"]))}</p>',
        "<h2>Provenance chain</h2>",
    ]
    if prov:
        v = prov["verify"]
        parts.append(
            f'<p><span class="{"ok" if v["ok"] else "bad"}">keel provenance verify: '
            f'{"ok" if v["ok"] else "FAILED"}</span> ({v["entries"]} entries, head {_e(" ".join(f"#{x}" if i == 0 else str(x) for i, x in enumerate(v["head"])) or None)})</p>'
        )
        if prov.get("present"):
            lin = prov["lineage"]
            moves = [
                f"{m.get('alias', '?')} → v{m.get('version', m.get('to_version', '?'))}"
                for m in lin.get("alias_moves") or []
                if isinstance(m, dict)
            ]
            parts.append(
                _kv(
                    [
                        ("pipelines run", lin.get("run_id")),
                        ("artifact digest", lin.get("artifact_digest")),
                        ("training-set fingerprint", lin.get("training_set_fingerprint")),
                        ("source datasets", lin.get("sources") or None),
                        ("code version", lin.get("code_version")),
                        ("lock hash", lin.get("lock_hash")),
                        ("trainer run", lin.get("trainer_run")),
                        ("alias moves", moves or None),
                        ("provenance entries", ", ".join(str(e) for e in lin.get("entries", []))),
                    ]
                )
            )
    else:
        parts.append('<p class="muted">No pipelines provenance for this version.</p>')
    parts.append("<h2>Last <code>keel reproduce</code> verdict</h2>")
    if rep:
        parts += [
            _kv(
                [
                    ("status", rep.get("status")),
                    ("first differing link", rep.get("link")),
                    ("rebuilt digest", rep.get("reproduced_digest")),
                    ("when", _Raw(_when(rep.get("at")))),
                    ("message", rep.get("message")),
                ]
            ),
            _source(rep),
        ]
    else:
        parts.append('<p class="muted">keel reproduce has not run on this version.</p>')
    parts += [
        "<h2>Known limitations</h2>",
        "<ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in pack["limitations"]) + "</ul>",
        "<h2>Not available</h2>",
        _table(["section", "why"], [[a["section"], a["reason"]] for a in pack["absent"]]),
        "</body></html>",
    ]
    return "\n".join(parts)


__all__ = [
    "PACK_SCHEMA",
    "PACK_SCHEMA_VERSION",
    "PACK_TAG",
    "PLATFORM_LIMITATIONS",
    "PackCheck",
    "Promotion",
    "build_pack",
    "pack_digest",
    "promote_with_pack",
    "record_pack",
    "render_pack_html",
    "verify_pack",
    "write_pack",
]
