"""Lightning's strategies with adapters inside, on the CPU: DDP and FSDP2 with 2 gloo processes.

Each fit runs the real CLI in a child process (Lightning relaunches the command for rank 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fit_debug, run_cli, write_tiny_vit_weights
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

FSDP2 = {
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_vit_weights(tmp_path_factory.mktemp("w") / "vit.safetensors"))


def fit(folder: Path, weights: str, *extra: str, trainer: dict | None = None, model: dict | None = None) -> Path:
    overlay = {
        "trainer": {
            "default_root_dir": str(folder),
            "enable_progress_bar": False,
            "max_steps": 4,
            "val_check_interval": 2,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder)}},
            **(trainer or {}),
        },
        "model": {"pretrained": True, "checkpoint_path": weights, **(model or {})},
        "data": {"init_args": {"augment": False}},
    }
    return fit_debug(folder, overlay, *extra)


def last_checkpoint(folder: Path) -> dict:
    return torch.load(next(folder.rglob("last.ckpt")), map_location="cpu", weights_only=True)


def test_ddp_trains_syncs_checkpoints_and_resumes(tmp_path, weights):
    dump = {"class_path": "helpers.RankDump", "init_args": {"folder": str(tmp_path / "ranks")}}
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    run = fit(
        tmp_path / "ddp",
        weights,
        "--trainer.callbacks+",
        yaml.safe_dump(dump, default_flow_style=True),
        trainer=ddp,
        model={"activation_checkpointing": True},
    )
    ranks = [load_file(tmp_path / "ranks" / f"rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert ranks[0]["blocks.0.attn.qkv.amps_B"].abs().sum() > 0  # it trained
    assert len(list(run.rglob("spectra.png"))) == 1  # rank zero alone writes plots
    assert last_checkpoint(run)["global_step"] == 4

    resumed = fit(
        tmp_path / "resumed", weights, "--ckpt_path", str(next(run.rglob("last.ckpt"))), trainer={**ddp, "max_steps": 6}
    )
    assert last_checkpoint(resumed)["global_step"] == 6


def test_fsdp2_matches_an_unsharded_run(tmp_path, weights):
    sharded = fit(tmp_path / "fsdp2", weights, trainer={"accelerator": "cpu", "devices": 2, "strategy": FSDP2})
    single = fit(tmp_path / "single", weights, trainer={"accelerator": "cpu", "devices": 1})
    a, b = last_checkpoint(sharded)["state_dict"], last_checkpoint(single)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert type(a[key]) is torch.Tensor and a[key].shape == b[key].shape, key  # full, not DTensor shards
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(a["backbone.blocks.0.attn.qkv.amps_B"], torch.zeros(8))
    # the spectra, measured block by block on the sharded model, are those of the unsharded one
    spectra = [json.loads(next(f.rglob("spectra.json")).read_text())["history"][-1] for f in (sharded, single)]
    assert list(spectra[0]["layers"]) == list(spectra[1]["layers"]) and spectra[0]["diagnostics"].keys()
    for name, layer in spectra[0]["layers"].items():
        other = spectra[1]["layers"][name]
        assert abs(layer["effective_rank"] - other["effective_rank"]) < 1e-3, name
        assert abs(layer["relative_norm"] - other["relative_norm"]) < 1e-4 * max(other["relative_norm"], 1), name

    out = tmp_path / "export"
    for folder, name in ((sharded, "fsdp2"), (single, "single")):
        ckpt = str(next(folder.rglob("last.ckpt")))
        done = run_cli(
            "export", "--ckpt_path", ckpt, "--output_dir", str(out / name), "--formats", "[peft]", cwd=folder
        )
        assert done.returncode == 0, done.stderr[-2000:]
    pa = load_file(out / "fsdp2" / "peft" / "adapter_model.safetensors")
    pb = load_file(out / "single" / "peft" / "adapter_model.safetensors")
    assert pa.keys() == pb.keys()
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp2_distributed_checkpoint_resumes_and_exports(tmp_path, weights):
    dcp = {**FSDP2, "init_args": {**FSDP2["init_args"], "save_distributed_checkpoint": True}}
    first = fit(tmp_path / "first", weights, trainer={"accelerator": "cpu", "devices": 2, "strategy": dcp})
    folder = next(first.rglob("last.ckpt"))
    assert folder.is_dir() and (folder / ".metadata").is_file()  # a DCP folder, one shard per rank
    resumed = fit(
        tmp_path / "resumed",
        weights,
        "--ckpt_path",
        str(folder),
        trainer={"accelerator": "cpu", "devices": 2, "strategy": dcp, "max_steps": 6},
    )
    out = tmp_path / "export"
    done = run_cli(
        "export", "--ckpt_path", str(next(resumed.rglob("last.ckpt"))), "--output_dir", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "peft" / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    from genlora_pl.checkpoints import read_checkpoint

    assert read_checkpoint(next(resumed.rglob("last.ckpt")))["global_step"] == 6
