"""Reading and writing Lightning checkpoints safely.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lies
in the system temp folder; on a cluster that is node-local while checkpoints go to shared storage,
so the final ``shutil.move`` becomes a copy into the target path, and a node lost during that copy
leaves a truncated ``last.ckpt`` where the good one was. It does not fsync either. And it unpickles
with whatever ``weights_only`` the caller passes. :class:`AtomicCheckpointIO` writes beside the
target, fsyncs and renames (the old file stays whole until the new one is complete), always loads
with ``weights_only=True``, and turns every failure into one sentence that names the file.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from genlora_pl.errors import first_line, missing_checkpoint
from genlora_pl.files import atomic_write


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission, ...); the old file is intact."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint without executing pickled code (``weights_only=True``).

    A folder is a distributed (DCP) checkpoint, as FSDP2 writes with ``save_distributed_checkpoint``:
    torch's own converter gathers the tensor shards into one file, and Lightning keeps everything
    else (hyper-parameters, callback states) beside them in ``meta.pt``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is truncated or corrupted, holds pickled code or objects, or is not a
            Lightning checkpoint; the message names the file.
    """
    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            try:
                dcp_to_torch_save(path, Path(tmp) / "full.ckpt")
            except Exception as err:  # a shard missing or cut short
                raise ValueError(f"cannot load distributed checkpoint {path}: {first_line(err)}.") from None
            tensors = read_checkpoint(Path(tmp) / "full.ckpt")
        meta = read_checkpoint(path / "meta.pt") if (path / "meta.pt").is_file() else {}
        return {**meta, **tensors}
    if path.is_dir():
        raise ValueError(
            f"ckpt_path={str(path)!r} is a folder but not a distributed checkpoint (it has no .metadata); "
            "give a .ckpt file or a folder written by fit."
        )
    if not path.is_file():
        raise missing_checkpoint(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a legacy pickle
        raise ValueError(
            f"{path} is not a checkpoint: it is neither a PyTorch zip archive nor a pickle (it starts with "
            f"{head!r}); give a .ckpt written by fit."
        )
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a junk pickle before failing on it
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses any global that is not a tensor, a container or a plain value
        culprit = re.search(r"GLOBAL ([\w.]+)", str(err))
        if culprit is None and not head.startswith(b"PK"):  # junk after a pickle opcode, not a hostile object
            raise ValueError(
                f"cannot load checkpoint {path}: the file is truncated or corrupted (invalid pickle data)."
            ) from None
        what = f"a pickled reference to {culprit.group(1)}" if culprit else "pickled objects"
        raise ValueError(
            f"refusing to load checkpoint {path}: it holds {what}, code that a safe load does not run; "
            "only plain Lightning checkpoints load."
        ) from None
    except PermissionError:
        raise PermissionError(f"cannot read checkpoint {path}: permission denied.") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(
            f"cannot load checkpoint {path}: the file is truncated or corrupted ({first_line(err)})."
        ) from None
    if not isinstance(checkpoint, dict) or ("state_dict" not in checkpoint and path.name != "meta.pt"):
        raise ValueError(f"{path} is not a Lightning checkpoint (it has no 'state_dict'); give a .ckpt written by fit.")
    return checkpoint


def run_folder(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint was written into (``<run>/checkpoints/<name>.ckpt``, as
    ``ModelCheckpoint`` places them under a logger's version folder), or None for a file elsewhere."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).absolute()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def adapter_config_of(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter config the adapter callback stored in a checkpoint's callback states, if any."""
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and isinstance(state.get("config"), dict) and "adapter" in state["config"]:
            return state["config"]
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic on local and shared file systems and whose
    loads are safe (see the module docstring). Remote URLs keep Lightning's fsspec path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except OSError as err:
            reason = err.strerror or first_line(err)
            kept = f"the previous {path.name} there is unchanged" if existed else "no partial file was left"
            error = CheckpointWriteError(
                f"could not write checkpoint {path}: {reason}; {kept}. Free some space or choose another folder."
            )
            error.errno = err.errno
            raise error from None
        return None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def install_atomic_io(strategy: Any) -> bool:
    """Put :class:`AtomicCheckpointIO` in place of a plain ``TorchCheckpointIO`` (a user's own
    ``CheckpointIO`` plugin is left alone). Returns whether it did."""
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    io = strategy.checkpoint_io
    if type(io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    if isinstance(io, _WrappingCheckpointIO) and type(io.checkpoint_io) is TorchCheckpointIO:
        io.checkpoint_io = AtomicCheckpointIO()
        return True
    return False
