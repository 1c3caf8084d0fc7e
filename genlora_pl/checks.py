"""Type checks shared by every constructor that refuses bad input.

``True`` is an ``int`` to Python, and YAML's ``yes``/``true`` arrive as one, so a flag given where a
count or a rate belongs passes a bare ``isinstance``; these checks refuse it. Each caller keeps its
own message, which names the value and what would be valid (docs/errors.md). adapters/ keeps its
own copies: it imports nothing of ours outside itself, so a method file reads alone.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any, least: int | None = None) -> bool:
    """An integer, not a bool, and at least ``least`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


def is_number(value: Any) -> bool:
    """A finite integer or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
