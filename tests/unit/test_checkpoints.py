"""Reading checkpoints safely: each kind of wrong file gets the sentence that describes it."""

from __future__ import annotations

import os

import pytest
import torch

from genlora_pl.checkpoints import adapter_config_of, read_checkpoint, run_folder


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    cases = {
        "text.ckpt": (b"epoch 3 was best\n", "is not a checkpoint: it is neither a PyTorch zip archive nor a pickle"),
        "random.ckpt": (bytes(range(3, 256, 7)), "is not a checkpoint"),
        "junk.ckpt": (b"\x80\x02" + bytes(range(5, 200, 3)), "truncated or corrupted (invalid pickle data)"),
        "empty.ckpt": (b"", "truncated or corrupted (EOFError)"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
            read_checkpoint(tmp_path / name)


def test_a_pickled_global_is_refused_and_never_runs(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="a pickled reference to posix.system"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_run_folder_and_adapter_config(tmp_path):
    assert run_folder(tmp_path / "run" / "version_3" / "checkpoints" / "last.ckpt") == tmp_path / "run" / "version_3"
    assert run_folder(tmp_path / "elsewhere.ckpt") is None and run_folder(None) is None
    checkpoint = {
        "callbacks": {"FaultTolerance": {"rng": {}}, "AdapterCallback": {"config": {"adapter": "lora", "r": 2}}}
    }
    assert adapter_config_of(checkpoint) == {"adapter": "lora", "r": 2}
    assert adapter_config_of({"callbacks": {}}) is None
