"""The pyfunc loader's trust policy from the environment: pure lookups, no MLflow store.
(Model builders are keel.artifacts': packages/artifacts/tests/test_artifacts_builders.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.artifacts import TrustPolicy, generate_keypair
from keel.registry_client import InvalidInputError


def test_trust_policy_from_the_environment(tmp_path: Path) -> None:
    from keel.registry_client.pyfunc import UntrustedLoadError, trust_policy_from_env

    _, pub = generate_keypair()
    key = tmp_path / "keys" / "a.pub"
    key.parent.mkdir()
    key.write_bytes(pub)
    with pytest.raises(UntrustedLoadError, match="KEEL_TRUSTED_KEYS"):
        trust_policy_from_env({})
    assert trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(key)}).public_keys == (pub,)
    both = trust_policy_from_env({"KEEL_TRUSTED_KEYS": f"{key.parent}:{key}"})
    assert both.public_keys == (pub, pub) and not both.allow_unsigned
    assert trust_policy_from_env({"KEEL_ALLOW_UNSIGNED": "1"}) == TrustPolicy.unsigned_ok()
    with pytest.raises(InvalidInputError, match="KEEL_ALLOW_UNSIGNED"):
        trust_policy_from_env({"KEEL_ALLOW_UNSIGNED": "perhaps"})
    with pytest.raises(InvalidInputError, match="no key file"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "nope.pub")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "empty")})
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(InvalidInputError, match="KEEL_TRUSTED_KEYS"):
        trust_policy_from_env({"KEEL_TRUSTED_KEYS": str(tmp_path / "bad.pub")})
