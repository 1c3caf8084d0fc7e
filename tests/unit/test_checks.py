"""The shared type checks: a bool is never a count or a rate, whatever YAML or Python made it.

(adapters/ keeps its own checks: it imports nothing of ours outside itself.)"""

import math

import pytest

from genlora_pl.checks import is_int, is_number


@pytest.mark.parametrize(
    ("value", "least", "ok"),
    [(3, None, True), (-3, None, True), (1, 1, True), (0, 1, False), (2, 2, True), (1, 2, False),
     (True, None, False), (False, 0, False), (2.0, None, False), ("2", None, False), (None, 0, False)],
)  # fmt: skip
def test_is_int_takes_integers_at_least_the_bound_and_refuses_bools(value, least, ok):
    assert is_int(value, least) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (-2, True), (0.5, True), (True, False), (math.nan, False), (math.inf, False),
     (-math.inf, False), ("0.5", False), (None, False)],
)  # fmt: skip
def test_is_number_takes_finite_numbers_and_refuses_bools(value, ok):
    assert is_number(value) is ok


def test_a_bool_count_reaches_the_user_as_one_sentence():
    """The helpers in use: a flag where a count belongs is refused with the constructor's own message."""
    from genlora_pl.data import CipherData, FactsData

    with pytest.raises(ValueError, match=r"^num_facts=True is not valid; give a positive integer\.$"):
        FactsData(num_facts=True)
    with pytest.raises(ValueError, match=r"^num_words=2\.5 is not valid; give an integer of at least 2\.$"):
        CipherData(alphabet="words", num_words=2.5)
