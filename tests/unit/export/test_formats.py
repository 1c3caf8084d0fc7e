"""The export formats as users write them (``--formats peft``, ``merged,peft``, a list)."""

from __future__ import annotations

import pytest

from genlora_pl.export.formats import FORMATS, parse_formats


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, list(FORMATS)),
        ("peft", ["peft"]),
        ("merged,peft", ["merged", "peft"]),
        (" adapter , merged ", ["adapter", "merged"]),
        (["peft", "merged"], ["peft", "merged"]),
        ("peft,peft", ["peft"]),
    ],
)
def test_formats_are_a_name_a_comma_list_or_a_list(given, expected):
    assert parse_formats(given) == expected


@pytest.mark.parametrize("given", ["pef", "peft,", "", [], ["peft", "onnx"]])
def test_unknown_or_empty_formats_are_refused_in_one_sentence(given):
    with pytest.raises(ValueError) as err:
        parse_formats(given)
    message = str(err.value)
    assert message.startswith(f"formats={given!r} is not valid; give one or more of merged, peft, adapter")
    assert "\n" not in message
