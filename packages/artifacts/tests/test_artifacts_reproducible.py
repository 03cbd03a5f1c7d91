"""Byte-identical builds: different processes, checkout paths, time zones, locales, umasks."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from artifacts_testdata import Keys

BUILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from artifacts_testdata import build
from keel.artifacts import SigningKey
import artifacts_testdata as td
os.umask(int(sys.argv[4], 8))
keys = td.Keys.__new__(td.Keys)
keys.key = SigningKey.from_pem(Path(sys.argv[3]).read_bytes())
out = Path(sys.argv[2])
build(out, keys, archive=out / "a.tar")
"""


def _build_in_child(
    tmp: Path, tests_dir: Path, key: Path, env: dict[str, str], umask: str
) -> bytes:
    tmp.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", BUILD, str(tests_dir), str(tmp), str(key), umask],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p),
            **env,
        },
        cwd=tmp,
        check=True,
    )
    return (tmp / "a.tar").read_bytes()


def test_two_builds_in_different_environments_are_byte_identical(tmp_path: Path) -> None:
    keys = Keys()
    key = tmp_path / "k.pem"
    key.write_bytes(keys.priv)
    tests_dir = Path(__file__).parent
    a = _build_in_child(
        tmp_path / "one",
        tests_dir,
        key,
        {"TZ": "UTC", "LC_ALL": "C", "SOURCE_DATE_EPOCH": "1700000000"},
        "022",
    )
    b = _build_in_child(
        tmp_path / "deeper" / "checkout" / "two",
        tests_dir,
        key,
        {
            "TZ": "Asia/Kolkata",
            "LC_ALL": "C.UTF-8",
            "LANG": "de_DE.UTF-8",
            "SOURCE_DATE_EPOCH": "1700000000",
        },
        "077",
    )
    assert a == b
    with tarfile.open(tmp_path / "one" / "a.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {
        (1700000000, 0, 0, 0o644, "", "")
    }
    # the directories too: same manifests, same digests
    for rel in ("a/manifest.json", "a/model.sig", "a/weights.safetensors"):
        assert (tmp_path / "one" / rel).read_bytes() == (
            tmp_path / "deeper/checkout/two" / rel
        ).read_bytes()


def test_source_date_epoch_changes_only_archive_mtimes(tmp_path: Path) -> None:
    from artifacts_testdata import build

    from keel.artifacts import TrustPolicy, verify_artifact

    a = build(tmp_path, None, name="a", archive=tmp_path / "a.tar", source_date_epoch_s=0)
    b = build(tmp_path, None, name="b", archive=tmp_path / "b.tar", source_date_epoch_s=86400)
    pol = TrustPolicy.unsigned_ok()
    assert verify_artifact(a, pol).digest == verify_artifact(b, pol).digest
    with tarfile.open(tmp_path / "b.tar") as tf:
        assert {m.mtime for m in tf.getmembers()} == {86400}
