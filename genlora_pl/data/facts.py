"""Random facts to memorise: the capacity test of an adapter.

Each fact pairs a made-up name (random syllables, ``"kivopa"``) with a random code of digits
(``"4821"``); no pretrained model can know them, so whatever a model recalls after training it
learned from these rows. Memorising many unrelated facts needs an update of high rank (MoRA,
arXiv 2405.12130, measures LoRA lagging high-rank updates on such pairs), which is why the
capacity benchmark uses it.

Every fact trains. Validation and test ask for disjoint subsets of the trained facts, in the words
they were trained with: the score is exact recall, and tuning on the validation facts never reads
the test facts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genlora_pl.checks import is_int
from genlora_pl.data.instructions import InstructionData

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
PROMPT = "What is the code of {name}?"


def make_facts(count: int, syllables: int, digits: int, seed: int) -> list[tuple[str, str]]:
    """``count`` facts ``(name, code)`` with distinct names, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    names: dict[str, str] = {}
    possible = (len(CONSONANTS) * len(VOWELS)) ** syllables
    if count > possible // 2:  # keep drawing cheap: at most half the name space is used
        raise ValueError(
            f"num_facts={count} needs more than half of the {possible:,} names of {syllables} syllables; "
            "raise name_syllables or lower num_facts."
        )
    while len(names) < count:
        name = "".join(rng.choice(list(CONSONANTS)) + rng.choice(list(VOWELS)) for _ in range(syllables))
        if name not in names:
            names[name] = "".join(str(d) for d in rng.integers(0, 10, size=digits))
    return list(names.items())


class FactsData(InstructionData):
    """``num_facts`` random name-to-code facts; recall is scored by exact match.

    Args:
        num_facts: facts trained (all of them, every epoch).
        val_size: trained facts asked in validation (the first ``val_size``).
        test_size: trained facts asked in test (the next ``test_size``; never the validation ones).
        name_syllables: syllables per name (14 consonants x 5 vowels each).
        code_digits: digits per code.
        **kwargs: the settings of :class:`InstructionData` other than the files (``batch_size``,
            ``max_length``, ``system_prompt``, ``seed``: which facts, ...).
    """

    def __init__(
        self,
        num_facts: int = 200,
        val_size: int = 50,
        test_size: int = 100,
        name_syllables: int = 3,
        code_digits: int = 4,
        **kwargs: Any,
    ) -> None:
        for name, value, least in (
            ("num_facts", num_facts, 1),
            ("val_size", val_size, 1),
            ("test_size", test_size, 1),
            ("name_syllables", name_syllables, 1),
            ("code_digits", code_digits, 1),
        ):
            if not is_int(value, least):
                raise ValueError(f"{name}={value!r} is not valid; give a positive integer.")
        if val_size + test_size > num_facts:
            raise ValueError(
                f"val_size={val_size} and test_size={test_size} ask for {val_size + test_size} facts but "
                f"num_facts={num_facts}; they are disjoint subsets of the trained facts, so keep their sum "
                "at most num_facts."
            )
        kwargs.setdefault("max_length", 64)
        self.facts = make_facts(num_facts, name_syllables, code_digits, kwargs.get("seed", 0))
        self.rows = {"train": range(num_facts), "val": range(val_size), "test": range(val_size, val_size + test_size)}
        super().__init__(train_file="", **kwargs)
        self.files = {split: f"facts:{num_facts}" for split in ("train", "val", "test")}

    def check_source(self, source: str) -> None:
        pass  # generated, not read

    def raw(self, split: str) -> Any:
        from datasets import Dataset as Table

        facts = [self.facts[i] for i in self.rows[split]]
        return Table.from_dict({"prompt": [PROMPT.format(name=n) for n, _ in facts], "response": [c for _, c in facts]})
