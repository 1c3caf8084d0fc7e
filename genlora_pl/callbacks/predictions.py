"""``PredictionWriter``: ``predict`` writes what it predicted to a JSONL file, one row per example.

The task says what a row holds (``AdapterTask.prediction_rows``): for a classifier the example's index
in the prediction split, what the data module can say about the input (the text, or the image path),
the predicted label name and the probability of every class; for a causal LM the prompt, the
generation and the reference answer.
The file goes beside the checkpoint's run (``<run>/predictions.jsonl``, for ``--ckpt_path
<run>/checkpoints/best.ckpt``), else into ``trainer.default_root_dir``; ``path`` overrides both.
Written whole when the epoch ends (a temporary file renamed into place); under several processes each
rank writes its share to ``predictions.rank<N>.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from genlora_pl.checkpoints import run_folder
from genlora_pl.files import atomic_write_text


def _size(output: Any) -> int:
    """The number of examples in a prediction output (the first tensor's or list's length)."""
    values = output.values() if isinstance(output, dict) else [output]
    return next((len(v) for v in values if hasattr(v, "__len__")), 0)


class PredictionWriter(BasePredictionWriter):
    """Write ``predict`` results as JSONL (see the module docstring).

    Args:
        path: the output file; by default ``predictions.jsonl`` beside the checkpoint's run.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path
        self.written: Path | None = None

    def output_path(self, trainer: L.Trainer) -> Path:
        if self.path:
            path = Path(self.path)
        else:
            folder = run_folder(trainer.ckpt_path) or Path(trainer.default_root_dir)
            path = folder / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        rows_of = getattr(pl_module, "prediction_rows", None)
        if rows_of is None:
            return  # not one of our tasks: nothing of ours to write
        describe = getattr(trainer.datamodule, "describe", None)
        if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
            batch_indices = batch_indices[0]  # one dataloader: Lightning nests its batches' indices once more
        rows, position = [], 0
        for batch_no, output in enumerate(predictions):
            size = _size(output)
            given = batch_indices[batch_no] if batch_indices and batch_no < len(batch_indices) else None
            indices = [int(i) for i in given] if given else list(range(position, position + size))
            position += size
            rows += rows_of(output, indices, (lambda i: describe("predict", i)) if describe else None)
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.written = path
        print(f"predictions: {len(rows)} rows written to {path}")
