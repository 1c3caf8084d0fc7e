"""The LightningModule: any timm or transformers classifier, built lazily by name.

It knows nothing about GenLoRA beyond one hook: whoever wants to change the backbone (the
``GenLoRACallback``) registers a function with :meth:`ClassificationModule.adapt_backbone`, which
runs right after the backbone is built in ``configure_model`` (or at once when it already
exists). That keeps injection before the strategy's DDP/FSDP wrap and before the optimizer is built.

The optimizer and LR scheduler are callables built in ``configure_optimizers`` from the
parameters that require grad. (LightningCLI's own ``--optimizer`` would be built from
``model.parameters()`` before the adapters exist and train nothing.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from genlora_pl.backbones import BackboneSpec, build_backbone, check_hf_source
from genlora_pl.distributed import enable_activation_checkpointing, shard_fsdp2


def _adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


# Wrappers that appear in module names but not in state-dict keys (their state-dict hooks drop them):
# FSDP1 units, activation-checkpoint wrappers, torch.compile.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def trained_state_keys(module: nn.Module) -> set[str]:
    """State-dict keys of what training changes: parameters that require grad, the buffers of the
    modules that own them (adapter ``gate``/``temperature``), and normalisation running statistics
    (a frozen BatchNorm in train mode still updates them)."""
    keys = set()
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        owns_trainable = any(p.requires_grad for p in sub.parameters(recurse=False))
        is_norm = isinstance(sub, nn.modules.batchnorm._NormBase)
        keys |= {dot + n for n, p in sub.named_parameters(recurse=False) if p.requires_grad}
        if owns_trainable or is_norm:
            keys |= {dot + n for n, b in sub.named_buffers(recurse=False) if b is not None}
    return {_clean(k) for k in keys}


class ClassificationModule(L.LightningModule):
    """Fine-tune a classifier backbone.

    Args:
        backbone: ``timm:<model>`` or ``hf:<hub id or local folder>``.
        num_classes: number of classes (the CLI takes it from the data module).
        pretrained: load pretrained weights (timm hub / HF hub or local folder).
        checkpoint_path: a local weights file for a timm backbone (implies pretrained).
        backbone_kwargs: extra arguments of ``timm.create_model`` (``img_size``,
            ``drop_path_rate``) or overrides of the transformers config.
        optimizer: builds the optimizer from the trainable parameters.
        lr_scheduler: builds an LR scheduler from the optimizer, stepped every optimizer step.
        head_only: train the classifier head alone (linear probe). Without an adapter callback and
            without this flag every parameter is trained (full fine-tuning).
        label_smoothing: cross-entropy label smoothing.
        compile: ``torch.compile`` the backbone after adapters are in.
        activation_checkpointing: recompute each block's activations in the backward pass
            (non-reentrant, so adapters inside frozen blocks still get gradients).
        fsdp_blocks: class names of the blocks FSDP2 shards one by one (``ModelParallelStrategy``);
            by default the backbone's repeated blocks are found by :func:`transformer_blocks`.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int = 2,
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        head_only: bool = False,
        label_smoothing: float = 0.0,
        compile: bool = False,
        activation_checkpointing: bool = False,
        fsdp_blocks: list[str] | None = None,
    ) -> None:
        super().__init__()
        spec = BackboneSpec.parse(backbone)  # a bad name fails now, not after the data is loaded
        if spec.library == "hf":
            check_hf_source(spec.name)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} is not valid; a classifier needs at least 2 classes.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.backbone: nn.Module | None = None
        self._backbone_hooks: dict[str, Callable[[nn.Module], None]] = {}

        def metrics(split: str) -> MetricCollection:
            m: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes)}
            if num_classes > 5:
                m["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5)
            return MetricCollection(m, prefix=f"{split}/")

        self.train_metrics, self.val_metrics, self.test_metrics = metrics("train"), metrics("val"), metrics("test")

    # ----------------------------------------------------------------- backbone
    def adapt_backbone(self, name: str, fn: Callable[[nn.Module], None]) -> None:
        """Run ``fn(backbone)`` once the backbone exists (now, if it already does)."""
        self._backbone_hooks[name] = fn
        if self.backbone is not None:
            fn(self.backbone)

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        hp = self.hparams
        backbone = build_backbone(
            self.backbone_name, self.num_classes, hp.pretrained, hp.checkpoint_path, hp.backbone_kwargs
        )
        if self.hparams.head_only:
            from genlora_pl.injection import head_names

            heads = head_names(backbone)
            backbone.requires_grad_(False)
            for name in heads:
                backbone.get_submodule(name).requires_grad_(True)
        backbone.train()  # from_pretrained returns eval mode; Lightning switches modes per loop from here
        self.backbone = backbone
        for fn in self._backbone_hooks.values():
            fn(backbone)
        if hp.activation_checkpointing:
            enable_activation_checkpointing(backbone)
        mesh = self.device_mesh  # set by ModelParallelStrategy only
        if mesh is not None:
            shard_fsdp2(backbone, mesh["data_parallel"], hp.fsdp_blocks)
        # Kept out of nn.Module registration: a second name for the backbone would duplicate every
        # key of the state dict.
        self.__dict__["_compiled"] = torch.compile(backbone) if hp.compile else None

    # ----------------------------------------------------------------- steps
    def forward(self, batch: Any) -> torch.Tensor:
        compiled = self.__dict__.get("_compiled")
        model = compiled if compiled is not None else self.backbone
        if isinstance(batch, dict):
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
        else:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._check_image_size(images)
            out = model(images)
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

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self.model_step(batch)
        self.train_metrics(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, prog_bar=True)
        return loss

    def _eval_step(self, batch: Any, split: str, metrics: MetricCollection) -> None:
        loss, logits, labels = self.model_step(batch)
        metrics.update(logits, labels)
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict(metrics, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch).float().softmax(-1)
        return {"probabilities": probs, "prediction": probs.argmax(-1)}

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no parameter requires grad: nothing would be trained; check the adapter targets.")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_total_steps"):
            scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only what was trained: a GenLoRA checkpoint of a ViT-B is kilobytes, not 330 MB.
        The frozen weights come back from the pretrained source when it is loaded; a randomly
        initialised backbone (``pretrained=False``) has no such source and is saved whole."""
        state = checkpoint["state_dict"]
        # A distributed checkpoint (FSDP2 DCP folder, FSDP1 sharded) holds DTensor / ShardedTensor
        # shards that its loader restores key by key, all keys required: it stays whole, spread over
        # the ranks' files. Full-state files (the shipped configs) are filtered.
        distributed = any(isinstance(v, torch.Tensor) and type(v) is not torch.Tensor for v in state.values())
        if distributed or not (self.hparams.pretrained or self.hparams.checkpoint_path):
            checkpoint["trained_only"] = False
            return
        keep = trained_state_keys(self)
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        checkpoint["trained_only"] = len(checkpoint["state_dict"]) < len(state)

    def differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """``"<setting>=<there> there, <here> here"`` for each setting that shapes the trained weights
        (backbone, classes, adapter method, rank, targets, ...) and differs from this model's."""
        from genlora_pl.checkpoint_export import adapter_config_of
        from genlora_pl.injection import CONFIG_ATTR

        saved = checkpoint.get("hyper_parameters", {})
        out = [
            f"{key}={saved[key]!r} there, {self.hparams.get(key)!r} here"
            for key in ("backbone", "num_classes", "backbone_kwargs", "head_only")
            if key in saved and saved[key] != self.hparams.get(key)
        ]
        theirs = adapter_config_of(checkpoint)
        mine = getattr(self.backbone, CONFIG_ATTR, None)
        mine = mine.to_dict() if mine is not None else None
        if (theirs is None) != (mine is None):
            out.append(f"{'adapters' if theirs else 'no adapters'} there, {'adapters' if mine else 'none'} here")
        elif theirs and mine:
            keys = sorted((set(theirs) | set(mine)) - {"modules_to_save"})
            out += [f"{k}={theirs.get(k)!r} there, {mine.get(k)!r} here" for k in keys if theirs.get(k) != mine.get(k)]
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check a checkpoint fits this model before anything is copied: first the settings that
        shape the weights (one sentence with what differs), then every key and shape."""
        self.configure_model()
        differences = self.differences(checkpoint)
        if differences:
            path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
            raise ValueError(
                f"the checkpoint{f' {path}' if path else ''} was saved for another model ({'; '.join(differences)}); "
                "resume with the settings it was trained with, or start a new fit without --ckpt_path."
            )
        state = checkpoint.get("state_dict")
        if not state:  # a distributed checkpoint: the strategy restores the module itself, key by key
            return
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(trained_state_keys(self) - set(state))
        wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if unexpected or missing or wrong:
            detail = (
                f"unexpected keys {unexpected[:3]}"
                if unexpected
                else f"missing trained keys {missing[:3]}"
                if missing
                else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here"
            )
            raise ValueError(
                f"the checkpoint does not fit this model ({detail}); it was saved with another backbone, "
                "adapter or target set."
            )
        self.strict_loading = not checkpoint.get("trained_only", False)
