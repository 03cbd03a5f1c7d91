"""`keel reproduce MODEL@ALIAS|MODEL@VERSION`: rebuild a registered model and compare digests.

Wiring only: the walk is keel.pipelines.reproduce's. Exit 0 when the rebuilt artifact is
identical, 1 when a link differs (data fingerprint, code version, lock hash, parameters,
weights), 2 when an input is gone or the command is misused. Heavy imports happen inside.

A model the pipelines trained is found from KEEL_HOME alone: the options they recorded
(``pipelines/options.json``, see keel.pipelines.reproduce.record_options) in KEEL_HOME, or
in ``KEEL_HOME/demo/loop`` where `keel demo` runs its loop, name the model; that home's
registry, offline log, pipelines database and signing key are then the defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

# Where the registry is (shared with `keel governance pack`).
HomeOpt = Annotated[Path | None, typer.Option(help="KEEL_HOME (default: $KEEL_HOME or ./.keel)")]
TrackingUriOpt = Annotated[
    str | None, typer.Option(envvar="KEEL_REGISTRY_TRACKING_URI", help="an `mlflow server` URL")
]
DbUrlOpt = Annotated[
    str | None, typer.Option(envvar="KEEL_REGISTRY_DB_URL", help="the server's PostgreSQL URL")
]


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {' '.join(msg.split())}", highlight=False)
    return typer.Exit(code)


def _signing_key(path: Path | None, default: Path | None = None) -> Any:
    from keel.artifacts import ArtifactError, SigningKey

    path = path or (
        Path(os.environ["KEEL_SIGNING_KEY"]) if os.environ.get("KEEL_SIGNING_KEY") else default
    )
    if path is None:
        raise _fail(
            "the rebuilt artifact must be signed: give --signing-key or set KEEL_SIGNING_KEY "
            "(any key: the signature is not part of the digest)"
        )
    try:
        return SigningKey.from_pem(path.read_bytes())
    except OSError as e:
        raise _fail(f"cannot read signing key {path}: {e.strerror or e}") from None
    except ArtifactError as e:
        raise _fail(f"signing key {path}: {e}") from None


def _trust(paths: list[Path] | None, default: list[Path] | None = None) -> Any:
    from keel.artifacts import ArtifactError, TrustPolicy

    try:
        if paths:
            return TrustPolicy.from_files(paths)
        if default and not os.environ.get("KEEL_TRUSTED_KEYS"):
            return TrustPolicy.from_files(default)
        from keel.registry_client.pyfunc import trust_policy_from_env

        return trust_policy_from_env()
    except ArtifactError as e:
        raise _fail(f"trust: {e}") from None
    except Exception as e:  # the registry's UntrustedLoadError: no keys configured
        raise _fail(f"{e} (or give --trust)") from None


def open_home_registry(
    home: Path | None, tracking_uri: str | None, db_url: str | None
) -> tuple[Path, Any]:
    """KEEL_HOME and the registry: embedded there, or the `mlflow server` at tracking_uri
    (with its PostgreSQL db_url). A bad configuration is one line and exit 2."""
    from keel.registry_client import RegistryError, open_registry

    root = _home(home)
    try:
        reg = (
            open_registry(tracking_uri=tracking_uri, db_url=db_url)
            if tracking_uri
            else open_registry(root)
        )
    except RegistryError as e:
        raise _fail(str(e)) from None
    return root, reg


def _home(home: Path | None) -> Path:
    """--home, else the configured KEEL_HOME; a bad configuration is one line and exit 2."""
    from keel_cli.config import ConfigError, load_config

    try:
        return (home or load_config().home).expanduser()
    except ConfigError as e:
        raise _fail(str(e)) from None


def recorded_pipelines(root: Path, model: str) -> tuple[Path, dict[str, Any]] | None:
    """(pipelines home, options) of the pipelines that trained ``model`` under KEEL_HOME
    ``root``: the options recorded in ``root`` itself (a retrain-controller's home) or in
    ``root/demo/loop`` (`keel demo`'s loop) whose ``model`` is this one; None otherwise."""
    from keel.pipelines import PipelinesError
    from keel.pipelines.reproduce import read_options

    for home in (root, root / "demo" / "loop"):
        try:
            options = read_options(home)
        except PipelinesError as e:
            raise _fail(str(e)) from None
        if options is not None and options.get("model") == model:
            return home, options
    return None


def _pipelines_keys(home: Path, options: dict[str, Any]) -> tuple[Path, list[Path]]:
    """The signing key and trusted keys the pipelines in ``home`` used (their options, else
    keel.pipelines.local's defaults under ``home/keys``)."""
    if options.get("signing_key"):
        return Path(options["signing_key"]), [Path(k) for k in options.get("trusted_keys") or []]
    keys = home / "keys"
    trusted = [Path(k) for k in options.get("trusted_keys") or []] or [keys / "pipelines.pub"]
    return keys / "pipelines.pem", trusted


def reproduce(
    target: Annotated[
        str, typer.Argument(help="MODEL@ALIAS (e.g. fraud@champion) or MODEL@VERSION")
    ],
    home: HomeOpt = None,
    tracking_uri: TrackingUriOpt = None,
    db_url: DbUrlOpt = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            "-t",
            help="trusted public key of the registered artifact (or KEEL_TRUSTED_KEYS)",
        ),
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(help="PEM private key to sign the rebuilt artifact (or KEEL_SIGNING_KEY)"),
    ] = None,
    repo: Annotated[
        Path, typer.Option(help="the git checkout whose code runs (must be the recorded commit)")
    ] = Path("."),
    data: Annotated[
        Path | None,
        typer.Option(help="where the training file is now (default: where it was read)"),
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option("--job", help="run this job file instead of the recorded job spec"),
    ] = None,
    lock_file: Annotated[
        Path | None,
        typer.Option(help="dependency lockfile (default: 3rdparty/python/default.lock)"),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(help="scratch space (default: $KEEL_HOME/reproduce/MODEL/VERSION-or-ALIAS)"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster")
    ] = None,
    pipelines_options: Annotated[
        Path | None,
        typer.Option(
            help="the model was trained by the pipelines: their options (JSON, as "
            "keel.pipelines.local.build_executors takes them); the training set is then "
            "re-materialised from the offline event log under --home (default: the options "
            "the pipelines recorded in KEEL_HOME or KEEL_HOME/demo/loop for this model)"
        ),
    ] = None,
    pipelines_db: Annotated[
        Path | None,
        typer.Option(help="pipelines database (default: $KEEL_HOME/pipelines/pipelines.db)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Rebuild MODEL@ALIAS from its recorded data, code, lock and parameters on CPU, and
    compare the new artifact's digest with the registered one. Exit 0 only when identical."""
    from keel.pipelines import PipelinesError
    from keel.pipelines.reproduce import parse_target
    from keel.pipelines.reproduce import reproduce as run
    from keel.registry_client import RegistryError
    from keel.trainer import TrainerError

    try:
        model, ref = parse_target(target)
    except PipelinesError as e:
        raise _fail(str(e)) from None
    job = None
    if job_file is not None:
        from keel.trainer import load_job

        try:
            job = load_job(job_file)
        except TrainerError as e:
            raise _fail(str(e)) from None
    options = None
    if pipelines_options is not None:
        try:
            options = json.loads(pipelines_options.read_text())
        except OSError as e:
            raise _fail(f"cannot read {pipelines_options}: {e.strerror or e}") from None
        except ValueError as e:
            raise _fail(f"{pipelines_options} is not JSON: {e}") from None
    from keel.pipelines.reproduce import PipelinesSource

    root = _home(home)
    source, default_key, default_trust = None, None, None
    if options is not None:
        source = PipelinesSource(root, options, pipelines_db)
    elif job_file is None and data is None and (found := recorded_pipelines(root, model)):
        phome, options = found
        source = PipelinesSource(phome, options, pipelines_db)
        default_key, default_trust = _pipelines_keys(phome, options)
        if tracking_uri is None:  # that home's registry (or the server its options name)
            home = phome
            tracking_uri = options.get("registry_tracking_uri")
            db_url = options.get("registry_db_url")
        err_console.print(
            f"{model}: trained by the pipelines in {phome} (their recorded options)",
            highlight=False,
        )
    key, policy = _signing_key(signing_key, default_key), _trust(trust, default_trust)
    _, reg = open_home_registry(home, tracking_uri, db_url)
    try:
        verdict = run(
            reg,
            model,
            ref,
            work_dir=work_dir or root / "reproduce" / model / ref,
            signing_key=key,
            trust=policy,
            repo=repo,
            data=data,
            job=job,
            lock_file=lock_file,
            ray_address=ray_address,
            pipelines=source,
        )
    except (PipelinesError, TrainerError, RegistryError) as e:
        raise _fail(str(e)) from None
    finally:
        reg.close()
    if as_json:
        typer.echo(json.dumps(verdict.to_dict(), sort_keys=True))
    else:
        for c in verdict.checks:
            mark = "[green]=[/]" if c.same else "[red]≠[/]"
            note = f" ({c.detail})" if c.same and c.detail else ""
            console.print(f"  {mark} {c.link}: {c.found}{note}", highlight=False)
        head = {
            "identical": "[bold green]identical[/]",
            "differs": f"[bold red]differs[/] at {verdict.link}",
            "refused": f"[bold red]refused[/]: {verdict.link} unavailable",
        }[verdict.status]
        console.print(f"{model}@{ref} (version {verdict.version}): {head}", highlight=False)
        console.print(verdict.message, highlight=False)
    if verdict.status == "differs":
        raise typer.Exit(1)
    if verdict.status == "refused":
        raise typer.Exit(2)
