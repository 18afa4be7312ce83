"""Config loading: defaults, every problem named with its file and key, tenants.d/."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config import load_config, validate_tenant_id
from ingestd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "ingestd.example.toml"


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.sftp.listen == "0.0.0.0:2222"
    assert config.ingest.max_invalid_rows_percent == 1.0


def test_state_dir_from_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text("")
    assert load_config(cfg).daemon.state_dir == tmp_path / "state"


def test_every_problem_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text(
        "[ingest]\nmax_invalid_rows_percent = 150\nsetle_seconds = 3\n"
        "[sftp]\nlisten = 'nowhere'\n[daemon]\nlog_format = 'xml'\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert len(err.value.problems) == 4, text
    assert f"{cfg}: [ingest] max_invalid_rows_percent" in text
    assert f"{cfg}: [ingest] setle_seconds: unknown key" in text
    assert f"{cfg}: [sftp] listen" in text
    assert f"{cfg}: [daemon] log_format" in text


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text("[ingest\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        load_config(cfg)
    assert str(cfg) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    assert load_config(tmp_path / "nope.toml", must_exist=False).ingest.settle_seconds == 120


def test_tenants_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "ingestd.toml"
    cfg.write_text("")
    (tmp_path / "tenants.d").mkdir()
    (tmp_path / "tenants.d" / "lincoln-high.toml").write_text('name = "Lincoln High"\n')
    config = load_config(cfg)
    assert config.tenants["lincoln-high"].name == "Lincoln High"
    (tmp_path / "tenants.d" / "Bad Name.toml").write_text("")
    (tmp_path / "tenants.d" / "other.toml").write_text("colour = 'red'\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "Bad Name.toml: id: Value error, 'Bad Name' is not a valid tenant id" in str(err.value)
    assert "other.toml: colour: unknown key" in str(err.value)


@pytest.mark.parametrize("bad", ["", "A", "../x", "a/b", "-a", "x" * 64, "a b", "a.b", "é"])
def test_tenant_ids_that_could_become_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_tenant_id(bad)


@pytest.mark.parametrize("good", ["a", "lincoln-high", "d123_school", "0", "x" * 63])
def test_tenant_ids(good: str) -> None:
    assert validate_tenant_id(good) == good
