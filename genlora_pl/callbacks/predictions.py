"""``PredictionWriter``: ``predict`` writes what it predicted to a JSONL file, one row per example.

For a classifier each row holds the example's index in the prediction split, what the data module can
say about the input (the text, or the image path), the predicted label name and the probability of
every class; for a causal LM the prompt, the generation and the reference answer.
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
        datamodule = trainer.datamodule
        names = list(getattr(pl_module, "class_names", None) or [])
        describe = getattr(datamodule, "describe", None)
        if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
            batch_indices = batch_indices[0]  # one dataloader: Lightning nests its batches' indices once more
        rows, position = [], 0
        for batch_no, batch in enumerate(predictions):
            if isinstance(batch, dict) and "rows" in batch:  # a task that returns its rows (causal LM)
                rows += batch["rows"]
                continue
            if not isinstance(batch, dict) or "probabilities" not in batch:
                return  # a module whose predictions are neither: nothing of ours to write
            probs = batch["probabilities"].float().cpu()
            indices = batch_indices[batch_no] if batch_indices and batch_indices[batch_no] else None
            for i, row in enumerate(probs.tolist()):
                index = int(indices[i]) if indices is not None else position
                position += 1
                label = max(range(len(row)), key=row.__getitem__)
                labels = names if len(names) == len(row) else [str(k) for k in range(len(row))]
                rows.append(
                    {
                        "index": index,
                        **(describe("predict", index) if describe else {}),
                        "prediction": labels[label],
                        "probabilities": {labels[k]: round(p, 6) for k, p in enumerate(row)},
                    }
                )
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.written = path
        print(f"predictions: {len(rows)} rows written to {path}")
