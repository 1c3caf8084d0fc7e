"""A third task written against docs/python-api.md ("Adding a task") and nothing else: regression of
one number from a vector, on a small MLP whose root is an ``nn.Sequential``, with its data module.
No file of the package knows it exists; ``tests/e2e/test_third_task.py`` runs it through the CLI."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from genlora_pl.data import DataModule
from genlora_pl.tasks import AdapterTask


class RegressionModule(AdapterTask):
    """Predict a number. The backbone is rebuilt from ``weights_seed`` every time (it stands for
    pretrained weights: checkpoints keep only what was trained)."""

    task: ClassVar[str] = "regression"
    shaping_hparams: ClassVar[tuple[str, ...]] = ("backbone", "in_features", "hidden")

    def __init__(
        self, backbone: str = "mlp", in_features: int = 8, hidden: int = 32, weights_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(backbone, **kwargs)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        with torch.random.fork_rng():
            torch.manual_seed(hp.weights_seed)
            return nn.Sequential(
                nn.Linear(hp.in_features, hp.hidden),
                nn.Tanh(),
                nn.Linear(hp.hidden, hp.hidden),
                nn.Tanh(),
                nn.Linear(hp.hidden, 1),
            )

    def new_head(self, backbone: nn.Module) -> list[str]:
        return ["4"]  # the output layer: trained in full with modules_to_save: head

    def build_metrics(self, split: str) -> MetricCollection:
        return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}, prefix=f"{split}/")

    def forward(self, batch: Any) -> torch.Tensor:
        return self.model(batch[0]).squeeze(-1)

    def model_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prediction = self(batch)
        return F.mse_loss(prediction, batch[1]), prediction.detach(), batch[1]


class RegressionData(DataModule):
    """``y = 2 tanh(x . w / sqrt(d)) + noise``, seeded: train, val and test carved from one table."""

    def __init__(self, rows: int = 256, in_features: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows, self.in_features = rows, in_features

    def load_splits(self) -> dict[str, TensorDataset]:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.rows, self.in_features, generator=g)
        w = torch.randn(self.in_features, generator=g) / self.in_features**0.5
        y = 2 * torch.tanh(x @ w) + 0.05 * torch.randn(self.rows, generator=g)
        return self.carve_dataset(TensorDataset(x, y))
