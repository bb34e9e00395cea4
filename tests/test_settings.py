"""Settings come from defaults, the YAML file and env vars, in that order of precedence."""

from pathlib import Path

import pytest

from infra.settings import Settings


def test_yaml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "recsys.yaml"
    cfg.write_text("data_dir: /data/x\nbroker:\n  port: 1111\ntopics:\n  events: clicks\n")
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    monkeypatch.setenv("RECSYS_BROKER__PORT", "2222")
    s = Settings()
    assert s.topics.events == "clicks"
    assert s.broker.bootstrap == "127.0.0.1:2222"
    assert s.paths.run_dir == Path("/data/x/run")


def test_production_bootstrap_servers_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_BROKER__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert Settings().broker.bootstrap == "k1:9092,k2:9092"


def test_missing_named_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="unset RECSYS_CONFIG"):
        Settings()


def test_unknown_keys_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "recsys.yaml"
    cfg.write_text("brokr:\n  port: 1\n")
    monkeypatch.setenv("RECSYS_CONFIG", str(cfg))
    with pytest.raises(Exception, match="brokr"):
        Settings()
