"""`keel governance card|approve|check|verify|pack`: model cards, recorded approvals, promotion
checks and the evidence pack (assembled by keel.pipelines.evidence).

Wiring only: every decision is keel.governance's. The approvals ledger defaults to
``$KEEL_HOME/governance/approvals.jsonl``. Heavy imports (polars, keel.governance) happen
inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from keel_cli.cmd_reproduce import DbUrlOpt, HomeOpt, TrackingUriOpt
from rich.console import Console

app = typer.Typer(
    help="Governance: model cards, approvals, the promotion check and the evidence pack (model-risk controls)."
)
console = Console(soft_wrap=True)  # paths, digests and ledger heads stay on one line
err_console = Console(stderr=True, soft_wrap=True)

LedgerOpt = Annotated[
    Path | None,
    typer.Option(
        "--ledger", help="approvals ledger (default: $KEEL_HOME/governance/approvals.jsonl)"
    ),
]


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False)
    return typer.Exit(code)


def _ledger_path(ledger: Path | None) -> Path:
    if ledger is not None:
        return ledger
    from keel_cli.config import ConfigError, load_config

    try:
        home = load_config().home
    except ConfigError as e:
        raise _fail(str(e)) from None
    return home.expanduser() / "governance" / "approvals.jsonl"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read {what} {path}: {exc}") from None


def _read_table(path: Path) -> Any:
    import polars as pl

    readers: dict[str, Any] = {
        ".csv": pl.read_csv,
        ".parquet": pl.read_parquet,
        ".pq": pl.read_parquet,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise _fail(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    if not path.exists():
        raise _fail(f"{path} does not exist")
    try:
        return reader(path)
    except Exception as exc:  # polars raises many types; report them all the same way
        raise _fail(f"cannot read {path}: {exc}") from exc


@app.command()
def card(
    manifest: Annotated[Path, typer.Option(help="artifact manifest (JSON)")],
    owner: Annotated[str, typer.Option(help="accountable owner (person or team)")],
    intended_use: Annotated[str, typer.Option(help="what the model is for")],
    materiality: Annotated[str, typer.Option(help="low | medium | high")],
    complexity: Annotated[str, typer.Option(help="low | medium | high")],
    use: Annotated[str, typer.Option(help="internal | decision_support | automated_decision")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for card.json and card.html")],
    digest: Annotated[
        str | None, typer.Option(help="artifact digest (default: manifest 'digest')")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(help="evaluation rows (CSV/Parquet): label, score, protected columns"),
    ] = None,
    label: Annotated[str, typer.Option(help="label column (0/1, or see --positive)")] = "label",
    positive: Annotated[
        str | None, typer.Option(help="label value meaning 1 (string labels)")
    ] = None,
    score: Annotated[str, typer.Option(help="score column: P(label = 1)")] = "score",
    protected: Annotated[
        str, typer.Option(help="comma-separated protected-attribute columns")
    ] = "",
    threshold: Annotated[float, typer.Option(help="decision threshold on the score")] = 0.5,
    attributions: Annotated[
        Path | None, typer.Option(help="global ranking JSON: [{feature, mean_abs, mean}]")
    ] = None,
    limitation: Annotated[
        list[str] | None, typer.Option(help="a known limitation (repeatable)")
    ] = None,
    out_of_scope: Annotated[
        list[str] | None, typer.Option(help="an out-of-scope use (repeatable)")
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Write the model card (card.json + self-contained card.html) for an artifact."""
    import numpy as np

    from keel.governance import (
        ApprovalLedger,
        FeatureImportance,
        GovernanceError,
        RiskFactors,
        build_card,
        card_json,
        fairness_report,
        render_card_html,
        system_clock,
    )

    man = _read_json(manifest, "manifest")
    try:
        fair = None
        if predictions is not None:
            frame = _read_table(predictions)
            cols = [c.strip() for c in protected.split(",") if c.strip()]
            missing = [c for c in [label, score, *cols] if c not in frame.columns]
            if missing:
                raise _fail(f"{predictions} lacks columns {missing}; it has {frame.columns}")
            if not cols:
                raise _fail("--protected: name at least one protected-attribute column")
            y = frame[label].to_numpy()
            if positive is not None:
                y = (y.astype(str) == positive).astype(np.int64)
            fair = fairness_report(
                y,
                frame[score].to_numpy(),
                {c: frame[c].to_numpy() for c in cols},
                threshold=threshold,
            )
        ranking = []
        if attributions is not None:
            raw = _read_json(attributions, "attributions")
            try:
                ranking = [
                    FeatureImportance(
                        str(r["feature"]), float(r["mean_abs"]), float(r.get("mean", 0.0))
                    )
                    for r in raw
                ]
            except (TypeError, KeyError, ValueError) as exc:
                raise _fail(
                    f"{attributions}: want a list of {{feature, mean_abs, mean}}: {exc}"
                ) from None
        if not isinstance(man, dict):
            raise _fail(f"{manifest}: the manifest must be a JSON object")
        name, the_digest = man.get("name"), digest or man.get("digest")
        approvals = (
            ApprovalLedger(_ledger_path(ledger)).approvals_for(str(name), str(the_digest))
            if name and the_digest
            else []
        )
        result = build_card(
            man,
            digest=digest,
            owner=owner,
            intended_use=intended_use,
            risk=RiskFactors(materiality, complexity, use),  # type: ignore[arg-type]
            generated_at=system_clock(),
            out_of_scope=out_of_scope or (),
            fairness=fair,
            attributions=ranking,
            approvals=approvals,
            limitations=limitation or (),
        )
    except GovernanceError as exc:
        raise _fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "card.json").write_text(card_json(result))
    (out / "card.html").write_text(render_card_html(result))
    verdict = (result["fairness"] or {}).get("verdict")
    console.print(
        f"tier {result['risk']['tier']} card for {result['model']['name']}: {out / 'card.json'}, {out / 'card.html'}"
        + (
            ""
            if verdict is None
            else f" (fairness gate {'passed' if verdict['passed'] else 'FAILED'})"
        ),
        highlight=False,
    )


@app.command()
def approve(
    model: Annotated[str, typer.Option(help="model name")],
    digest: Annotated[str, typer.Option(help="artifact digest being decided on")],
    approver: Annotated[str, typer.Option(help="who decides (identity string)")],
    role: Annotated[str, typer.Option(help="validator | model_owner | risk_officer | ...")],
    evidence_digest: Annotated[
        str, typer.Option(help="digest of the evidence reviewed (card, gate results)")
    ],
    decision: Annotated[str, typer.Option(help="approve | reject")] = "approve",
    note: Annotated[str, typer.Option(help="free text")] = "",
    ledger: LedgerOpt = None,
) -> None:
    """Record an approval (or rejection) in the append-only, hash-chained ledger."""
    from keel.governance import Approval, ApprovalLedger, Decision, GovernanceError, system_clock

    path = _ledger_path(ledger)
    try:
        kind = cast(Decision, decision)  # a str: Approval validates it
        entry = Approval(model, digest, approver, role, kind, evidence_digest, system_clock(), note)
        head = ApprovalLedger(path).append(entry)
    except GovernanceError as exc:
        raise _fail(str(exc), 1) from None
    console.print(
        f"recorded {entry.decision.value} by {entry.approver} ({entry.role}) for {model} {digest}",
        highlight=False,
    )
    console.print(
        f"ledger head: {head}  (keep it to detect truncation: keel governance verify --expected-head)",
        highlight=False,
    )


@app.command()
def check(
    model: Annotated[str, typer.Option(help="model name")],
    digest: Annotated[str, typer.Option(help="artifact digest to promote to champion")],
    trainer: Annotated[str, typer.Option(help="who trained the model")],
    card_path: Annotated[
        Path | None,
        typer.Option("--card", help="the artifact's card.json (tier + fairness verdict)"),
    ] = None,
    tier: Annotated[int | None, typer.Option(help="risk tier, when there is no card")] = None,
    validation_note: Annotated[str | None, typer.Option(help="independent-validation note")] = None,
    validator: Annotated[str | None, typer.Option(help="who wrote the validation note")] = None,
    expected_head: Annotated[
        str | None, typer.Option(help="ledger head recorded earlier: <seq>:<hash>")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
    ledger: LedgerOpt = None,
) -> None:
    """May this artifact become champion? Exit 0 if allowed, 1 if refused (reasons printed)."""
    from keel.governance import (
        ApprovalLedger,
        GovernanceError,
        check_promotion,
        controls_for,
        load_card,
        system_clock,
    )

    try:
        fairness_passed, fairness_reasons, has_card = None, [], False
        if card_path is not None:
            try:
                text = card_path.read_text()
            except OSError as exc:
                raise _fail(f"cannot read card {card_path}: {exc}") from None
            card_doc = load_card(text)
            if card_doc["model"]["digest"] != digest or card_doc["model"]["name"] != model:
                raise _fail(
                    f"{card_path} is the card of {card_doc['model']['name']} {card_doc['model']['digest']}, not {model} {digest}"
                )
            has_card = True
            if tier is None:
                tier = int(card_doc["risk"]["tier"])
            if card_doc["fairness"] is not None:
                fairness_passed = bool(card_doc["fairness"]["verdict"]["passed"])
                fairness_reasons = list(card_doc["fairness"]["verdict"]["reasons"])
        if tier is None:
            raise _fail("give --card (the tier is read from it) or --tier")
        led = ApprovalLedger(_ledger_path(ledger))
        if expected_head is not None:
            report = led.verify(expected_head)
            if not report.ok:
                raise _fail("approvals ledger fails verification: " + "; ".join(report.problems), 1)
        decision = check_promotion(
            controls_for(tier),
            model=model,
            artifact_digest=digest,
            trainer=trainer,
            approvals=led.approvals_for(model, digest),
            now=system_clock(),
            validation_note=validation_note,
            validator=validator,
            fairness_passed=fairness_passed,
            fairness_reasons=fairness_reasons,
            has_model_card=has_card,
        )
    except GovernanceError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        console.print_json(json.dumps(decision.to_dict()))
    else:
        verdict = "[bold green]ALLOWED[/]" if decision.allowed else "[bold red]REFUSED[/]"
        console.print(
            f"promotion of {model} {digest} to champion (tier {decision.tier}): {verdict}"
        )
        for s in decision.satisfied:
            console.print(f"  [green]✓[/] {s}", highlight=False)
        for r in decision.reasons:
            console.print(f"  [red]✗[/] {r}", highlight=False)
    if not decision.allowed:
        raise typer.Exit(1)


@app.command()
def verify(
    expected_head: Annotated[
        str | None, typer.Option(help="ledger head recorded earlier: <seq>:<hash>")
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Verify the approvals ledger's hash chain. Exit 1 on any edited, reordered or deleted entry."""
    from keel.governance import ApprovalLedger, GovernanceError

    path = _ledger_path(ledger)
    try:
        report = ApprovalLedger(path).verify(expected_head)
    except GovernanceError as exc:
        raise _fail(str(exc)) from None
    if report.ok:
        console.print(
            f"{path}: {report.entries} entries, chain intact, head {report.head}", highlight=False
        )
        return
    for p in report.problems:
        err_console.print(f"[red]✗[/] {p}", highlight=False)
    raise _fail(f"{path}: {len(report.problems)} problem(s); the ledger was tampered with", 1)


@app.command()
def pack(
    target: Annotated[
        str, typer.Argument(help="MODEL@ALIAS (e.g. fraud@champion) or MODEL@VERSION")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="directory (default: $KEEL_HOME/evidence/MODEL/vN)"),
    ] = None,
    card_path: Annotated[
        Path | None, typer.Option("--card", help="the version's card.json (keel governance card)")
    ] = None,
    ledger: LedgerOpt = None,
    pipelines_db: Annotated[
        Path | None,
        typer.Option(help="pipelines database (default: $KEEL_HOME/pipelines/pipelines.db)"),
    ] = None,
    home: HomeOpt = None,
    tracking_uri: TrackingUriOpt = None,
    db_url: DbUrlOpt = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option("--trust", "-t", help="verify the registered archive against this public key"),
    ] = None,
    record: Annotated[
        bool, typer.Option(help="tag the version with the pack digest (keel.evidence_pack)")
    ] = True,
    verify: Annotated[
        Path | None,
        typer.Option(
            help="check this evidence.json (or its folder) against the registry instead of "
            "writing a pack: its digest must be the version's keel.evidence_pack tag and an "
            "audit-log decision's evidence digest; exit 1 when it is not"
        ),
    ] = None,
) -> None:
    """Write the model-risk evidence pack (evidence.json + self-contained evidence.html) of
    a registered version, assembled from the registry, the trainer run, the approvals
    ledger, the model card and pipelines provenance. Prints the pack's digest: pass it as
    the evidence digest when promoting (keel registry promote --evidence)."""
    from keel_cli.cmd_reproduce import open_home_registry

    from keel.artifacts import ArtifactError, TrustPolicy
    from keel.governance import ApprovalLedger, GovernanceError, load_card, system_clock
    from keel.pipelines import PipelinesError
    from keel.pipelines.evidence import build_pack, record_pack, write_pack
    from keel.pipelines.reproduce import parse_target
    from keel.registry_client import RegistryError

    if verify is not None:
        _verify_pack(target, verify, home, tracking_uri, db_url)
        return
    try:
        model, ref = parse_target(target)
        card_doc = None
        if card_path is not None:
            try:
                card_doc = load_card(card_path.read_text())
            except OSError as exc:
                raise _fail(f"cannot read card {card_path}: {exc.strerror or exc}") from None
        policy = TrustPolicy.from_files(trust) if trust else None
    except (ArtifactError, PipelinesError, GovernanceError) as exc:
        raise _fail(str(exc)) from None
    root, reg = open_home_registry(home, tracking_uri, db_url)
    try:
        doc = build_pack(
            reg,
            model,
            ref,
            generated_at=system_clock(),
            ledger=ApprovalLedger(ledger or root / "governance" / "approvals.jsonl"),
            card=card_doc,
            provenance_db=pipelines_db or root / "pipelines" / "pipelines.db",
            trust=policy,
        )
        folder = out or root / "evidence" / model / f"v{doc['model']['version']}"
        json_path, html_path, digest = write_pack(doc, folder)
        if record:
            record_pack(reg, model, doc["model"]["version"], digest)
    except (PipelinesError, RegistryError, GovernanceError) as exc:
        raise _fail(str(exc)) from None
    finally:
        reg.close()
    console.print(
        f"evidence pack of {model} version {doc['model']['version']}: {json_path}, {html_path}",
        highlight=False,
    )
    console.print(f"pack digest: {digest}", highlight=False)


def _verify_pack(
    target: str, path: Path, home: Path | None, tracking_uri: str | None, db_url: str | None
) -> None:
    from keel_cli.cmd_reproduce import open_home_registry

    from keel.pipelines import PipelinesError
    from keel.pipelines.evidence import verify_pack
    from keel.pipelines.reproduce import parse_target
    from keel.registry_client import RegistryError

    try:
        model, ref = parse_target(target)
    except PipelinesError as exc:
        raise _fail(str(exc)) from None
    _root, reg = open_home_registry(home, tracking_uri, db_url)
    try:
        check = verify_pack(reg, path)
    except (PipelinesError, RegistryError) as exc:
        raise _fail(str(exc)) from None
    finally:
        reg.close()
    if check.model != model or (ref.isdigit() and int(ref) != check.version):
        raise _fail(f"{path} is the pack of {check.model} version {check.version}, not {target}", 1)
    if check.ok:
        console.print(
            f"{path}: the evidence pack of {check.model} version {check.version}, digest "
            f"{check.digest}, recorded in the audit log (entries {list(check.audit_entries)}) "
            "and the version's tag",
            highlight=False,
        )
        return
    for p in check.problems:
        err_console.print(f"[red]✗[/] {p}", highlight=False)
    raise _fail(f"{path}: {len(check.problems)} problem(s); this pack is not the recorded one", 1)
