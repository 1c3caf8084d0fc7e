"""``python -m genlora_pl export``'s command line, answered before torch is imported.

Bad arguments (an unknown format, a checkpoint that is not there, an output folder in the way) end
in one sentence within a second, not after the 20 s that loading torch, Lightning and transformers
takes; only then is the checkpoint read and exported (:func:`genlora_pl.export.checkpoint.export_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("merged", "peft", "adapter")


def parse_formats(formats: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The export formats as a list, in the order given, without repeats.

    ``None`` is all three; a string is one name or a comma-separated list (``"peft"``,
    ``"merged,peft"``, what a shell user types); a list is taken as it is (``--formats '[peft]'``,
    ``--formats+ peft``, the Python API).
    """
    if formats is None:
        return list(FORMATS)
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(item).strip() for item in items]
    if not names or any(name not in FORMATS for name in names):
        raise ValueError(
            f"formats={formats!r} is not valid; give one or more of {', '.join(FORMATS)}, "
            "e.g. --formats peft or --formats merged,peft."
        )
    return list(dict.fromkeys(names))


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
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist; give a .ckpt written by fit.")
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
