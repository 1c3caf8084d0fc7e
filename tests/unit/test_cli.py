"""CLI helpers: shipped configs by bare name, config files checked before the parser sees them."""

from __future__ import annotations

import pytest

from genlora_pl.cli import check_config_files, resolve_config_names, shipped_configs


def test_bare_names_find_shipped_configs_and_real_paths_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = str(shipped_configs() / "vit_cifar.yaml")
    assert resolve_config_names(["fit", "--config", "vit_cifar.yaml"]) == ["fit", "--config", shipped]
    assert resolve_config_names(["fit", "--config=vit_cifar"]) == ["fit", f"--config={shipped}"]
    (tmp_path / "vit_cifar.yaml").write_text("trainer: {}\n")
    assert resolve_config_names(["fit", "--config", "vit_cifar.yaml"]) == ["fit", "--config", "vit_cifar.yaml"]
    assert resolve_config_names(["fit", "--config", "sub/none.yaml"]) == ["fit", "--config", "sub/none.yaml"]


def test_config_files_that_hold_no_sections(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "list.yaml").write_text("- trainer\n")
    with pytest.raises(ValueError, match="the config file .*empty.yaml is empty"):
        check_config_files(["fit", "--config", str(tmp_path / "empty.yaml")])
    with pytest.raises(ValueError, match="holds a YAML list, not a mapping of sections"):
        check_config_files(["fit", f"--config={tmp_path / 'list.yaml'}"])
    check_config_files(["fit", "--config", str(shipped_configs() / "debug.yaml")])
