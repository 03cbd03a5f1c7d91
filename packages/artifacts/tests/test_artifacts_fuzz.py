"""Fuzz: mutations of a valid artifact never let anything but ArtifactError escape.

Three layers, each fed byte-level mutations (flip, overwrite, truncate, extend, splice):
the full load path on a signed artifact (refused by signature/hashes), the same with the
mutated file re-sealed by the trusted key (so Keel's safetensors validator, the manifest
parser and safetensors itself see hostile bytes), and the archive reader.
The expensive profile runs >= 10,000 mutations per layer; the fast profile a few dozen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
from artifacts_testdata import Keys, build, reseal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel.artifacts import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    load_artifact,
    validate_header,
)

EXPENSIVE = os.environ.get("KEEL_HYPOTHESIS_PROFILE") == "expensive"
N = 10_000 if EXPENSIVE else 40
CFG = {"feature_url": "redis://x"}
FILES = (WEIGHTS_FILE, MANIFEST_FILE, "profile.json", "model.sig")

mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(b"")),
    st.tuples(st.just("extend"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, m: tuple[str, int, object]) -> bytes:
    kind, pos, arg = m
    if not data:
        return bytes([1])
    i = pos % len(data)
    if kind == "flip":
        assert isinstance(arg, int)
        return data[:i] + bytes([data[i] ^ arg]) + data[i + 1 :]
    if kind == "set":
        assert isinstance(arg, bytes)
        return data[:i] + arg + data[i + len(arg) :]
    if kind == "truncate":
        return data[:i]
    assert isinstance(arg, bytes)
    return data[:i] + arg + data[i:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    tmp = tmp_path_factory.mktemp("fuzz")
    keys = Keys()
    d = build(tmp, keys, archive=tmp / "a.tar")
    return d, keys


def _try(path: Path, keys: Keys, framework: str = "numpy", engine: str = "keel") -> None:
    with contextlib.suppress(ArtifactError):
        load_artifact(path, keys.policy, framework=framework, engine=engine, runtime_config=CFG)  # type: ignore[arg-type]


SETTINGS = settings(max_examples=N, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(
    rel=st.sampled_from(FILES),
    m=mutations,
    resealed=st.booleans(),
    framework=st.sampled_from(["numpy", "torch"]),
    engine=st.sampled_from(["keel", "safetensors"]),
)
def test_mutated_artifact_only_raises_artifact_error(
    pristine: tuple[Path, Keys],
    tmp_path_factory: pytest.TempPathFactory,
    rel: str,
    m: tuple[str, int, object],
    resealed: bool,
    framework: str,
    engine: str,
) -> None:
    d, keys = pristine
    work = tmp_path_factory.mktemp("m", numbered=True)
    a = work / "a"
    shutil.copytree(d, a)
    p = a / rel
    p.write_bytes(mutate(p.read_bytes(), m))
    if resealed and rel in (WEIGHTS_FILE, "profile.json"):
        reseal(a, keys.key)
    _try(a, keys, framework, engine)
    shutil.rmtree(work)


@SETTINGS
@given(m=st.lists(mutations, min_size=1, max_size=3))
def test_mutated_weights_header_only_raises_artifact_error(
    pristine: tuple[Path, Keys], m: list[tuple[str, int, object]]
) -> None:
    data = (pristine[0] / WEIGHTS_FILE).read_bytes()
    for one in m:
        # aim at the header: positions within the first 8 + header bytes
        kind, pos, arg = one
        data = mutate(data, (kind, pos % 400, arg))
    with contextlib.suppress(ArtifactError):
        validate_header(data, len(data))


@SETTINGS
@given(m=mutations)
def test_mutated_archive_only_raises_artifact_error(
    pristine: tuple[Path, Keys],
    tmp_path_factory: pytest.TempPathFactory,
    m: tuple[str, int, object],
) -> None:
    d, keys = pristine
    work = tmp_path_factory.mktemp("t", numbered=True)
    a = work / "a.tar"
    a.write_bytes(mutate((d.parent / "a.tar").read_bytes(), m))
    _try(a, keys)
    shutil.rmtree(work)
