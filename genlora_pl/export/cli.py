"""``python -m genlora_pl export``'s command line, answered before torch is imported.

Bad arguments (an unknown format, a checkpoint that is not there, an output folder in the way) end
in one sentence within a second, not after the 20 s that loading torch, Lightning and transformers
takes; only then is the checkpoint read and exported (:func:`genlora_pl.export.checkpoint.export_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

from genlora_pl.errors import missing_checkpoint
from genlora_pl.export.formats import parse_formats


def export(ckpt_path: str, output_dir: str, formats: str | list[str] | None = None, overwrite: bool = False) -> None:
    """Export a fit checkpoint to folders the ecosystem reads.

    Args:
        ckpt_path: a ``.ckpt`` written by ``fit`` (or the folder of a distributed checkpoint).
        output_dir: folder to create; ``merged/``, ``peft/`` and ``adapter/`` go inside.
        formats: one or more of ``merged``, ``peft``, ``adapter`` (default: all three): a name, a comma
            list (``--formats merged,peft``) or a list (``--formats '[merged, peft]'``).
        overwrite: replace an existing, non-empty ``output_dir``.
    """
    chosen = parse_formats(formats)
    if not Path(ckpt_path).exists():
        raise missing_checkpoint(ckpt_path)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir={output_dir!r} is a file; give a folder to create.")

    from genlora_pl.console import quiet

    quiet()
    from genlora_pl.export.checkpoint import export_checkpoint

    export_checkpoint(ckpt_path, output_dir, chosen, overwrite=overwrite)


def cli(argv: list[str]) -> None:
    from jsonargparse import auto_cli

    auto_cli(export, args=argv, as_positional=False)
