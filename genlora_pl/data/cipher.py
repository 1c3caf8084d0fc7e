"""A substitution cipher to learn: the second capacity test, a new "language" rather than new facts.

A secret one-to-one map enciphers random sequences of symbols; the model reads the ciphertext and
writes the plaintext. Validation and test ask for sequences never trained on, so exact match of the
whole decipherment measures whether the model learned the map and applies it, not whether it
memorised rows. The base cannot know the key. Two alphabets:

- ``letters``: the 26 letters, mapped by a permutation that leaves none in place, spaced so that every
  letter is one token (``"Decipher: q z m m x"`` -> ``"h e l l o"``) and the task is the letter map,
  not the tokenizer's merges of random strings.
- ``words``: ``num_words`` made-up words (two syllables, ``"kivo"``) mapped to ``num_words`` other
  made-up words (``"Decipher: bazu refa kivo"`` -> ``"lomi tesa dupo"``): the lexicon of a new
  language. A map of ``N`` symbols onto ``N`` others is an update of rank up to ``N`` in their
  subspace, so ``num_words`` sets how much rank the task asks for (26 letters did not bind LoRA r=8;
  benchmarks/investigations.md, "Capacity").

Evaluation sequences use only symbols that occur in training, so every one of them is decipherable.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from genlora_pl.checks import is_int
from genlora_pl.data.facts import CONSONANTS, VOWELS
from genlora_pl.data.instructions import InstructionData

LETTERS = list(string.ascii_lowercase)
ALPHABETS = ("letters", "words")
PROMPT = "Decipher: {text}"


def make_key(alphabet: str, num_words: int, seed: int) -> dict[str, str]:
    """The cipher's key, plaintext symbol -> ciphertext symbol."""
    rng = np.random.default_rng(seed)
    if alphabet == "letters":
        while True:  # about 1 in e permutations leaves no letter in place
            order = rng.permutation(len(LETTERS))
            if not np.any(order == np.arange(len(LETTERS))):
                return {plain: LETTERS[i] for plain, i in zip(LETTERS, order, strict=True)}
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words = rng.permutation([a + b for a in syllables for b in syllables])[: 2 * num_words].tolist()
    return dict(zip(words[:num_words], words[num_words:], strict=True))  # two disjoint vocabularies


def draw_rows(symbols: list[str], count: int, shortest: int, longest: int, rng: Any, taken: set) -> list[tuple]:
    """``count`` distinct sequences of ``shortest``-``longest`` symbols, none of them in ``taken``."""
    rows: dict[tuple, None] = {}
    while len(rows) < count:
        row = tuple(rng.choice(symbols, size=int(rng.integers(shortest, longest + 1))).tolist())
        if row not in taken:
            rows.setdefault(row, None)
    return list(rows)


class CipherData(InstructionData):
    """Decipher random sequences under one secret substitution; scored by exact match on unseen sequences.

    Args:
        alphabet: ``letters`` (the 26 letters, spaced) or ``words`` (``num_words`` made-up words).
        num_words: size of the ``words`` lexicon (2 to 2,450); ignored for ``letters``.
        train_size: sequences trained on (ciphertext -> plaintext).
        val_size: sequences asked in validation, none of them trained on.
        test_size: sequences asked in test, none of them trained on or asked in validation.
        min_symbols: shortest sequence (letters or words).
        max_symbols: longest sequence.
        **kwargs: the settings of :class:`InstructionData` other than the files (``batch_size``,
            ``max_length``, ``system_prompt``, ``seed``: the key and the sequences, ...).
    """

    def __init__(
        self,
        alphabet: str = "letters",
        num_words: int = 200,
        train_size: int = 1600,
        val_size: int = 100,
        test_size: int = 200,
        min_symbols: int = 4,
        max_symbols: int = 6,
        **kwargs: Any,
    ) -> None:
        if alphabet not in ALPHABETS:
            raise ValueError(f"alphabet={alphabet!r} is not valid; choose one of {', '.join(ALPHABETS)}.")
        for name, value, least in (
            ("num_words", num_words, 2),
            ("train_size", train_size, 1),
            ("val_size", val_size, 1),
            ("test_size", test_size, 1),
            ("min_symbols", min_symbols, 1),
            ("max_symbols", max_symbols, 1),
        ):
            if not is_int(value, least):
                raise ValueError(f"{name}={value!r} is not valid; give an integer of at least {least}.")
        most_words = (len(CONSONANTS) * len(VOWELS)) ** 2 // 2
        if alphabet == "words" and num_words > most_words:
            raise ValueError(f"num_words={num_words} is not valid; the made-up words allow at most {most_words}.")
        if max_symbols < min_symbols:
            raise ValueError(
                f"max_symbols={max_symbols} is below min_symbols={min_symbols}; give max_symbols >= min_symbols."
            )
        symbols = len(LETTERS) if alphabet == "letters" else num_words
        possible = sum(symbols**n for n in range(min_symbols, max_symbols + 1))
        wanted = train_size + val_size + test_size
        if wanted > possible // 2:  # keep drawing cheap: at most half the sequences are used
            raise ValueError(
                f"{wanted} distinct sequences need more than half of the {possible:,} sequences of "
                f"{min_symbols}-{max_symbols} symbols; raise max_symbols or lower train_size, val_size and test_size."
            )
        kwargs.setdefault("max_length", 64)
        seed = kwargs.get("seed", 0)
        self.key = make_key(alphabet, num_words, seed)
        rng = np.random.default_rng(seed + 1)
        train = draw_rows(sorted(self.key), train_size, min_symbols, max_symbols, rng, set())
        seen = sorted({symbol for row in train for symbol in row})  # evaluation asks only decipherable rows
        left = sum(len(seen) ** n for n in range(min_symbols, max_symbols + 1)) - train_size
        if val_size + test_size > left // 2:
            raise ValueError(
                f"train_size={train_size} uses {len(seen)} of the {len(self.key)} symbols, too few for "
                f"{val_size + test_size} unseen validation and test sequences of them; raise train_size."
            )
        held_out = draw_rows(seen, val_size + test_size, min_symbols, max_symbols, rng, set(train))
        self.rows = {"train": train, "val": held_out[:val_size], "test": held_out[val_size:]}
        super().__init__(train_file="", **kwargs)
        self.files = {split: f"cipher:{alphabet}:{train_size}" for split in ("train", "val", "test")}

    def check_source(self, source: str) -> None:
        pass  # generated, not read

    def raw(self, split: str) -> Any:
        from datasets import Dataset as Table

        rows = self.rows[split]
        return Table.from_dict(
            {
                "prompt": [PROMPT.format(text=" ".join(self.key[s] for s in row)) for row in rows],
                "response": [" ".join(row) for row in rows],
            }
        )
