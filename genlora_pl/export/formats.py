"""The export formats, and how a user may name them (``--formats peft``, ``merged,peft``, a list).

A module of its own, free of torch, so that the ``export`` command line (:mod:`genlora_pl.export.cli`)
checks them before anything heavy loads, and the export itself (:mod:`genlora_pl.export.checkpoint`)
reads them the same way.
"""

from __future__ import annotations

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
