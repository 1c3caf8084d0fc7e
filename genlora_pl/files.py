"""Files and folders written whole or not at all, and safetensors read with one clear error.

A single file is written to a temporary name beside its target, fsynced and renamed over it
(:func:`atomic_write`); a folder is built in a temporary sibling and swapped in
(:func:`write_folder`). A crash, a kill or a full disk mid-write therefore leaves the previous good
file or folder in place. Nothing here knows about adapters or Lightning.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def _remove_stale(folder: Path, prefix: str) -> None:
    """Temporary files or folders a killed writer left behind (one writer per path is assumed)."""
    for stale in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``; a failure leaves ``path`` untouched.

    The temporary file lies beside ``path`` (same file system, so the rename is atomic) and is
    fsynced before the rename, so a crash or power loss leaves either the old or the new file.
    """
    path = Path(path)
    _remove_stale(path.parent, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_folder(target: str | os.PathLike) -> None:
    """Put back a folder that a crash in the middle of :func:`write_folder`'s two renames left as
    ``.<name>.old``; drop a stale ``.old`` when the new folder made it."""
    target = Path(target)
    old = _old(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def write_folder(target: str | os.PathLike, fill: Callable[[Path], None], owned: set[str] | None = None) -> Path:
    """Build a folder with ``fill(staging)`` in a temporary sibling and move it to ``target``.

    An existing ``target`` is replaced only after the new folder is complete: it is renamed to
    ``.<name>.old``, the new one renamed in, then the old one removed; a crash between the two
    renames is undone by :func:`recover_folder` (called here and by the loaders). With ``owned``,
    an existing ``target`` that holds other files is refused rather than deleted.
    """
    target = Path(target)
    recover_folder(target)
    _remove_stale(target.parent, f".{target.name}.")
    if owned is not None and target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise FileExistsError(
                f"{target} holds files this save would delete ({', '.join(foreign[:3])}); "
                "choose an empty folder or one written by the same save."
            )
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is a file; give a folder path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        fill(staging)
        _usual_permissions(staging)
        if target.exists():
            os.replace(target, _old(target))
            os.replace(staging, target)
            shutil.rmtree(_old(target), ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _usual_permissions(folder: Path) -> None:
    """Files and folders readable as the umask says: safetensors (and so ``save_pretrained``) and
    ``mkstemp`` create their files 0600, which left weights unreadable to a group beside 0644 JSON."""
    umask = _umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) atomically as safetensors."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_file(cpu, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates its file 0600

    atomic_write(path, write)


def load_safetensors(path: Path, what: str = "adapter weights") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a damaged file is a ValueError that names it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {what} {path}: the file is truncated or not safetensors ({err}).") from None
