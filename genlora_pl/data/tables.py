"""One reader for every tabular source: local files, ``save_to_disk`` folders and hub datasets, all as
Hugging Face ``datasets.Dataset`` (Arrow, memory-mapped from the datasets cache).

``load_table(source)`` accepts

- a file: ``.jsonl``, ``.json`` (JSON lines, or one JSON array of objects: Alpaca's layout),
  ``.csv``, ``.tsv`` or ``.parquet``;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- anything else is read as a hub dataset name (``tatsu-lab/alpaca``), which needs the network or
  the datasets cache.

The file is converted to Arrow once, in the datasets cache, keyed by its path and modification
time; later reads memory-map it, so a table of any size costs almost no resident memory. A file
the converter cannot read gets one sentence that names the file and the line or byte at fault.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlora_pl.errors import first_line

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_saved_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)


def saved_splits(source: str) -> list[str]:
    """The split names of a ``DatasetDict.save_to_disk`` folder (none for anything else)."""
    path = Path(source).expanduser() / "dataset_dict.json"
    return list(json.loads(path.read_text()).get("splits", [])) if path.is_file() else []


def looks_local(source: str) -> bool:
    """Whether ``source`` is meant as a path (so a missing one is an error, not a hub name)."""
    return source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS


def first_line_number(source: Path) -> int:
    """The line number of a file's first data row (CSV/TSV rows start after the header)."""
    return 2 if source.suffix in (".csv", ".tsv") else 1


def row_name(source: str, index: int) -> str:
    """How a bad-input message names row ``index`` (0-based) of ``source``: a line of a text file, an
    item of a JSON array, a row elsewhere."""
    suffix = Path(source).suffix
    if suffix in (".jsonl", ".csv", ".tsv"):
        return f"line {index + first_line_number(Path(source))}"
    if suffix == ".json":
        return f"item {index + 1}"
    return f"row {index + 1}"


def diagnose(path: Path) -> str | None:
    """What is wrong with a text file the converter refused: not UTF-8, or a line that is not JSON."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"{path} is not UTF-8 text (byte {err.start} of line {number}); save it as UTF-8."
            if path.suffix == ".jsonl" and line.strip():
                try:
                    json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as err:
                    return (
                        f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                        "each line must be one JSON object."
                    )
    if path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except json.JSONDecodeError as err:
            return f"{path} is not valid JSON (line {err.lineno}: {err.msg}); give JSON lines or one array of objects."
    return None


def csv_options(path: Path) -> dict[str, Any]:
    """Every CSV/TSV cell is read as the text it is: "007", "3.50" and "NA" stay strings (pandas would
    make them 7, 3.5 and a missing value: a wrong reference answer)."""
    import csv

    from datasets import Features, Value

    delimiter = "\t" if path.suffix == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=delimiter), [])
    except UnicodeDecodeError:
        header = []  # the converter fails next, and diagnose() names the byte
    options: dict[str, Any] = {"delimiter": delimiter, "keep_default_na": False, "na_filter": False}
    if header and len(set(header)) == len(header):
        options["features"] = Features({name: Value("string") for name in header})
    return options


def load_table(source: str, split: str = "train", cache_dir: str | None = None) -> Any:
    """``source`` as a ``datasets.Dataset`` (see the module docstring); ``split`` picks the split of a
    saved ``DatasetDict`` or of a hub dataset."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if is_saved_folder(path):
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                if split not in table:
                    raise ValueError(f"{source} has no split {split!r}; its splits are {sorted(table)}.")
                table = table[split]
            return table
        if path.is_dir() or path.suffix not in FORMATS:
            raise ValueError(
                f"{source} is neither a {', '.join(FORMATS)} file nor a save_to_disk folder; those are the formats "
                "read."
            )
        builder = FORMATS[path.suffix]
        options = csv_options(path) if builder == "csv" else {}
        try:
            with quiet_datasets():
                return datasets.load_dataset(
                    builder, data_files=str(path.resolve()), split="train", cache_dir=cache_dir, **options
                )
        except Exception as err:  # the converter's own message is pages of pyarrow; name the line instead
            found = diagnose(path) if builder != "parquet" else None
            cause = err.__cause__ or err
            raise ValueError(found or f"{source} could not be read as {builder}: {first_line(cause)}.") from None
    if looks_local(source):
        raise FileNotFoundError(
            f"{source} does not exist; give a {', '.join(FORMATS)} file, a save_to_disk folder or a hub dataset name."
        )
    try:
        with quiet_datasets():
            return datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    except Exception as err:
        raise ValueError(
            f"{source!r} is not a local file or folder, and the hub dataset of that name (split {split!r}) cannot "
            f"be loaded from here ({first_line(err)})."
        ) from None


class quiet_datasets:
    """datasets' progress bars and log lines off for the duration: a file it cannot parse gets our one
    sentence, not its ERROR line before it."""

    def __enter__(self) -> None:
        import datasets

        self.enabled = datasets.is_progress_bar_enabled()
        self.level = datasets.logging.get_verbosity()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)

    def __exit__(self, *exc: Any) -> None:
        import datasets

        datasets.logging.set_verbosity(self.level)
        if self.enabled:
            datasets.enable_progress_bars()
