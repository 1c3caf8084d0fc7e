"""Faults a long fine-tuning job meets, each on a real fit: SIGKILL mid-epoch, SIGTERM from a
scheduler, a diverging loss, a full disk, and files killed or damaged in the middle of a write."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_cli, start_cli, wait_for, write_tiny_vit_weights

from genlora_pl.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
DEBUG = str(ROOT / "configs" / "debug.yaml")
STEPS_PER_EPOCH = 6
EVERY_STEP = {
    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
    "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_vit_weights(tmp_path_factory.mktemp("w") / "vit.safetensors"))


def overlay(folder: Path, weights: str, callbacks: list, **trainer) -> dict:
    """Two epochs of 6 steps with randomness in every step (dropout in the ViT and the adapters, the
    backbone's default image augmentation), so an exact match after a resume needs the data position,
    the RNG states and the per-sample augmentation seeds back."""
    return {
        "trainer": {
            "default_root_dir": str(folder),
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(folder), "name": "csv"},
            },
            "max_steps": -1,
            "max_epochs": 2,
            "limit_train_batches": STEPS_PER_EPOCH,
            "val_check_interval": 4,
            "limit_val_batches": 1,
            "callbacks": callbacks,
            **trainer,
        },
        "adapter": {"dropout": 0.1},
        "model": {
            "pretrained": True,
            "checkpoint_path": weights,
            "backbone_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "drop_rate": 0.1},
        },
        "data": {"init_args": {"augment": True}},
    }


def write_config(folder: Path, data: dict) -> str:
    """configs/debug.yaml with ``data`` laid over it, as one file: a second ``--config`` would merge
    its callback list into debug.yaml's item by item instead of replacing it."""

    def merge(base: dict, new: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(base.get(k), dict) else v for k, v in new.items()}}

    config = merge(yaml.safe_load(Path(DEBUG).read_text()), data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return str(folder / "config.yaml")


def adapters(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert any("latent_A" in k for k in state)
    return state


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights) -> dict[str, torch.Tensor]:
    """The adapters of the uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    fit(folder, overlay(folder, weights, [EVERY_STEP]))
    last = next(folder.rglob("last.ckpt"))
    assert step_of(last) == 2 * STEPS_PER_EPOCH
    return adapters(last)


def fit(folder: Path, data: dict, *extra: str) -> None:
    out = run_cli("fit", "--config", write_config(folder, data), *extra, cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]


def resume(folder: Path, weights: str, ckpt: Path) -> dict[str, torch.Tensor]:
    fit(folder, overlay(folder, weights, [EVERY_STEP]), "--ckpt_path", str(ckpt))
    last = max(folder.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert step_of(last) == 2 * STEPS_PER_EPOCH
    return adapters(last)


def sleeper(folder: Path, seconds: float) -> dict:
    return {"class_path": "helpers.Sleep", "init_args": {"seconds": seconds, "marker_dir": str(folder)}}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_adapters(tmp_path, weights, reference):
    killed = tmp_path / "killed"
    config = write_config(killed, overlay(killed, weights, [EVERY_STEP, sleeper(killed, 0.3)]))
    job = start_cli("fit", "--config", config, cwd=killed)
    try:
        ckpt = killed / "csv" / "version_0" / "checkpoints" / "last.ckpt"
        wait_for(lambda: ckpt.exists() and step_of(ckpt) >= 3, 180, "a checkpoint at step 3")
    finally:
        job.send_signal(signal.SIGKILL)  # no handler, no cleanup: whatever was being written stays
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    step = step_of(ckpt)  # the last checkpoint is whole, even if the kill landed in a write
    assert 3 <= step < STEPS_PER_EPOCH, "the kill must land in the middle of the first epoch"
    assert_same(reference, resume(tmp_path / "resumed", weights, ckpt))


@pytest.mark.slow
def test_the_number_of_loader_workers_does_not_change_the_result(tmp_path, weights, reference):
    folder = tmp_path / "workers"
    data = overlay(folder, weights, [EVERY_STEP])
    data["data"]["init_args"]["num_workers"] = 2
    fit(folder, data)
    assert_same(reference, adapters(next(folder.rglob("last.ckpt"))))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_resume_matches(tmp_path, weights, reference):
    stopped = tmp_path / "stopped"
    config = write_config(stopped, overlay(stopped, weights, [sleeper(stopped, 1.0)]))  # no periodic saves
    job = start_cli("fit", "--config", config, cwd=stopped)
    try:
        wait_for(lambda: (stopped / "sleeping0").exists(), 180, "the first training step")
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            job.kill()
    assert job.returncode == 143, err[-3000:]
    saved = stopped / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    step = step_of(saved)
    assert 1 <= step < STEPS_PER_EPOCH
    assert f"SIGTERM: saved the training state at step {step} to {saved}" in out
    assert_same(reference, resume(tmp_path / "resumed", weights, saved))


def debug_fit(folder: Path, weights: str, *extra: str, callbacks: list | None = None, **trainer) -> list[str]:
    data = overlay(folder, weights, callbacks if callbacks is not None else [EVERY_STEP], **trainer)
    data["trainer"]["max_epochs"] = 1
    return ["fit", "--config", write_config(folder, data), *extra]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, weights, capsys):
    poison = {"class_path": "helpers.PoisonAt", "init_args": {"step": 3}}
    assert main(debug_fit(tmp_path, weights, callbacks=[EVERY_STEP, poison])) == 2
    last = tmp_path / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: the training loss became nan at epoch 0, step 3; the run stopped before applying that update "
        f"(the last good checkpoint is {last}). Lower the learning rate or set trainer.gradient_clip_val."
    )
    assert step_of(last) == 3
    assert all(torch.isfinite(v).all() for v in adapters(last).values())


def test_non_finite_parameters_are_never_checkpointed(tmp_path, weights, capsys):
    """The parameters went NaN in an update whose loss was still finite: the next save refuses,
    so last.ckpt keeps the good state (here the poison lands after the loss, before the save)."""
    import lightning as L

    from genlora_pl.callbacks import FaultTolerance, TrainingDiverged

    model = L.LightningModule()
    model.w = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"trained parameters such as \['w'\] are NaN or Inf at step 0"):
        FaultTolerance().on_save_checkpoint(trainer, model, {})
    model.w.requires_grad_(False)  # frozen weights are not ours to judge
    FaultTolerance().on_save_checkpoint(trainer, model, {})


def test_disk_full_while_saving_fails_clearly_and_the_previous_checkpoint_survives(
    tmp_path, weights, capsys, monkeypatch
):
    import genlora_pl.checkpoints as checkpoints

    real_save, calls = torch.save, []

    def disk_fills_up(obj, path, *args, **kwargs):  # the 3rd save runs out of space half-way
        calls.append(path)
        if len(calls) < 3:
            return real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoints.torch, "save", disk_fills_up)
    code = main(debug_fit(tmp_path, weights))
    assert code == 2
    last = tmp_path / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: could not write checkpoint {last}: No space left on device; the previous last.ckpt there is "
        "unchanged. Free some space or choose another folder."
    )
    monkeypatch.undo()
    assert step_of(last) == 2  # the save of step 2 is what is left
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"], "no temporary file is left behind"


# ----------------------------------------------------------------------------- killed writers
KILLER = """
import os, signal, sys
kill_at, target = sys.argv[1], sys.argv[2]
real_replace, real_fsync = os.replace, os.fsync
def replace(a, b):
    if kill_at == "final-rename" and str(b) == target:  # a folder: the old one is already set aside
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(a, b)
def fsync(fd):
    if kill_at == "fsync":  # the first file's bytes written, nothing renamed yet
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.replace, os.fsync = replace, fsync
exec(sys.stdin.read())
"""

WRITERS = {
    "lightning checkpoint": (
        "from genlora_pl.checkpoints import AtomicCheckpointIO\n"
        "AtomicCheckpointIO().save_checkpoint({'state_dict': {'w': torch.full((256, 256), VALUE)}}, TARGET)"
    ),
    "adapter folder": "save_adapter(model(VALUE), TARGET)",
    "peft export": "from genlora_pl.export import export_peft\nexport_peft(model(VALUE), TARGET)",
    "plot": (
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "from genlora_pl.files import atomic_write\n"
        "fig = plt.figure(); fig.suptitle(str(VALUE))\n"
        "atomic_write(TARGET, lambda tmp: fig.savefig(tmp, format='png'))"
    ),
    "history": (
        "from genlora_pl.files import atomic_write_text\natomic_write_text(TARGET, json.dumps({'value': VALUE}))"
    ),
}
PRELUDE = """
import json, torch
from torch import nn
from genlora_pl import GenLoRAConfig, inject_adapters
from genlora_pl.state import save_adapter
def model(value):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    inject_adapters(m, GenLoRAConfig(r=4, target_modules=["0"]))
    with torch.no_grad():
        m[0].amps_B.fill_(value)
    return m
"""


def code(what: str, target: Path, value: float) -> str:
    return PRELUDE + WRITERS[what].replace("TARGET", repr(str(target))).replace("VALUE", repr(value))


def killed_write(what: str, target: Path, value: float, kill_at: str) -> int:
    command = [sys.executable, "-c", KILLER, kill_at, str(target)]
    return subprocess.run(command, input=code(what, target, value), text=True, capture_output=True).returncode


def snapshot(target: Path) -> dict[str, bytes]:
    files = sorted(target.rglob("*")) if target.is_dir() else [target]
    return {str(p.relative_to(target.parent)): p.read_bytes() for p in files if p.is_file()}


@pytest.mark.parametrize("kill_at", ["fsync", "final-rename"])
@pytest.mark.parametrize("what", list(WRITERS))
def test_a_writer_killed_mid_way_leaves_the_previous_file_intact(tmp_path, what, kill_at):
    from genlora_pl.files import recover_folder
    from genlora_pl.state import load_adapter

    folder = what in ("adapter folder", "peft export")
    target = tmp_path / ("out" if folder else "file")
    exec(code(what, target, 1.0), {})
    before = snapshot(target)
    assert killed_write(what, target, 2.0, kill_at) == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    if folder and kill_at == "final-rename":
        assert ".out.old" in left and "out" not in left  # the moment between the two renames
        recover_folder(target)  # what every loader and writer does first
    assert snapshot(target) == before
    exec(code(what, target, 3.0), {})  # the next save succeeds and clears what the killed one left
    assert snapshot(target) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    if what == "adapter folder":
        exec(PRELUDE, namespace := {})
        model = namespace["model"](0.0)
        load_adapter(model, target)
        assert float(model[0].amps_B.detach().flatten()[0]) == 3.0
    if what == "history":
        assert json.loads(target.read_text()) == {"value": 3.0}


def test_saving_an_adapter_never_deletes_files_it_did_not_write(tmp_path):
    from genlora_pl.state import save_adapter

    exec(PRELUDE, namespace := {})
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files this save would delete \(notes.txt\)"):
        save_adapter(namespace["model"](1.0), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    save_adapter(namespace["model"](1.0), tmp_path / "adapter")
    save_adapter(namespace["model"](2.0), tmp_path / "adapter")  # an adapter folder is replaced whole
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_model.safetensors",
        "genlora_config.json",
    ]
