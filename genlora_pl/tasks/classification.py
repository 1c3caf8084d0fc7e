"""Classification: any timm or transformers classifier (images or text), built lazily by name."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from genlora_pl.backbones import BackboneSpec, build_backbone, check_hf_source
from genlora_pl.checks import is_int
from genlora_pl.tasks.base import AdapterTask


class ClassificationModule(AdapterTask):
    """Fine-tune a classifier backbone.

    Metrics per split: ``acc`` (micro: correct / total), ``acc_balanced`` (the mean of per-class
    recalls, i.e. macro accuracy; the two differ when classes are imbalanced) and, above 5 classes,
    ``acc_top5``.

    Args:
        backbone: ``timm:<model>`` or ``hf:<hub id or local folder>``.
        num_classes: number of classes (the CLI takes it from the data module).
        class_names: the class names (the CLI takes them from the data module); exports write them
            as ``id2label`` / ``label_names``, predictions use them.
        label_smoothing: cross-entropy label smoothing.
        **kwargs: the shared settings of :class:`~genlora_pl.tasks.base.AdapterTask` (pretrained,
            checkpoint_path, backbone_kwargs, optimizer, lr_scheduler, head_only, compile, ...).
    """

    task: ClassVar[str] = "classification"
    shaping_hparams: ClassVar[tuple[str, ...]] = ("backbone", "num_classes", "backbone_kwargs", "head_only")
    validation_metrics: ClassVar[tuple[str, ...]] = ("val/loss", "val/acc", "val/acc_balanced", "val/acc_top5")
    tune_metric: ClassVar[str] = "val/acc"

    def __init__(
        self,
        backbone: str,
        num_classes: int | None = 2,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        spec = BackboneSpec.parse(backbone)  # a bad name fails now, not after the data is loaded
        if spec.library == "hf":
            check_hf_source(spec.name)
        if num_classes is None:  # what the CLI links from a data module without classes
            raise ValueError(
                "the data module has no classes, so a classifier cannot be built; instruction data goes with "
                "model.class_path: genlora_pl.tasks.CausalLMModule."
            )
        if not is_int(num_classes, 2):
            raise ValueError(f"num_classes={num_classes!r} is not valid; a classifier needs at least 2 classes.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes={num_classes}; give one per class."
            )
        super().__init__(backbone, **kwargs)
        self.num_classes = num_classes

    def build_metrics(self, split: str) -> MetricCollection:
        n = self.num_classes
        m: dict[str, Any] = {
            "acc": MulticlassAccuracy(n, average="micro"),
            "acc_balanced": MulticlassAccuracy(n, average="macro"),
        }
        if n > 5:
            m["acc_top5"] = MulticlassAccuracy(n, top_k=5, average="micro")
        return MetricCollection(m, prefix=f"{split}/")

    def chance_level(self) -> dict[str, float]:
        """Balanced accuracy 1/K and cross-entropy ln K: what predicting the class prior uniformly gives."""
        return {"val/acc_balanced": 1 / self.num_classes, "val/loss": math.log(self.num_classes)}

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.get("class_names") or [str(i) for i in range(self.num_classes)])

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return build_backbone(
            self.backbone_name,
            self.num_classes,
            hp.pretrained,
            hp.checkpoint_path,
            hp.backbone_kwargs,
            class_names=hp.get("class_names"),
        )

    # ----------------------------------------------------------------- steps
    def forward(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            out = self.model(**{k: v for k, v in batch.items() if k not in ("labels", "index")})
        else:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._check_image_size(images)
            out = self.model(images)
        return out.logits if hasattr(out, "logits") else out

    def _check_image_size(self, images: torch.Tensor) -> None:
        """A timm model with a fixed input size (ViTs) fails deep inside on other sizes; say which
        two settings disagree instead."""
        embed = getattr(self.backbone, "patch_embed", None)
        size = tuple(getattr(embed, "img_size", None) or ())
        if not size or not getattr(embed, "strict_img_size", False) or getattr(embed, "dynamic_img_size", False):
            return
        if images.ndim == 4 and tuple(images.shape[-2:]) != size:
            h, w = images.shape[-2:]
            raise ValueError(
                f"the images are {h}x{w} but {self.backbone_name} was built for {size[0]}x{size[1]} inputs; "
                f"set data.init_args.image_size: {size[0]}, or model.backbone_kwargs.img_size: {h} "
                "(or dynamic_img_size: true)."
            )

    def model_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = batch["labels"] if isinstance(batch, dict) else batch[1]
        logits = self(batch)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        return loss, logits, labels

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch).float().softmax(-1)
        return {"probabilities": probs, "prediction": probs.argmax(-1)}

    def prediction_rows(self, output: Any, indices: list[int], describe: Any) -> list[dict[str, Any]]:
        """The predicted class name and every class's probability, by name."""
        names = self.class_names
        rows = []
        for index, row in zip(indices, output["probabilities"].float().cpu().tolist(), strict=True):
            labels = names if len(names) == len(row) else [str(k) for k in range(len(row))]
            best = max(range(len(row)), key=row.__getitem__)
            rows.append(
                {
                    "index": index,
                    **(describe(index) if describe else {}),
                    "prediction": labels[best],
                    "probabilities": {labels[k]: round(p, 6) for k, p in enumerate(row)},
                }
            )
        return rows
