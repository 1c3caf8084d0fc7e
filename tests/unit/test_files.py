"""Atomic files and folders: a failed write leaves the previous content; folders swap in whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from genlora_pl.files import atomic_write, atomic_write_text, recover_folder, write_folder


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")

    def half(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_folder_is_replaced_whole_and_foreign_files_are_refused(tmp_path):
    target = tmp_path / "adapter"
    write_folder(target, lambda f: (f / "w.bin").write_text("1"), owned={"w.bin"})
    write_folder(target, lambda f: (f / "w.bin").write_text("2"), owned={"w.bin"})
    assert (target / "w.bin").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files this save would delete \\(notes.txt\\)"):
        write_folder(target, lambda f: (f / "w.bin").write_text("3"), owned={"w.bin"})
    assert (target / "w.bin").read_text() == "2"

    def broken(folder: Path) -> None:
        (folder / "w.bin").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_folder(target, broken)
    assert (target / "w.bin").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_recover_folder_undoes_a_crash_between_the_two_renames(tmp_path):
    old = tmp_path / ".adapter.old"
    old.mkdir()
    (old / "w.bin").write_text("good")
    recover_folder(tmp_path / "adapter")  # the new folder never arrived: the old one comes back
    assert (tmp_path / "adapter" / "w.bin").read_text() == "good" and not old.exists()


def test_weights_get_the_permissions_of_every_other_file(tmp_path):
    """safetensors makes its files 0600; exports and adapter folders show them as the umask says,
    like the JSON beside them."""
    import os

    import torch
    from safetensors.torch import save_file

    from genlora_pl.files import save_safetensors, write_folder

    umask = os.umask(0o022)
    try:
        save_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")

        def fill(folder):
            save_file({"a": torch.zeros(2)}, str(folder / "model.safetensors"))  # as save_pretrained does
            (folder / "config.json").write_text("{}")

        out = write_folder(tmp_path / "export", fill)
    finally:
        os.umask(umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [tmp_path / "w.safetensors", *out.iterdir()]}
    assert modes == {"w.safetensors": "0o644", "model.safetensors": "0o644", "config.json": "0o644"}
    assert oct(out.stat().st_mode & 0o777) == "0o755"
