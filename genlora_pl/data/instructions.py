"""Instruction data for causal language models: prompt / response pairs or chat conversations.

Each example becomes one token sequence in which only what the assistant says counts in the loss
(everything else is labelled ``-100``). The text comes from the tokenizer's chat template when it
has one, else from a plain template::

    ### Instruction:
    {prompt}

    ### Response:
    {response}<eos>

Chats train on every assistant turn (``assistant_turns: all``) or on the last one only. Each
trained turn ends with the token the template renders at the end of an assistant turn
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``; see :func:`~genlora_pl.backbones.turn_end_id`),
so the model learns to stop where its template stops, and generation stops there too.

The data engine is Hugging Face ``datasets``: every source (see :mod:`genlora_pl.data.tables`) is
tokenised once by a batched ``Dataset.map`` into the datasets cache, in ``prepare_data`` (one process
per node), under a key made of the source, the tokenizer, its template, the settings that change the
tokens and this module's format version, so changing any of them tokenises again and nothing else
does. Every rank then memory-maps the token columns: no Python list of every token is held, and a
rerun starts training in seconds.

Sequences longer than ``max_length`` lose context tokens from the left first; only a response that
cannot fit beside a context of half the length is cut at its end. Nothing is ever dropped whole, and
every cut is counted and reported. Training batches hold examples of similar length
(:class:`~genlora_pl.data.base.BucketedSampler`), or, with ``packing``, several examples packed
into each row (attention never crosses them: position ids restart per example). The loader position
stays resumable mid-epoch either way. Evaluation batches also carry the prompt alone (left-padded)
for generation, and the reference answer, so a task module can score what the model generates
(:meth:`InstructionData.score`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from genlora_pl.backbones import load_tokenizer, turn_end_id
from genlora_pl.checks import is_int
from genlora_pl.data.base import BucketedSampler, DataModule, ResumableSampler
from genlora_pl.data.tables import FORMATS, diagnose, load_table, looks_local, row_name, saved_splits

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
#: Bumped whenever the tokenised columns change meaning: caches of older versions are not reused.
FORMAT_VERSION = 2
TURNS = ("all", "last")
#: Rows per Arrow record batch of the tokenised cache. Few, large batches: reading one column touches
#: a page (and the kernel's read-ahead around it) per batch, so 1,000-row batches kept 0.4 GB of a
#: million-row file resident; 20,000 rows hold about 50 MB while they are written.
WRITER_BATCH = 20_000
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def last_number(text: str) -> str:
    """The last number in ``text`` (thousands separators dropped), or the stripped text."""
    found = NUMBER.findall(text)
    return found[-1].replace(",", "") if found else text.strip()


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "exact": lambda text: text.strip(),
    "first_line": lambda text: text.strip().splitlines()[0].strip() if text.strip() else "",
    "last_number": last_number,
}


# ----------------------------------------------------------------------------- encoding
class Encoder:
    """Rows -> token columns, for ``Dataset.map(batched=True, with_indices=True)``: picklable, so
    ``num_proc`` workers can run it."""

    def __init__(
        self,
        tokenizer: Any,
        source: str,
        fields: tuple[str | list[str], str, str],
        max_length: int,
        system_prompt: str | None,
        assistant_turns: str,
    ) -> None:
        self.tokenizer, self.source, self.fields = tokenizer, source, fields
        self.max_length, self.system_prompt, self.assistant_turns = max_length, system_prompt, assistant_turns
        self.end = turn_end_id(tokenizer)
        self.end_text = tokenizer.convert_ids_to_tokens(self.end) if self.end is not None else ""

    # -- rows to conversations
    def messages(self, row: dict[str, Any], index: int) -> list[dict[str, str]]:
        """The row as a conversation ending with the assistant's response; errors name the row."""
        prompt_field, response_field, messages_field = self.fields
        where = f"{self.source} {row_name(self.source, index)}"
        chat = row.get(messages_field)
        if chat:
            ok = isinstance(chat, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in chat)
            if not ok or chat[-1]["role"] != "assistant" or not str(chat[-1]["content"]).strip():
                raise ValueError(
                    f"{where}: {messages_field!r} must be a list of {{role, content}} ending with a non-empty "
                    "assistant message (the response)."
                )
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in chat]
        else:
            names = [prompt_field] if isinstance(prompt_field, str) else list(prompt_field)
            parts, response = [row.get(n) for n in names], row.get(response_field)
            if parts[0] is None or response is None:
                have = sorted(k for k, v in row.items() if v is not None)
                raise ValueError(
                    f"{where} has no {prompt_field!r} and {response_field!r} (nor {messages_field!r}); "
                    f"its fields are {have}."
                )
            if not str(response).strip():
                raise ValueError(f"{where} has an empty {response_field!r}; every example needs a response.")
            prompt = "\n\n".join(str(p) for p in parts if p is not None and str(p).strip())
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(response)}]
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        text, instruction = "", []
        for m in messages:
            if m["role"] == "assistant":
                text += PLAIN_TEMPLATE.format(prompt="\n\n".join(instruction)) + m["content"] + self.end_text + "\n\n"
                instruction = []
            else:
                instruction.append(m["content"])
        return text + (PLAIN_TEMPLATE.format(prompt="\n\n".join(instruction)) if generation_prompt else "")

    def pieces(self, messages: list[dict[str, str]], where: str) -> tuple[list[tuple[str, bool]], str]:
        """``[(text, is a trained assistant turn), ...]`` in order, the last one the response, and the
        prompt text (everything before the response, as generation sees it)."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.assistant_turns == "last":
            turns = turns[-1:]
        pieces: list[tuple[str, bool]] = []
        done, carry = "", ""
        for k in turns:
            before = self.render(messages[:k], True)
            after = self.render(messages[: k + 1], False)
            content = messages[k]["content"]
            at = after.find(content, len(before)) if after.startswith(before) else -1
            if at < 0 and after.startswith(before):  # templates that trim a message (Llama 3's)
                content = content.strip()
                at = after.find(content, len(before))
            if not before.startswith(done) or at < 0:
                raise ValueError(
                    f"{where}: the chat template does not render this conversation turn by turn (an earlier turn "
                    "changes when a later one is added); set assistant_turns: last to train on the last turn only."
                )
            pieces.append((carry + before[len(done) :] + after[len(before) : at], False))
            pieces.append((content, True))
            rest = after[at + len(content) :]
            cut = rest.find(self.end_text) if self.end_text else -1
            carry = rest[cut + len(self.end_text) :] if cut >= 0 else rest
            done = after
        return pieces, before  # the last turn's context is what generation is prompted with

    def assemble(self, pieces: list[list[int]], trained: list[bool], prompt_text: str, answer: str) -> dict[str, Any]:
        """The pieces' tokens in order, each trained turn followed by the end-of-turn token and
        labelled, everything else ``-100``; then cut to ``max_length`` (see the module docstring)."""
        end = [self.end] if self.end is not None else []
        ids: list[int] = []
        labels: list[int] = []
        for piece, is_trained in zip(pieces[:-1], trained[:-1], strict=True):
            piece = piece + end if is_trained else piece
            ids += piece
            labels += piece if is_trained else [-100] * len(piece)
        response = pieces[-1] + end
        context_tokens = len(ids)
        room, prompt_cut, response_cut = self.max_length, False, False
        if len(ids) + len(response) > room:
            if len(response) <= room // 2 or len(ids) <= room - len(response):
                keep = room - len(response)
                prompt_cut = True
            else:
                keep = min(len(ids), room // 2)
                prompt_cut = keep < len(ids)
                response_cut = True
                response = response[: room - keep]
            ids, labels = (ids[len(ids) - keep :], labels[len(labels) - keep :]) if keep > 0 else ([], [])
        return {
            "input_ids": ids + response,
            "labels": labels + response,
            "prompt_length": len(ids),
            "prompt_tokens": context_tokens,
            "length": len(ids) + len(response),
            "prompt": prompt_text,
            "answer": answer,
            "prompt_cut": prompt_cut,
            "response_cut": response_cut,
        }

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        """A batch of rows: templates rendered row by row, every piece of text of the batch tokenised
        in one call (the fast tokenizer's batch encoding runs in Rust, in parallel)."""
        rows = []
        for j, index in enumerate(indices):
            row = {key: values[j] for key, values in batch.items()}
            messages = self.messages(row, index)
            pieces, prompt_text = self.pieces(messages, f"{self.source} {row_name(self.source, index)}")
            rows.append((pieces, prompt_text, messages[-1]["content"]))
        texts = [text for pieces, _, _ in rows for text, _ in pieces]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for pieces, prompt_text, answer in rows:
            ids = [next(encoded) for _ in pieces]  # an empty text encodes to no tokens
            for key, value in self.assemble(ids, [t for _, t in pieces], prompt_text, answer).items():
                out[key].append(value)
        return out


COLUMNS = ("input_ids", "labels", "prompt_length", "prompt_tokens", "length", "prompt", "answer", "prompt_cut",
           "response_cut")  # fmt: skip


def features() -> Any:
    from datasets import Features, Sequence, Value

    return Features(
        {
            "input_ids": Sequence(Value("int32")),
            "labels": Sequence(Value("int32")),
            "prompt_length": Value("int32"),
            "prompt_tokens": Value("int32"),
            "length": Value("int32"),
            "prompt": Value("string"),
            "answer": Value("string"),
            "prompt_cut": Value("bool"),
            "response_cut": Value("bool"),
        }
    )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of everything about a tokenizer that changes its tokens: vocabulary and merges (the
    fast tokenizer's JSON), special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.all_special_tokens, getattr(tokenizer, "chat_template", None))).encode())
    return h.hexdigest()[:16]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while data was prepared (a KeyboardInterrupt, so that datasets removes the cache
    file it was writing, as it does on Ctrl-C)."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the process at once (status 143) while data is prepared: Lightning's own handler
    only marks the signal for the training loop, which would see it after preparation, possibly
    long after a cluster's grace period. datasets writes its cache files beside their place, renames
    them when complete and deletes them when interrupted, so nothing half-written is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except Terminated:
        print("SIGTERM while preparing the data: stopped; nothing was cached half-way.", file=sys.stderr)
        raise SystemExit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def unicode_errors_named(source: str) -> Iterator[None]:
    """pyarrow takes a file's bytes as they are; text that is not UTF-8 fails only when a row is read."""
    try:
        yield
    except UnicodeDecodeError as err:
        path = Path(source)
        found = diagnose(path) if path.is_file() else None
        raise ValueError(found or f"{source} is not UTF-8 text ({err.reason}); save it as UTF-8.") from None


# ----------------------------------------------------------------------------- datasets
class _Column:
    """One text column of a split read row by row (``texts[i]``), without materialising the column."""

    def __init__(self, examples: Examples, name: str) -> None:
        self.examples, self.name = examples, name

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        return self.examples.table[self.examples.row(index)][self.name]


class Examples(Dataset):
    """Tokenised examples of one split, memory-mapped from the datasets cache: item ``i`` is
    ``{input_ids, labels, prompt_length, prompt, answer, ..., index}``. A split carved from a larger
    table keeps that table and its own row numbers (``rows``): datasets' ``select`` would gather every
    column of the selected rows into memory whenever a whole column is read."""

    def __init__(self, table: Any, rows: np.ndarray | None = None) -> None:
        self.table = table.with_format(None)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else len(self.rows)

    def row(self, index: int) -> int:
        """The table row of example ``index``."""
        return int(index) if self.rows is None else int(self.rows[int(index)])

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(self.table, np.asarray(rows) if self.rows is None else self.rows[np.asarray(rows)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.table[self.row(index)], "index": int(index)}

    def column(self, name: str) -> np.ndarray:
        """A numeric column as an array (4 bytes an example for lengths), read from the memory-mapped
        table in one zero-copy Arrow call (``Dataset[name]`` would iterate row by row: minutes for a
        million rows)."""
        if len(self.table) == 0:
            return np.zeros(0, dtype=np.int64)
        full = np.asarray(self.table.select_columns([name]).with_format("numpy")[:][name])
        return full if self.rows is None else full[self.rows]

    @property
    def lengths(self) -> np.ndarray:
        return self.column("length")

    @property
    def texts(self) -> _Column:  # what prediction files show as the input
        return _Column(self, "prompt")

    def answer(self, index: int) -> str:
        return self.table[self.row(index)]["answer"]

    def counts(self) -> dict[str, int]:
        return {
            "examples": len(self),
            "prompts cut": int(self.column("prompt_cut").sum()) if len(self) else 0,
            "responses cut": int(self.column("response_cut").sum()) if len(self) else 0,
        }


class Packed(Dataset):
    """Training examples packed into rows of at most ``max_length`` tokens: first-fit decreasing in
    seeded chunks of 1,024 examples (each row is a fixed group of examples; the sampler shuffles
    rows). An item is the group's examples, which ``collate`` lays side by side."""

    def __init__(self, examples: Dataset, lengths: np.ndarray, max_length: int, seed: int) -> None:
        self.examples = examples
        order = np.random.default_rng(seed).permutation(len(lengths))
        self.groups: list[np.ndarray] = []
        for start in range(0, len(order), 1024):
            chunk = order[start : start + 1024]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            room = np.empty(0, dtype=np.int64)
            members: list[list[int]] = []
            for index in chunk:
                fits = np.flatnonzero(room >= lengths[index])
                if fits.size:
                    room[fits[0]] -= lengths[index]
                    members[fits[0]].append(int(index))
                else:
                    room = np.append(room, max_length - lengths[index])
                    members.append([int(index)])
            self.groups += [np.asarray(m) for m in members]
        self.fill = float(lengths.sum() / (len(self.groups) * max_length)) if self.groups else 0.0

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.examples[int(i)] for i in self.groups[int(index)]]


def _examples(dataset: Dataset) -> Examples:
    """The :class:`Examples` under subsets (``max_eval_samples``); a batch's ``index`` is already its
    index there (``Examples.__getitem__`` sets it)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not isinstance(dataset, Examples):
        raise TypeError(f"{type(dataset).__name__} holds no tokenised examples")
    return dataset


# ----------------------------------------------------------------------------- the data module
class InstructionData(DataModule):
    """Instruction tuning data through Hugging Face ``datasets``.

    Args:
        train_file: training examples: a ``.jsonl``, ``.json`` (lines or one array), ``.csv``,
            ``.tsv`` or ``.parquet`` file, a ``save_to_disk`` folder, or a hub dataset name (needs the
            network or the datasets cache; its ``train`` split).
        val_file: validation examples (a hub dataset's or saved ``DatasetDict``'s ``validation`` split);
            by default the ``validation`` split of a ``DatasetDict`` train folder, else carved from
            ``train_file``.
        test_file: test examples (the ``test`` split likewise); by default a ``DatasetDict`` train
            folder's ``test`` split, else carved from ``train_file``.
        prompt_field: column of the prompt, or a list of columns joined by blank lines (Alpaca:
            ``[instruction, input]`` with ``response_field: output``; empty ones are skipped).
        response_field: column of the response (the reference answer).
        messages_field: column of a chat (a list of ``{"role", "content"}`` ending with the
            assistant's response); used for rows that have it instead of prompt / response.
        max_length: tokens per example, prompt and response together (with ``packing``: per row).
        answer_extractor: how a generation and a reference are reduced before they are compared for
            exact match: ``exact`` (whitespace stripped), ``first_line`` or ``last_number``.
        system_prompt: a system message put before every prompt (in place of the chat template's
            default one, e.g. "Answer with the number only."); ``null`` keeps the template's.
        assistant_turns: which assistant turns of a chat train: ``all`` or ``last``.
        packing: pack several training examples into each row of ``max_length`` tokens (attention
            never crosses examples); evaluation stays one example per row.
        num_proc: processes that tokenise (``Dataset.map``'s ``num_proc``); ``null``: this one.
        cache_dir: the datasets cache (``null``: ``$HF_DATASETS_CACHE``, ``~/.cache/huggingface/datasets``).
        **kwargs: the shared settings of :class:`~genlora_pl.data.base.DataModule` (batch_size,
            num_workers, val_fraction, test_fraction, max_train_samples, max_eval_samples, seed, backbone).
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        prompt_field: str | list[str] = "prompt",
        response_field: str = "response",
        messages_field: str = "messages",
        max_length: int = 512,
        answer_extractor: str = "exact",
        system_prompt: str | None = None,
        assistant_turns: str = "all",
        packing: bool = False,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not is_int(max_length, 2):
            raise ValueError(f"max_length={max_length!r} is not valid; give a number of tokens of at least 2.")
        if answer_extractor not in EXTRACTORS:
            raise ValueError(
                f"answer_extractor={answer_extractor!r} is not valid; choose one of {', '.join(EXTRACTORS)}."
            )
        if assistant_turns not in TURNS:
            raise ValueError(f"assistant_turns={assistant_turns!r} is not valid; choose one of {', '.join(TURNS)}.")
        if num_proc is not None and not is_int(num_proc, 1):
            raise ValueError(f"num_proc={num_proc!r} is not valid; give a positive number of processes or null.")
        if not isinstance(prompt_field, str) and not (
            isinstance(prompt_field, list) and prompt_field and all(isinstance(f, str) for f in prompt_field)
        ):
            raise ValueError(f"prompt_field={prompt_field!r} is not valid; give a column name or a list of them.")
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        for split in ("val", "test"):  # a saved DatasetDict brings its own held-out splits
            if self.files[split] is None and HUB_SPLITS[split] in saved_splits(train_file):
                self.files[split] = train_file
        self.fields = (prompt_field, response_field, messages_field)
        self.max_length = max_length
        self.answer_extractor = answer_extractor
        self.system_prompt = system_prompt
        self.assistant_turns = assistant_turns
        self.packing = packing
        self.num_proc = num_proc
        self.cache_dir = cache_dir
        for source in self.files.values():
            if source:
                self.check_source(source)  # a missing file fails before the model loads
        self._tokenizer: Any = None
        self._prepared: dict[str, Any] = {}
        self.report: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------- reading
    def check_source(self, source: str) -> None:
        path = Path(source).expanduser()
        if not path.exists() and looks_local(source):
            prompt_field, response_field, messages_field = self.fields
            raise FileNotFoundError(
                f"{source} does not exist; give a {', '.join(FORMATS)} file (or a save_to_disk folder, or a hub "
                f"dataset name) with {prompt_field!r} and {response_field!r} (or {messages_field!r})."
            )
        if path.is_file() and path.suffix not in FORMATS:
            raise ValueError(f"{source} is not a {', '.join(FORMATS)} file; those are the instruction formats read.")

    def raw(self, split: str) -> Any:
        """The split's untokenised table."""
        table = load_table(self.files[split], HUB_SPLITS[split], self.cache_dir)
        if len(table) == 0:
            raise ValueError(f"{self.files[split]} holds no examples.")
        return table

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

    def encoder(self, source: str) -> Encoder:
        return Encoder(self.tokenizer, source, self.fields, self.max_length, self.system_prompt, self.assistant_turns)

    def format(self, prompt: Any) -> str:
        """The text before the response: a chat turn (the template's) or the plain template."""
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.encoder("").render(messages, True)

    def cache_key(self, table: Any) -> str:
        """What the tokenised columns depend on; the same key finds them in the datasets cache."""
        settings = {
            "source": table._fingerprint,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "fields": self.fields,
            "max_length": self.max_length,
            "system_prompt": self.system_prompt,
            "assistant_turns": self.assistant_turns,
            "format": FORMAT_VERSION,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def tokenize(self, table: Any, source: str) -> Examples:
        """``table`` tokenised by a batched ``Dataset.map`` (cached under :meth:`cache_key`)."""
        with unicode_errors_named(source):
            tokens = table.map(
                self.encoder(source),
                batched=True,
                with_indices=True,
                batch_size=256,
                writer_batch_size=WRITER_BATCH,
                num_proc=self.num_proc if self.num_proc and self.num_proc > 1 else None,
                remove_columns=table.column_names,
                features=features(),
                new_fingerprint=self.cache_key(table),
                desc=f"tokenising {Path(source).name or source}",
            )
        return Examples(tokens)

    def tokenized(self, split: str) -> Examples:
        if split not in self._prepared:
            with stop_on_sigterm():
                self._prepared[split] = self.tokenize(self.raw(split), self.files[split])
        return self._prepared[split]

    def prepare_data(self) -> None:
        """Tokenise every source into the datasets cache (Lightning runs this once per node)."""
        for split, source in self.files.items():
            if source:
                self.tokenized(split)

    # ------------------------------------------------------------- splits and batches
    def load_splits(self) -> dict[str, Dataset]:
        train = self.tokenized("train")
        splits: dict[str, Dataset] = {s: self.tokenized(s) for s in ("val", "test") if self.files[s]}
        if len(splits) < 2:
            parts = self.carve(len(train), val="val" not in splits, test="test" not in splits)
            for split in ("val", "test"):
                if split in parts:
                    splits[split] = train.subset(parts[split])
            train = train.subset(parts["train"])
        self.check_fits(train)
        splits["train"] = train
        for split in ("train", "val", "test"):
            self.report[split] = counts = splits[split].counts()
            if counts["prompts cut"] or counts["responses cut"]:
                print(
                    f"{split}: {counts['prompts cut']} of {counts['examples']} prompts cut from the left and "
                    f"{counts['responses cut']} responses cut at the end to fit max_length={self.max_length}"
                )
        return splits

    def check_fits(self, train: Examples) -> None:
        if len(train) == 0:
            raise ValueError(f"{self.files['train']} leaves no training examples after val and test are carved.")
        shortest = int(train.column("prompt_tokens").min())
        if shortest >= self.max_length:
            raise ValueError(
                f"max_length={self.max_length} is shorter than every prompt of {self.files['train']} "
                f"(the shortest has {shortest} tokens); raise it so the responses fit."
            )

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.packing and not isinstance(self.splits["train"], Packed):
            train = self.splits["train"]
            self.splits["train"] = Packed(train, _lengths(train), self.max_length, self.seed)
            print(
                f"train: {len(train)} examples packed into {len(self.splits['train'])} rows of up to "
                f"{self.max_length} tokens ({self.splits['train'].fill:.0%} filled)"
            )

    def make_sampler(self, dataset: Dataset, parts: dict[str, int]) -> ResumableSampler:
        if isinstance(dataset, Packed):
            return ResumableSampler(dataset, shuffle=True, seed=self.order_seed, **parts)
        lengths = _lengths(dataset)
        return BucketedSampler(
            dataset, shuffle=True, seed=self.order_seed, lengths=lengths, global_batch=self.batch_size, **parts
        )

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def collate(self, batch: list[Any]) -> dict[str, Any]:
        """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` for the loss, and the prompts
        left-padded (``prompt_ids`` / ``prompt_mask``) with their ``answers`` for generation. Packed
        rows (lists of examples) get ``position_ids`` that restart at every example and no attention
        mask, which is how transformers recognises a padding-free batch and keeps attention inside
        each example."""
        if batch and isinstance(batch[0], list):
            return self.collate_packed(batch)
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        prompt_width = max(max(b["prompt_length"] for b in batch), 1)
        prompt_ids = torch.full((len(batch), prompt_width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(batch), prompt_width), dtype=torch.long)
        for row, b in enumerate(batch):
            n, p = len(b["input_ids"]), b["prompt_length"]
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
            if p:
                prompt_ids[row, prompt_width - p :] = ids[row, :p]
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

    def collate_packed(self, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
        width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for e in row:
                n = len(e["input_ids"])
                ids[r, start : start + n] = torch.tensor(e["input_ids"])
                labels[r, start : start + n] = torch.tensor(e["labels"])
                labels[r, start] = -100  # nothing predicts an example's first token from the one before
                positions[r, start : start + n] = torch.arange(n)
                start += n
            positions[r, start:] = torch.arange(width - start)  # the padding: one more sequence of its own
        return {"input_ids": ids, "labels": labels, "position_ids": positions}

    # ------------------------------------------------------------- scoring
    def score(self, split: str, indices: list[int], generations: list[str]) -> list[float]:
        """1.0 where the extracted generation equals the extracted reference answer, else 0.0."""
        extract = EXTRACTORS[self.answer_extractor]
        examples = _examples(self.splits[split])
        return [
            float(extract(text) == extract(examples.answer(i))) for i, text in zip(indices, generations, strict=True)
        ]


def _lengths(dataset: Dataset) -> np.ndarray:
    if isinstance(dataset, Examples):
        return dataset.lengths
    if isinstance(dataset, Subset):
        return _lengths(dataset.dataset)[np.asarray(dataset.indices)]
    return np.ones(len(dataset), dtype=np.int64)


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
            if not is_int(size, 1):
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
        super().__init__(train_file="", **kwargs)
        self.files = {split: f"reasoning-gym:{task}" for split in ("train", "val", "test")}

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

    def check_source(self, source: str) -> None:
        pass  # generated, not read

    def raw(self, split: str) -> Any:
        from datasets import Dataset as Table

        entries = self._entries[split]
        rows = {"prompt": [e["question"] for e in entries], "response": [str(e["answer"]) for e in entries]}
        return Table.from_dict(rows)

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
