"""A substitution cipher to learn: the second capacity test, a new "language" rather than new facts.

One secret permutation of the 26 letters (drawn from the data seed, no letter left in place) enciphers
random strings of letters; the model reads the ciphertext and writes the plaintext, letters spaced
(``"Decipher: q z m m x"`` -> ``"h e l l o"``) so that every letter is one token and the task is the
letter map itself, not the tokenizer's merges of random strings. The base cannot know the key, and
validation and test ask for strings never trained on: the score is exact match of the whole
decipherment, so it measures whether the model learned the 26-letter map and applies it, not whether
it memorised rows. A map of 26 symbols onto 26 others is an update of rank up to 26 in the letters'
subspace, which is why the capacity benchmark uses it beside :mod:`genlora_pl.data.facts`.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from genlora_pl.data.instructions import InstructionData

LETTERS = string.ascii_lowercase
PROMPT = "Decipher: {text}"


def make_key(seed: int) -> dict[str, str]:
    """The cipher's key: plaintext letter -> ciphertext letter, a permutation with no fixed point."""
    rng = np.random.default_rng(seed)
    while True:  # about 1 in e draws is a derangement
        order = rng.permutation(len(LETTERS))
        if not np.any(order == np.arange(len(LETTERS))):
            return {plain: LETTERS[i] for plain, i in zip(LETTERS, order, strict=True)}


def make_words(count: int, min_letters: int, max_letters: int, seed: int) -> list[str]:
    """``count`` distinct strings of ``min_letters``-``max_letters`` uniformly random letters."""
    possible = sum(len(LETTERS) ** n for n in range(min_letters, max_letters + 1))
    if count > possible // 2:  # keep drawing cheap: at most half the strings are used
        raise ValueError(
            f"{count} distinct words need more than half of the {possible:,} strings of {min_letters}-"
            f"{max_letters} letters; raise max_letters or lower train_size, val_size and test_size."
        )
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        length = int(rng.integers(min_letters, max_letters + 1))
        words.setdefault("".join(rng.choice(list(LETTERS), size=length)), None)
    return list(words)


def spaced(word: str) -> str:
    return " ".join(word)


class CipherData(InstructionData):
    """Decipher random words under one secret letter substitution; scored by exact match on unseen words.

    Args:
        train_size: words trained on (ciphertext -> plaintext).
        val_size: words asked in validation, none of them trained on.
        test_size: words asked in test, none of them trained on or asked in validation.
        min_letters: shortest word.
        max_letters: longest word.
        **kwargs: the settings of :class:`InstructionData` other than the files (``batch_size``,
            ``max_length``, ``system_prompt``, ``seed``: the key and the words, ...).
    """

    def __init__(
        self,
        train_size: int = 1600,
        val_size: int = 100,
        test_size: int = 200,
        min_letters: int = 4,
        max_letters: int = 6,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
            ("min_letters", min_letters),
            ("max_letters", max_letters),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; give a positive integer.")
        if max_letters < min_letters:
            raise ValueError(
                f"max_letters={max_letters} is below min_letters={min_letters}; give max_letters >= min_letters."
            )
        kwargs.setdefault("max_length", 64)
        seed = kwargs.get("seed", 0)
        self.key = make_key(seed)
        words = make_words(train_size + val_size + test_size, min_letters, max_letters, seed + 1)
        self.words = {
            "train": words[:train_size],
            "val": words[train_size : train_size + val_size],
            "test": words[train_size + val_size :],
        }
        super().__init__(train_file="", **kwargs)
        self.files = {split: f"cipher:{train_size}" for split in ("train", "val", "test")}

    def encipher(self, word: str) -> str:
        return "".join(self.key[letter] for letter in word)

    def check_source(self, source: str) -> None:
        pass  # generated, not read

    def raw(self, split: str) -> Any:
        from datasets import Dataset as Table

        words = self.words[split]
        return Table.from_dict(
            {
                "prompt": [PROMPT.format(text=spaced(self.encipher(w))) for w in words],
                "response": [spaced(w) for w in words],
            }
        )
