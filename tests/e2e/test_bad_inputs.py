"""Every row of the bad-input table in docs/errors.md, run as written: the command (or Python call)
and the exact message it must end with. Adding a row to the table adds a test."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from helpers import write_sums, write_tiny_llama, write_tiny_vit_weights

from genlora_pl.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["qkv", "proj", "fc1", "fc2"]


def table_rows() -> list[tuple[str, str, str]]:
    """``(bad input, command, message)`` of the table in docs/errors.md."""
    text = (ROOT / "docs" / "errors.md").read_text()
    section = text.split("## The table", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| bad input", "|---")):
            continue
        what, command, message = (cell.strip() for cell in line.strip("|").split(" | "))
        rows.append((what, _code(command), _code(message)))
    return rows


def _code(cell: str) -> str:
    cell = cell.strip()
    return cell[3:-3] if cell.startswith("`` ") else cell[1:-1]


ROWS = table_rows()


def matches(expected: str, actual: str) -> bool:
    """Exact equality, where ``…`` in ``expected`` stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual, flags=re.DOTALL) is not None


def vit(depth: int, r: int | None = None) -> torch.nn.Module:
    import timm

    from genlora_pl import GenLoRAConfig, inject_adapters

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=depth, img_size=32, patch_size=8, num_classes=10)
    if r is not None:
        inject_adapters(model, GenLoRAConfig(r=r, group_size=2, target_modules=TARGETS))
    return model


def bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return BertForSequenceClassification(cfg)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with configs/ and every file the rows name, in the formats they claim to be."""
    import os

    from genlora_pl.state import save_adapter

    folder = tmp_path_factory.mktemp("workspace")
    (folder / "configs").symlink_to(ROOT / "configs")
    weights = write_tiny_vit_weights(folder / "vit.safetensors")
    args = ["fit", "--config", str(ROOT / "configs" / "debug.yaml"), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.default_root_dir", str(folder / "run")]
    args += ["--model.pretrained", "true", "--model.checkpoint_path", str(weights)]
    assert main(args) == 0
    shutil.copy(next((folder / "run").rglob("last.ckpt")), folder / "run.ckpt")
    shutil.rmtree(folder / "run")
    (folder / "truncated.ckpt").write_bytes((folder / "run.ckpt").read_bytes()[:5000])

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'pwned'}",))

    torch.save({"state_dict": {}, "hook": Evil()}, folder / "evil.ckpt")
    torch.save({"w": torch.zeros(2)}, folder / "weights.ckpt")
    (folder / "broken.yaml").write_text("trainer:\n  max_epochs: [1,\n")
    (folder / "empty.yaml").write_text("")
    (folder / "list.yaml").write_text("- 1\n- 2\n")
    (folder / "broken.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    (folder / "notes.ckpt").write_text("training notes: lr 2e-2 was best\n")
    (folder / "random.ckpt").write_bytes(bytes(range(7, 256, 3)))
    (folder / "junk_pickle.ckpt").write_bytes(b"\x80\x02" + bytes(range(9, 256, 5)))
    write_tiny_llama(folder / "lm")
    write_sums(folder / "sums.jsonl", n=8)
    (folder / "no_response.jsonl").write_text(
        '{"prompt": "add 1 2", "response": "3"}\n{"prompt": "add 2 2", "answer": "4"}\n'
    )
    (folder / "empty_response.jsonl").write_text('{"prompt": "add 1 2", "response": ""}\n')
    (folder / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9 1 2", "response": "3"}\n'.encode("latin-1"))
    (folder / "damaged.gguf").write_bytes(b"GGUF" + bytes(range(3, 250)))
    (folder / "zero.ckpt").write_bytes(b"")
    (folder / "emptydir").mkdir()
    (folder / "full").mkdir()
    (folder / "full" / "keep.txt").write_text("an earlier export\n")
    import optuna

    (folder / "other_study").mkdir()  # a tune study named "debug", made from another config
    study = optuna.create_study(storage=f"sqlite:///{folder / 'other_study' / 'study.db'}", study_name="debug")
    study.set_user_attr("recipe", {"config": {"trainer": {"max_steps": 1000}}, "metric": "val/acc"})
    save_adapter(vit(2, r=8), folder / "adapter")
    shutil.copytree(folder / "adapter", folder / "damaged_adapter")
    damaged = folder / "damaged_adapter" / "adapter_model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    # an attacker who controls both files: a pickle under the safetensors name, its checksum in the JSON
    shutil.copytree(folder / "adapter", folder / "pickled_adapter")
    pickled = folder / "pickled_adapter" / "adapter_model.safetensors"
    torch.save({"hook": Evil()}, pickled)
    meta = json.loads((folder / "pickled_adapter" / "genlora_config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(pickled.read_bytes()).hexdigest()
    (folder / "pickled_adapter" / "genlora_config.json").write_text(json.dumps(meta))
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and "configs" not in p.parts and p.suffix != ".yaml" or p.name in ("broken.yaml", "empty.yaml")
    }


def test_the_table_covers_every_kind_of_bad_input():
    assert len(ROWS) >= 20
    commands = [command for _, command, _ in ROWS]
    assert len(set(commands)) == len(commands)
    for needle in (
        "--adapter.",
        "--config no_such",
        "--ckpt_path",
        "--model.backbone",
        "target_modules",
        "load_adapter",
    ):
        assert any(needle in c for c in commands), needle


@pytest.mark.parametrize(("what", "command", "message"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(workspace, monkeypatch, capsys, what, command, message):
    from genlora_pl.state import load_adapter

    monkeypatch.chdir(workspace)
    before = fingerprint(workspace)
    if command.startswith("load_adapter("):
        with pytest.raises(Exception) as info:
            eval(command, {"load_adapter": load_adapter, "vit": vit, "bert": bert})
        actual = f"{type(info.value).__name__}: {info.value}"
    else:
        try:
            code = main(shlex.split(command))
        except SystemExit as exit_info:  # the argument parser exits from inside
            code = exit_info.code
        assert code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, errors
        actual = errors[0]
    assert matches(message, actual), f"\ntable: {message}\nactual: {actual}"
    after = fingerprint(workspace)
    assert {k: v for k, v in after.items() if k in before} == before, "a file it was given changed"
    assert not [k for k in after if k not in before and k.endswith((".ckpt", ".safetensors"))]
    assert not (workspace / "pwned").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has the GPU this row asks for")
def test_trainer_settings_this_machine_cannot_run_are_one_line(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    assert main(["fit", "--config", "configs/debug.yaml", "--trainer.accelerator", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: these trainer settings cannot run here: No supported gpu backend found!; "
        "to run on the CPU instead pass --trainer.accelerator cpu --trainer.precision 32"
    )
