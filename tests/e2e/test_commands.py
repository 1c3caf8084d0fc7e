"""The real CLI, end to end, in-process (``main`` is what ``python -m genlora_pl`` runs)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, write_text_csv, write_tiny_bert, write_tiny_vit_weights

from genlora_pl.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def overlay(tmp_path: Path, **sections) -> str:
    """A second --config file: where to write, which logger, plus any overrides."""
    data = {
        "trainer": {
            "default_root_dir": str(tmp_path),
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
        }
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory) -> str:
    return str(write_tiny_vit_weights(tmp_path_factory.mktemp("w") / "vit.safetensors"))


def vit_fit(tmp_path: Path, weights: str, *extra: str, **sections) -> list[str]:
    model = {"pretrained": True, "checkpoint_path": weights, **sections.pop("model", {})}
    data = {"init_args": {"augment": False, **sections.pop("data", {})}}
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "debug.yaml"),
        "--config",
        overlay(tmp_path, model=model, data=data, **sections),
        *extra,
    ]


def metrics_columns(tmp_path: Path) -> set[str]:
    files = list(tmp_path.rglob("metrics.csv"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return set(next(csv.reader(f)))


def test_top_level_help_is_fast_and_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genlora_pl", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in out.stdout and "export" in out.stdout
    imported = out.stderr
    assert " torch" not in imported and "lightning" not in imported  # nothing heavy is imported


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses_through_the_cli(config, capsys):
    text = config.read_text()
    assert text.splitlines()[0].startswith("# "), "every YAML opens with a comment saying what it is for"
    commands = [line.lstrip("# ").split("  #")[0].strip() for line in text.splitlines() if line.startswith("#")]
    command = next(c for c in commands if c.startswith("python -m genlora_pl fit") and f"configs/{config.name}" in c)
    assert command.startswith("python -m genlora_pl fit --config configs/"), command
    files = [str(ROOT / arg) for arg in command.split() if arg.startswith("configs/")]  # an overlay names its base
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *[x for f in files for x in ("--config", f)], "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["backbone"] and printed["adapter"]["method"] in ("genlora", "lora", "none")


def test_fit_timm_end_to_end_writes_logs_plots_and_small_checkpoints(tmp_path, vit_weights, capsys):
    assert main(vit_fit(tmp_path, vit_weights)) == 0
    columns = metrics_columns(tmp_path)
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_top5",
        "adapter/effective_rank/mean",
        "adapter/stable_rank/mean",
        "adapter/energy_rank/mean",
        "adapter/top_singular_value/mean",
        "adapter/relative_norm/mean",
        "adapter/center_drift_A/mean",
        "adapter/center_min_scaled_distance_A/min",
    ):
        assert key in columns, key
    # per-layer figures stay out of metrics.csv (spectra.json and TensorBoard have them)
    assert not [c for c in columns if "blocks." in c]
    assert len(columns) < 40, sorted(columns)
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["parameters"]["adapted_layers"] == 8 and results["global_step"] == 6
    assert 0 <= results["best"]["val/acc"] <= 1 and "val/acc" in results["final"]
    for name in ("spectra.png", "diagnostics.png", "spectra.json"):
        files = list(tmp_path.rglob(name))
        assert files and files[0].stat().st_size > 1000, name
    history = json.loads(next(tmp_path.rglob("spectra.json")).read_text())["history"]
    assert [h["step"] for h in history] == [0, 2, 4, 6]
    assert history[-1]["layers"]["blocks.0.attn.qkv"]["effective_rank"] > 0
    out = capsys.readouterr()
    assert "Adapter summary" in out.out + out.err and "best val/acc" in out.out + out.err

    ckpt = next(tmp_path.rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    saved = sum(v.numel() for v in state.values())
    assert saved < 0.05 * 930_000  # adapters + head, not the frozen backbone
    assert all("base_layer" not in k for k in state)


def test_fit_hf_text_end_to_end_and_export(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert")
    data_file = write_text_csv(tmp_path / "train.csv")
    args = [
        "fit",
        "--config",
        overlay(
            tmp_path,
            trainer={"max_steps": 4, "accelerator": "cpu", "limit_val_batches": 1, "val_check_interval": 2},
            adapter={"method": "lora", "r": 4, "log_every_n_steps": 2},
            model={"backbone": f"hf:{bert}"},
            data={
                "class_path": "genlora_pl.data.TextClassificationData",
                "init_args": {"train_file": str(data_file), "batch_size": 8, "max_length": 16},
            },
        ),
    ]
    assert main(args) == 0
    columns = metrics_columns(tmp_path)
    assert "val/acc" in columns and "adapter/effective_rank/mean" in columns
    assert "val/acc_top5" not in columns  # two classes: no top-5
    assert "adapter/center_drift_A/mean" not in columns  # LoRA has no RBF centres

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from genlora_pl.checkpoints import read_checkpoint
    from genlora_pl.export import restore_module

    ckpt = next(tmp_path.rglob("*.ckpt"))  # the trainer's default checkpoint
    assert main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "export")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "merged").eval()
    batch = AutoTokenizer.from_pretrained(tmp_path / "export" / "merged")(["goal win today"], return_tensors="pt")
    with torch.no_grad():
        expected = restore_module(read_checkpoint(ckpt))(dict(batch))
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_resumed_run_ends_with_the_same_adapters(tmp_path, vit_weights):
    common = {
        "trainer": {
            "max_steps": -1,
            "limit_train_batches": 3,
            "val_check_interval": None,
            "check_val_every_n_epoch": 1,  # validation at epoch ends: debug.yaml counts steps over epochs
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
        },
        "adapter": {"log_every_n_steps": 2, "dropout": 0.0},
    }

    def run(folder: Path, epochs: int, *extra: str) -> dict:
        trainer = {**common["trainer"], "max_epochs": epochs}
        assert main(vit_fit(folder, vit_weights, *extra, trainer=trainer, adapter=common["adapter"])) == 0
        return torch.load(next(folder.rglob("last.ckpt")), map_location="cpu", weights_only=True)

    full = run(tmp_path / "full", 2)
    first = run(tmp_path / "part", 1)
    assert first["global_step"] == 3
    resumed = run(tmp_path / "resumed", 2, "--ckpt_path", str(next((tmp_path / "part").rglob("last.ckpt"))))
    assert resumed["global_step"] == full["global_step"] == 6
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(
        first["state_dict"]["backbone.blocks.0.attn.qkv.latent_A"],
        full["state_dict"]["backbone.blocks.0.attn.qkv.latent_A"],
    )


def test_export_subcommand_writes_merged_peft_and_adapter(tmp_path, vit_weights):
    import timm
    from peft import PeftModel
    from safetensors.torch import load_file

    from genlora_pl.checkpoints import read_checkpoint
    from genlora_pl.export import restore_module

    assert main(vit_fit(tmp_path, vit_weights)) == 0
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "export"
    assert main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "merged", "peft"]

    module = restore_module(read_checkpoint(ckpt))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}
    merged = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    merged.load_state_dict(load_file(out / "merged" / "model.safetensors"))
    base = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    pretrained = {k: v for k, v in load_file(vit_weights).items() if not k.startswith("head.")}
    base.load_state_dict(pretrained, strict=False)  # the frozen weights; PEFT brings the head
    peft_model = PeftModel.from_pretrained(base, out / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(peft_model(x), expected, rtol=1e-5, atol=1e-5)
    # an existing export is not replaced without --overwrite
    assert main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(out)]) == 2
    # formats as a shell user writes them: one bare name, a comma list, a list
    for given, written in [("peft", ["peft"]), ("merged,adapter", ["adapter", "merged"]), ("[adapter]", ["adapter"])]:
        folder = tmp_path / f"export-{len(written)}-{written[0]}"
        assert main(["export", "--ckpt_path", str(ckpt), "--output_dir", str(folder), "--formats", given]) == 0
        assert sorted(p.name for p in folder.iterdir()) == written, given


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--formats", "pef"], "error: formats='pef' is not valid; give one or more of merged, peft, adapter, e.g. "
         "--formats peft or --formats merged,peft."),
        (["--formats", "peft"], "error: ckpt_path='nope.ckpt' does not exist; give a .ckpt file or a distributed "
         "checkpoint folder written by fit."),
    ],
)  # fmt: skip
def test_export_refuses_bad_arguments_before_torch_is_imported(tmp_path, args, expected):
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "genlora_pl", "export", "--ckpt_path", "nope.ckpt",
         "--output_dir", "out", *args],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == [expected]
    assert " torch" not in out.stderr and "lightning" not in out.stderr  # answered before the heavy imports
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--model.backbone", "timm:vit_does_not_exist"], "backbone='timm:vit_does_not_exist' is not a timm model"),
        (["--model.backbone", "resnet50"], "backbone='resnet50' is not valid; name it 'timm:<model>'"),
        (["--adapter.method", "vera"], "adapter='vera' is unknown; choose one of dora, genlora, lora"),
        (
            ["--data.class_path", "genlora_pl.data.ImageFolderData", "--data.init_args.root", "/no/such/folder"],
            "root='/no/such/folder' does not exist",
        ),
        (["--adapter.target_modules", "[q_proj]"], "target_modules=['q_proj'] matched no layer of VisionTransformer"),
        (["--adapter.r", "0"], "r=0 is not valid"),
        (["--trainer.max_epochs", "many"], "trainer.max_epochs='many' is not valid"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, vit_weights, capsys, extra, fragment):
    try:
        code = main(vit_fit(tmp_path, vit_weights, *extra))
    except SystemExit as exit_info:  # errors found by the argument parser exit from inside it
        code = exit_info.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and fragment in err[0], err


def test_unknown_config_key_is_one_line(tmp_path, vit_weights, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(vit_fit(tmp_path, vit_weights, "--model.no_such_key", "3"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "--model.no_such_key" in err[-1]
    assert not any(line.startswith("usage:") for line in err)


def test_errors_exit_non_zero_from_a_real_process(tmp_path):
    debug = str(ROOT / "configs" / "debug.yaml")
    out = run_cli("fit", "--config", debug, "--adapter.method", "vera", cwd=tmp_path)
    assert out.returncode == 2
    expected = (
        "error: adapter='vera' is unknown; choose one of dora, genlora, lora, or the dotted path of a module that "
        "registers one (my_pkg.my_method)."
    )
    assert out.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in out.stderr


def test_a_missing_checkpoint_is_one_line_before_anything_is_restored(tmp_path, capfd):
    missing = str(tmp_path / "nope.ckpt")
    assert main(["validate", "--config", str(ROOT / "configs" / "debug.yaml"), "--ckpt_path", missing]) == 2
    out = capfd.readouterr()
    assert "Restoring states" not in out.out + out.err
    assert out.err.strip().splitlines()[-1].startswith(f"error: ckpt_path={missing!r} does not exist")
