from pathlib import Path

import pytest
from keel_cli.config import ConfigError, load_config


def test_defaults_when_nothing_is_set() -> None:
    cfg = load_config(env={})
    assert cfg.home == Path(".keel")
    assert cfg.nats_url == "nats://127.0.0.1:4222"
    assert cfg.ray_address is None


def test_env_overrides_toml(tmp_path: Path) -> None:
    toml = tmp_path / "keel.toml"
    toml.write_text('[keel]\nhome = "/srv/keel"\nredis_url = "redis://cache:6379/1"\n')
    cfg = load_config(env={"KEEL_CONFIG": str(toml), "KEEL_HOME": "/data/keel"})
    assert cfg.home == Path("/data/keel")  # env wins
    assert cfg.redis_url == "redis://cache:6379/1"  # from TOML


def test_unknown_toml_key_is_rejected_with_its_name(tmp_path: Path) -> None:
    toml = tmp_path / "keel.toml"
    toml.write_text('[keel]\nredis_uri = "redis://x"\n')
    with pytest.raises(ConfigError, match="redis_uri"):
        load_config(env={"KEEL_CONFIG": str(toml)})


def test_bad_url_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match=r"nats_url \(env KEEL_NATS_URL\)"):
        load_config(env={"KEEL_NATS_URL": "http://127.0.0.1:4222"})


def test_missing_config_file_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={"KEEL_CONFIG": str(tmp_path / "nope.toml")})


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    toml = tmp_path / "keel.toml"
    toml.write_text("[keel\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={"KEEL_CONFIG": str(toml)})
