"""Instruction data for causal language models: prompt / response pairs or chat messages.

Each example becomes one token sequence, ``prompt + response``, where only the response tokens count
in the loss (prompt and padding are labelled ``-100``). The text comes from the tokenizer's chat
template when it has one (the prompt as a user turn, the response as the assistant's turn, after the
template's own system prompt), else from a plain template::

    ### Instruction:
    {prompt}

    ### Response:
    {response}<eos>

Sequences longer than ``max_length`` lose prompt tokens from the left first; only a response that
cannot fit beside a prompt of half the length is cut at its end. Nothing is ever dropped whole, and
every cut is counted and reported. Training batches hold examples of similar length
(:class:`~genlora_pl.data.base.BucketedSampler`), and the loader position stays resumable mid-epoch.
Evaluation batches also carry the prompt alone (left-padded) for generation, and the reference
answer, so a task module can score what the model generates (:meth:`InstructionData.score`).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from genlora_pl.backbones import load_tokenizer
from genlora_pl.data.base import BucketedSampler, DataModule, ResumableSampler, seeded_split
from genlora_pl.data.text import read_jsonl

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str:
    """The last number in ``text`` (thousands separators dropped), or the stripped text."""
    found = NUMBER.findall(text)
    return found[-1].replace(",", "") if found else text.strip()


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "exact": lambda text: text.strip(),
    "first_line": lambda text: text.strip().splitlines()[0].strip() if text.strip() else "",
    "last_number": last_number,
}


class Examples(Dataset):
    """Tokenised examples: ``(input_ids, labels, prompt_ids)`` plus the texts, by index."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.records[index], "index": index}

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self.records]

    @property
    def texts(self) -> list[str]:  # what prediction files show as the input
        return [r["prompt"] for r in self.records]


class InstructionData(DataModule):
    """Instruction tuning data from JSONL or CSV files.

    Args:
        train_file: training examples: JSONL (one object per line) or CSV with a header.
        val_file: validation examples; carved from ``train_file`` when absent.
        test_file: test examples; carved from ``train_file`` when absent.
        prompt_field: field (column) of the prompt.
        response_field: field of the response (the reference answer).
        messages_field: field of a chat (a list of ``{"role", "content"}``; the last assistant
            message is the response); used for rows that have it instead of prompt / response.
        max_length: tokens per example, prompt and response together.
        test_fraction: share held out for test when there is no ``test_file``.
        answer_extractor: how a generation and a reference are reduced before they are compared for
            exact match: ``exact`` (whitespace stripped), ``first_line`` or ``last_number``.
        system_prompt: a system message put before every prompt (in place of the chat template's
            default one, e.g. "Answer with the number only."); ``null`` keeps the template's.
        **kwargs: the shared settings of :class:`~genlora_pl.data.base.DataModule` (batch_size,
            num_workers, val_fraction, max_train_samples, max_eval_samples, seed, backbone).
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        prompt_field: str = "prompt",
        response_field: str = "response",
        messages_field: str = "messages",
        max_length: int = 512,
        test_fraction: float = 0.1,
        answer_extractor: str = "exact",
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length={max_length!r} is not valid; give a number of tokens of at least 2.")
        if answer_extractor not in EXTRACTORS:
            raise ValueError(
                f"answer_extractor={answer_extractor!r} is not valid; choose one of {', '.join(EXTRACTORS)}."
            )
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.fields = (prompt_field, response_field, messages_field)
        self.max_length = max_length
        self.test_fraction = test_fraction
        self.answer_extractor = answer_extractor
        self.system_prompt = system_prompt
        self._pairs = {"train": self.read(train_file)}  # read now: a bad file fails before the model loads
        self._tokenizer: Any = None
        self.report: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------- reading
    def read(self, path: str) -> list[tuple[str, str]]:
        """``(prompt, response)`` pairs of a JSONL or CSV file; a row without them is an error that
        names the file and the line."""
        file = Path(path)
        prompt_field, response_field, messages_field = self.fields
        if not file.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; give a JSONL or CSV file with {prompt_field!r} and {response_field!r} "
                f"(or {messages_field!r})."
            )
        if file.suffix in (".jsonl", ".json"):
            rows = read_jsonl(file)
        elif file.suffix in (".csv", ".tsv"):
            try:
                with open(file, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f, delimiter="\t" if file.suffix == ".tsv" else ","))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
        else:
            raise ValueError(f"{path} is neither .jsonl nor .csv; those are the instruction formats read.")
        pairs = []
        for line, row in enumerate(rows, start=1 if file.suffix.startswith(".j") else 2):
            if messages_field in row and row[messages_field]:
                pairs.append(self._from_messages(row[messages_field], path, line))
                continue
            prompt, response = row.get(prompt_field), row.get(response_field)
            if prompt is None or response is None:
                have = sorted(row)
                raise ValueError(
                    f"{path} line {line} has no {prompt_field!r} and {response_field!r} (nor {messages_field!r}); "
                    f"its fields are {have}."
                )
            if not str(response).strip():
                raise ValueError(f"{path} line {line} has an empty {response_field!r}; every example needs a response.")
            pairs.append((str(prompt), str(response)))
        if not pairs:
            raise ValueError(f"{path} holds no examples.")
        return pairs

    @staticmethod
    def _from_messages(messages: Any, path: str, line: int) -> tuple[Any, str]:
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        )
        if not ok or not messages or messages[-1]["role"] != "assistant" or not str(messages[-1]["content"]).strip():
            raise ValueError(
                f"{path} line {line}: messages must be a list of {{role, content}} ending with a non-empty "
                "assistant message (the response)."
            )
        return messages[:-1], str(messages[-1]["content"])

    # ------------------------------------------------------------- tokenising
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.backbone is None or not self.backbone.startswith("hf:"):
                raise ValueError(
                    f"backbone={self.backbone!r} has no tokenizer; instruction data needs an 'hf:' backbone."
                )
            self._tokenizer = load_tokenizer(self.backbone[3:])
        return self._tokenizer

    def format(self, prompt: Any) -> str:
        """The text before the response: a chat turn (the template's) or the plain template."""
        tok = self.tokenizer
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text = "\n\n".join(str(m["content"]) for m in messages)
        return PLAIN_TEMPLATE.format(prompt=text)

    def encode(self, prompt: Any, response: str, counts: dict[str, int]) -> dict[str, Any]:
        tok = self.tokenizer
        prompt_text = self.format(prompt)
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        end = tok.eos_token_id
        response_ids = tok(response, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
        room = self.max_length
        if len(prompt_ids) + len(response_ids) > room:
            if len(response_ids) <= room // 2 or len(prompt_ids) <= room - len(response_ids):
                keep = room - len(response_ids)
                counts["prompts cut"] += 1
            else:
                keep = min(len(prompt_ids), room // 2)
                counts["prompts cut"] += keep < len(prompt_ids)
                counts["responses cut"] += 1
                response_ids = response_ids[: room - keep]
            prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
        input_ids = prompt_ids + response_ids
        return {
            "input_ids": input_ids,
            "labels": [-100] * len(prompt_ids) + response_ids,
            "prompt_ids": prompt_ids,
            "prompt": prompt_text,
            "answer": response,
        }

    def tokenize(self, split: str, pairs: list[tuple[Any, str]]) -> Examples:
        counts = {"prompts cut": 0, "responses cut": 0}
        records = [self.encode(prompt, response, counts) for prompt, response in pairs]
        self.report[split] = {"examples": len(records), **counts}
        if counts["prompts cut"] or counts["responses cut"]:
            print(
                f"{split}: {counts['prompts cut']} of {len(records)} prompts cut from the left and "
                f"{counts['responses cut']} responses cut at the end to fit max_length={self.max_length}"
            )
        return Examples(records)

    # ------------------------------------------------------------- splits and batches
    def load_splits(self) -> dict[str, Dataset]:
        pairs = dict(self._pairs)
        for split in ("val", "test"):
            if self.files[split] is not None:
                pairs[split] = self.read(self.files[split])
        train = pairs["train"]
        if "val" not in pairs or "test" not in pairs:
            fractions = [
                1.0,
                self.val_fraction if "val" not in pairs else 0.0,
                self.test_fraction if "test" not in pairs else 0.0,
            ]
            fractions[0] = 1.0 - fractions[1] - fractions[2]
            tr, va, te = seeded_split(len(train), fractions, self.seed)
            pairs["train"] = [train[i] for i in tr]
            pairs.setdefault("val", [train[i] for i in va])
            pairs.setdefault("test", [train[i] for i in te])
        shortest = min(
            len(self.tokenizer(self.format(p), add_special_tokens=False)["input_ids"]) for p, _ in pairs["train"]
        )
        if shortest >= self.max_length:
            raise ValueError(
                f"max_length={self.max_length} is shorter than every prompt of {self.files['train']} "
                f"(the shortest has {shortest} tokens); raise it so the responses fit."
            )
        return {split: self.tokenize(split, examples) for split, examples in pairs.items()}

    def make_sampler(self, dataset: Dataset, parts: dict[str, int]) -> ResumableSampler:
        lengths = _lengths(dataset)
        return BucketedSampler(
            dataset, shuffle=True, seed=self.seed, lengths=lengths, global_batch=self.batch_size, **parts
        )

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` for the loss, and the prompts
        left-padded (``prompt_ids`` / ``prompt_mask``) with their ``answers`` for generation."""
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        prompt_width = max(max(len(b["prompt_ids"]) for b in batch), 1)
        prompt_ids = torch.full((len(batch), prompt_width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(batch), prompt_width), dtype=torch.long)
        for row, b in enumerate(batch):
            n, p = len(b["input_ids"]), len(b["prompt_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
            if p:
                prompt_ids[row, prompt_width - p :] = torch.tensor(b["prompt_ids"])
                prompt_mask[row, prompt_width - p :] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "answers": [b["answer"] for b in batch],
            "prompts": [b["prompt"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch]),
        }

    # ------------------------------------------------------------- scoring
    def score(self, split: str, indices: list[int], generations: list[str]) -> list[float]:
        """1.0 where the extracted generation equals the extracted reference answer, else 0.0."""
        extract = EXTRACTORS[self.answer_extractor]
        dataset = self.splits[split]
        return [
            float(extract(text) == extract(dataset.records[i]["answer"]))
            for i, text in zip(indices, generations, strict=True)
        ]


def _lengths(dataset: Dataset) -> list[int]:
    if isinstance(dataset, Examples):
        return dataset.lengths
    if isinstance(dataset, torch.utils.data.Subset):
        inner = _lengths(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    return [1] * len(dataset)


class ReasoningGymData(InstructionData):
    """Maths and arithmetic problems generated offline by the PyPI package ``reasoning-gym``
    (Apache-2.0), scored by the task's own answer checker.

    Args:
        task: a reasoning-gym dataset name: ``basic_arithmetic``, ``chain_sum``, ``gsm_symbolic``, ...
        train_size: examples generated for training.
        val_size: examples generated for validation.
        test_size: examples generated for test.
        task_kwargs: settings of the reasoning-gym dataset (its difficulty and the like).
        **kwargs: the settings of :class:`InstructionData` other than the files.
    """

    def __init__(
        self,
        task: str = "basic_arithmetic",
        train_size: int = 2000,
        val_size: int = 100,
        test_size: int = 200,
        task_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            import reasoning_gym
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "the task source 'reasoning-gym' is not installed; `pip install reasoning-gym` brings it."
            ) from None
        self.task, self.task_kwargs = task, dict(task_kwargs or {})
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        for split, size in self.sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"{split}_size={size!r} is not valid; give a positive number of examples.")
        seed = kwargs.get("seed", 0)
        try:
            train = reasoning_gym.create_dataset(task, size=train_size, seed=seed * 1_000_003, **self.task_kwargs)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"task={task!r} with {self.task_kwargs} is not a reasoning-gym dataset: {err}") from None
        # Held-out problems never repeat a training problem, nor each other: easy tasks repeat themselves
        # (a repeated "1 + 5 =" in test would measure memory, not skill), and reasoning-gym seeds entry i
        # with seed + i, so datasets of nearby seeds overlap.
        seen = {e["question"] for e in train}
        self._entries: dict[str, list[dict[str, Any]]] = {"train": list(train)}
        self.sources = {"train": train}
        for offset, split in enumerate(("val", "test"), start=1):
            entries, source = self._held_out(reasoning_gym, seed * 1_000_003 + offset * 100_003, split, seen)
            self._entries[split], self.sources[split] = entries, source
            seen |= {e["question"] for e in entries}
        self._generated = {
            s: [(e["question"], str(e["answer"])) for e in entries] for s, entries in self._entries.items()
        }
        super().__init__(train_file="", **kwargs)

    def _held_out(self, reasoning_gym: Any, seed: int, split: str, seen: set[str]) -> tuple[list[dict[str, Any]], Any]:
        size = self.sizes[split]
        source = reasoning_gym.create_dataset(self.task, size=size * 20, seed=seed, **self.task_kwargs)
        taken: list[dict[str, Any]] = []
        questions: set[str] = set()
        for entry in source:
            if entry["question"] not in seen and entry["question"] not in questions:
                taken.append(entry)
                questions.add(entry["question"])
                if len(taken) == size:
                    return taken, source
        raise ValueError(
            f"task={self.task!r} yields only {len(taken)} problems for {split} that training does not already "
            f"hold, fewer than {split}_size={size}; lower the sizes or make the task harder (task_kwargs)."
        )

    def read(self, path: str) -> list[tuple[str, str]]:
        return self._generated["train"] if path == "" else super().read(path)

    def load_splits(self) -> dict[str, Dataset]:
        self.files = {"train": f"reasoning-gym:{self.task}", "val": None, "test": None}
        splits = {split: self.tokenize(split, pairs) for split, pairs in self._generated.items()}
        shortest = min(len(r["prompt_ids"]) for r in splits["train"].records)
        if shortest >= self.max_length:
            raise ValueError(
                f"max_length={self.max_length} is shorter than every prompt of {self.files['train']} "
                f"(the shortest has {shortest} tokens); raise it so the responses fit."
            )
        return splits

    def score(self, split: str, indices: list[int], generations: list[str]) -> list[float]:
        """reasoning-gym's own checker, read as exact match: 1 for an answer it scores 1.0, else 0. Its
        partial credit (``basic_arithmetic`` gives 0.5 to ``-4.0`` for ``-4``) would make the mean a
        score that is not the share of right answers."""
        source, entries = self.sources[split], self._entries[split]
        scores = []
        for index, text in zip(indices, generations, strict=True):
            answer = EXTRACTORS[self.answer_extractor](text)
            value = source.score_answer(answer, entries[index])
            scores.append(1.0 if value is not None and math.isfinite(value) and value >= 1.0 else 0.0)
        return scores
