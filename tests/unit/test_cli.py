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
    # the repository's configs/ path, run where there is no configs/ folder (the Docker image)
    assert resolve_config_names(["fit", "--config", "configs/vit_cifar.yaml"]) == ["fit", "--config", shipped]
    assert resolve_config_names(["fit", "--config", "configs/none.yaml"]) == ["fit", "--config", "configs/none.yaml"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "vit_cifar.yaml").write_text("trainer: {}\n")
    own = ["fit", "--config", "configs/vit_cifar.yaml"]
    assert resolve_config_names(own) == own


def test_config_files_that_hold_no_sections(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "list.yaml").write_text("- trainer\n")
    with pytest.raises(ValueError, match="the config file .*empty.yaml is empty"):
        check_config_files(["fit", "--config", str(tmp_path / "empty.yaml")])
    with pytest.raises(ValueError, match="holds a YAML list, not a mapping of sections"):
        check_config_files(["fit", f"--config={tmp_path / 'list.yaml'}"])
    check_config_files(["fit", "--config", str(shipped_configs() / "debug.yaml")])


def test_no_shipped_config_ties_a_step_interval_to_its_data_size():
    """An integer val_check_interval counts batches of one epoch unless check_val_every_n_epoch is
    null; then a user's smaller file (fewer batches than the interval) stops the fit before it starts."""
    import yaml

    from genlora_pl.cli import shipped_configs

    checked = 0
    for path in sorted(shipped_configs().glob("*.yaml")):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer", {})
        interval = trainer.get("val_check_interval")
        if isinstance(interval, int) and not isinstance(interval, bool):
            checked += 1
            assert "check_val_every_n_epoch" in trainer and trainer["check_val_every_n_epoch"] is None, path.name
    assert checked >= 3


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--model.init_args.lerning_rate", "0.1"],
            "--model.init_args.lerning_rate 0.1 (genlora_pl.ClassificationModule takes no setting 'lerning_rate'); "
            "did you mean --model.optimizer.init_args.lr?",
        ),
        (["--adapter.rank", "4"], "unrecognized arguments: --adapter.rank 4; did you mean --adapter.r?"),
        (["--adapter.taget_modules", "x"], "did you mean --adapter.target_modules?"),
        (["--data.init_args.bach_size", "3"], "did you mean --data.init_args.batch_size?"),
    ],
)
def test_a_mistyped_key_is_quoted_as_typed_with_the_closest_setting(args, said, capsys):
    from genlora_pl.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "debug.yaml", *args])
    assert stop.value.code == 2
    assert said in capsys.readouterr().err


def test_a_mistyped_key_in_a_yaml_file_names_the_file(tmp_path, capsys):
    from genlora_pl.__main__ import main

    typo = tmp_path / "mine.yaml"
    typo.write_text("adapter:\n  rank: 4\n")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "debug.yaml", "--config", str(typo)])
    assert stop.value.code == 2
    assert f"does not accept option 'adapter.rank' (in {typo}); did you mean adapter.r?" in capsys.readouterr().err
