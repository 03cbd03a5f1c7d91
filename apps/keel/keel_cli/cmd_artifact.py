"""`keel artifact build|verify|inspect|diff|keygen`: signed model artifacts (keel.artifacts).

Wiring only: every command calls into keel.artifacts, whose errors (ArtifactError) become
one clear line and exit code 1 in main(). Keys are PEM files; the private key may be
encrypted with a password read from an environment variable (never from the command line).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Model artifacts: build, sign, verify, inspect, diff; key pairs.")
console = Console()
err_console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {msg}")
    return typer.Exit(code)


def _password(env: str | None) -> bytes | None:
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise _fail(f"--password-env {env}: the variable is not set")
    return value.encode()


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for NAME.key and NAME.pub")],
    name: Annotated[str, typer.Option(help="file name stem")] = "keel",
    password_env: Annotated[
        str | None, typer.Option(help="encrypt the private key with the password in this env var")
    ] = None,
) -> None:
    """Create a P-256 signing key pair (NAME.key, mode 0600; NAME.pub to give to loaders)."""
    from keel.artifacts import generate_keypair

    priv, pub = generate_keypair(_password(password_env))
    out.mkdir(parents=True, exist_ok=True)
    key, pubf = out / f"{name}.key", out / f"{name}.pub"
    if key.exists() or pubf.exists():
        raise _fail(f"{key} or {pubf} already exists; refusing to overwrite a key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    pubf.write_bytes(pub)
    typer.echo(f"private key: {key}\npublic key:  {pubf}")


@app.command()
def build(
    spec: Annotated[
        Path, typer.Option(help="artifact spec (JSON: name, architecture, schemas, ...)")
    ],
    weights: Annotated[Path, typer.Option(help="weights as a .safetensors file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="artifact directory to create")],
    file: Annotated[
        list[str] | None, typer.Option("--file", help="extra payload REL=PATH (repeatable)")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="PEM private key to sign with")] = None,
    password_env: Annotated[
        str | None, typer.Option(help="env var holding the key's password")
    ] = None,
    archive: Annotated[
        Path | None, typer.Option(help="also write the single-file archive (.tar)")
    ] = None,
    lock: Annotated[
        Path | None, typer.Option(help="lockfile whose SHA-256 becomes dependency_lock_hash")
    ] = None,
    git: Annotated[
        bool, typer.Option(help="record this checkout's commit and dirty flag as the code version")
    ] = False,
) -> None:
    """Build (and sign) an artifact from a spec and a safetensors file; prints its digest."""
    import msgspec

    from keel.artifacts import ArtifactSpec, SigningKey, build_artifact

    try:
        art_spec = msgspec.json.decode(spec.read_bytes(), type=ArtifactSpec, strict=True)
    except OSError as e:
        raise _fail(f"cannot read {spec}: {e}") from None
    except msgspec.DecodeError as e:
        raise _fail(f"{spec}: {e}") from None
    if lock is not None:
        try:
            digest = hashlib.sha256(lock.read_bytes()).hexdigest()
        except OSError as e:
            raise _fail(f"cannot read {lock}: {e}") from None
        art_spec = msgspec.structs.replace(art_spec, dependency_lock_hash=f"sha256:{digest}")
    if git:
        art_spec = msgspec.structs.replace(art_spec, code=_git_version())
    extras: dict[str, str | Path | bytes] = {}
    for item in file or []:
        rel, sep, src = item.partition("=")
        if not sep or not rel or not src:
            raise _fail(f"--file {item!r}: expected REL=PATH")
        extras[rel] = Path(src)
    signer = SigningKey.from_file(key, _password(password_env)) if key else None
    if signer is None:
        err_console.print("[yellow]warning:[/] building an UNSIGNED artifact (no --key)")
    built = build_artifact(
        out, art_spec, weights, files=extras, signing_key=signer, archive=archive
    )
    typer.echo(
        f"artifact: {built.path}" + (f"\narchive:  {built.archive}" if built.archive else "")
    )
    typer.echo(f"digest:   {built.digest}")


def _git_version() -> Any:
    from keel.artifacts import CodeVersion

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise _fail(f"--git: cannot read the checkout's commit: {e}") from None
    return CodeVersion(commit=commit, dirty=dirty)


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="artifact directory or archive")],
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", "-t", help="trusted public key (repeatable)")
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option(help="accept an unsigned artifact (logged)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Verify signature, manifest and every file hash (nothing is deserialised)."""
    from keel.artifacts import TrustPolicy, verify_artifact

    policy = TrustPolicy.from_files(trust or [], allow_unsigned=allow_unsigned)
    v = verify_artifact(path, policy)
    result = {
        "ok": True,
        "name": v.manifest.name,
        "digest": v.digest,
        "signed": v.signer is not None,
        "signer_key_sha256": v.signer,
        "bytes": v.verified_bytes,
    }
    if as_json:
        console.print_json(json.dumps(result))
    else:
        who = f"signed by key {v.signer[:16]}…" if v.signer else "[yellow]UNSIGNED[/]"
        console.print(f"[green]verified[/] {v.manifest.name} {v.digest} ({who})", soft_wrap=True)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "—"


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="artifact directory or archive")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show the manifest (contract, lineage, files). Does NOT verify: use `verify`."""
    import msgspec

    from keel.artifacts import read_manifest

    m, digest = read_manifest(path)
    if as_json:
        console.print_json(json.dumps({"digest": digest, "manifest": msgspec.to_builtins(m)}))
        return
    t = Table(title=f"{m.name} — {digest} (not verified)", show_header=False)
    t.add_row("format", f"{m.format} {m.format_version}")
    t.add_row("architecture", f"{m.architecture.builder}({_kv(m.architecture.args)})")
    t.add_row("inputs", ", ".join(f"{f.name}:{f.dtype}" for f in m.input_schema))
    t.add_row("outputs", ", ".join(f"{f.name}:{f.dtype}" for f in m.output_schema))
    t.add_row("feature views", ", ".join(f"{v.name}@{v.version}" for v in m.feature_views) or "—")
    t.add_row("training data", m.training_data_fingerprint or "—")
    t.add_row("code", f"{m.code.commit or '—'}{' (dirty)' if m.code.dirty else ''}")
    t.add_row("dependency lock", m.dependency_lock_hash or "—")
    t.add_row("keel version", m.keel_version)
    t.add_row("metrics", _kv(m.metrics))
    t.add_row(
        "runtime config",
        ", ".join(f"{k}:{v.type}" for k, v in sorted(m.runtime_config.items())) or "—",
    )
    for f in m.files:
        t.add_row(f"file {f.path}", f"{f.size} B  sha256:{f.sha256[:16]}…")
    console.print(t)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="first artifact (directory or archive)")],
    b: Annotated[Path, typer.Argument(help="second artifact")],
    as_json: Annotated[bool, typer.Option("--json", help="print the changes as JSON")] = False,
) -> None:
    """Two manifests side by side: what changed in data, code, dependencies, metrics, contract."""
    from keel.artifacts import diff_manifests, read_manifest

    (ma, da), (mb, db) = read_manifest(a), read_manifest(b)
    changes = diff_manifests(ma, mb)
    if as_json:
        rows = [c.__dict__ for c in changes]
        console.print_json(json.dumps({"a": da, "b": db, "changes": rows}, default=str))
        return
    t = Table(title=f"{da[:19]}… → {db[:19]}…")
    for col in ("section", "key", str(a), str(b)):
        t.add_column(col)
    for c in changes:
        t.add_row(
            c.section, c.key, json.dumps(c.before, default=str), json.dumps(c.after, default=str)
        )
    console.print(t if changes else "[green]identical manifests[/]")
