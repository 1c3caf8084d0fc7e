"""The LightningModule every task shares: a backbone built lazily by name, one hook for whoever
adapts it, trained-only checkpoints that refuse to load into another model, and the optimizer.

It knows nothing about GenLoRA beyond one hook: whoever wants to change the backbone (the
``AdapterCallback``) registers a function with :meth:`AdapterTask.adapt_backbone`, which runs right
after the backbone is built in ``configure_model`` (or at once when it already exists). That keeps
injection before the strategy's DDP/FSDP wrap and before the optimizer is built.

The optimizer and LR scheduler are callables built in ``configure_optimizers`` from the parameters
that require grad. (LightningCLI's own ``--optimizer`` would be built from ``model.parameters()``
before the adapters exist and train nothing.)

A task is one file and one registration: a subclass that names itself (``task = "regression"``)
is registered by that alone (:data:`TASKS`, what checkpoints and error messages name) and says

- how to build its backbone (:meth:`AdapterTask.build_backbone`),
- its loss (:meth:`AdapterTask.model_step`: ``(loss, outputs, targets)``) and its metrics
  (:meth:`AdapterTask.build_metrics`: a ``MetricCollection`` fed ``(outputs, targets)``),
- what a prediction is (:meth:`AdapterTask.predict_step`) and how it reads as JSONL rows
  (:meth:`AdapterTask.prediction_rows`),
- PEFT's ``task_type`` for its exports (:attr:`AdapterTask.peft_task_type`).

The steps, the logging of loss and metrics per split, checkpoints, the optimizer and the adapter
hook live here. A task that evaluates differently (the causal LM generates) overrides the steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from genlora_pl.adapters import AdapterLayer, config_differences
from genlora_pl.backbones import BackboneSpec, save_backbone
from genlora_pl.checkpoints import adapter_config_of
from genlora_pl.checks import is_number
from genlora_pl.compat import FORMAT_VERSION, migrate_checkpoint
from genlora_pl.distributed import enable_activation_checkpointing, shard_fsdp2
from genlora_pl.errors import TASK_PATHS, first_line
from genlora_pl.injection import CONFIG_ATTR, adapter_layers, head_names


def _adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


# Wrappers that appear in module names but not in state-dict keys (their state-dict hooks drop them):
# FSDP1 units, activation-checkpoint wrappers, torch.compile.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


#: The tasks by the name their checkpoints record (``checkpoint["task"]``), filled by subclassing.
TASKS: dict[str, type[AdapterTask]] = {}


def class_path(cls: type) -> str:
    """Where a class is imported from: ours by the short path the package exports
    (``genlora_pl.tasks.CausalLMModule``)."""
    module = "genlora_pl.tasks" if cls.__module__.startswith("genlora_pl.tasks.") else cls.__module__
    return f"{module}.{cls.__qualname__}"


def task_class(name: str | None, path: str | None = None) -> type[AdapterTask]:
    """The task module a checkpoint was written by: by its registered name, else by its class path
    (imported: a task defined outside the package registers itself so); a checkpoint that names
    neither is a classification one (written before tasks were recorded). A ValueError names the
    known tasks."""
    name = name or ("classification" if path is None else None)
    if name in TASKS:
        return TASKS[name]
    if path:
        import importlib

        module, _, attr = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            found = None
        if isinstance(found, type) and issubclass(found, AdapterTask):
            return found
    raise ValueError(
        f"task={name or path!r} is unknown; the known tasks are {', '.join(sorted(TASKS))}"
        + (f" ({path} cannot be imported here)." if path else ".")
    )


def _batch_size(targets: Any) -> int | None:
    return len(targets) if isinstance(targets, torch.Tensor) and targets.ndim else None


def trained_state_keys(module: nn.Module) -> set[str]:
    """State-dict keys of what training changes: parameters that require grad, everything an adapter
    layer contributes besides its base layer (its tensors, also where a method keeps them shared,
    and its ``gate``/``temperature``), the buffers of modules that own trainable parameters, and
    normalisation running statistics (a frozen BatchNorm in train mode still updates them)."""
    keys = set()
    adapters = []
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        owns_trainable = any(p.requires_grad for p in sub.parameters(recurse=False))
        is_norm = isinstance(sub, nn.modules.batchnorm._NormBase)
        keys |= {dot + n for n, p in sub.named_parameters(recurse=False) if p.requires_grad}
        if owns_trainable or is_norm:
            keys |= {dot + n for n, b in sub.named_buffers(recurse=False) if b is not None}
        if isinstance(sub, AdapterLayer):
            adapters.append(_clean(dot))
    keys = {_clean(k) for k in keys}
    state = module.state_dict(keep_vars=True)
    if adapters:
        starts = tuple(adapters)
        keys |= {
            k for k in state if k.startswith(starts) and not any(k.startswith(a + "base_layer.") for a in adapters)
        }
    return keys & set(state)  # shared tensors (GenLoRA groups) appear in the state dict under their layers


class AdapterTask(L.LightningModule):
    """Shared base of the task modules (see the module docstring).

    Args:
        backbone: ``timm:<model>`` or ``hf:<hub id or local folder>``.
        pretrained: load pretrained weights (timm hub / HF hub or local folder).
        checkpoint_path: a local weights file for a timm backbone (implies pretrained).
        backbone_kwargs: extra arguments of ``timm.create_model`` (``img_size``,
            ``drop_path_rate``) or overrides of the transformers config.
        optimizer: builds the optimizer from the trainable parameters.
        lr_scheduler: builds an LR scheduler from the optimizer, stepped every optimizer step.
        head_only: train the classifier head alone (linear probe). Without an adapter callback and
            without this flag every parameter is trained (full fine-tuning).
        compile: ``torch.compile`` the backbone after adapters are in.
        compile_mode: ``torch.compile``'s mode: ``null`` (default), ``reduce-overhead`` (CUDA graphs:
            a whole training step replayed as one graph on a GPU), ``max-autotune``, ...
        activation_checkpointing: recompute each block's activations in the backward pass
            (non-reentrant, so adapters inside frozen blocks still get gradients).
        fsdp_blocks: class names of the blocks FSDP2 shards one by one (``ModelParallelStrategy``);
            by default the backbone's repeated blocks are found by ``transformer_blocks``.
        adapter_lr: learning rate of the adapter parameters, one number or one per method
            (``{genlora: 0.02, lora: 0.003}``: switching ``adapter.method`` on the command line then
            switches the rate with it) and per GenLoRA reading other than the default
            (``genlora_signed: 0.003``; a table without the chosen one is refused); ``null`` means the
            optimizer's own ``lr``, which always
            applies to everything else trained (the head, ``modules_to_save``). Generated-weight
            adapters want a rate several times LoRA's (see benchmarks/investigations.md).
        adapter_weight_decay: weight decay of the adapter parameters; ``null``: the optimizer's.
        adapter_lr_multipliers: per kind of adapter parameter, a factor on ``adapter_lr``:
            GenLoRA's ``latent``, ``center``, ``width``, ``amp`` (and ``signed``: the mixed reading's signed
            rows, which train at its own default factor unless given here); LoRA's ``A``, ``B`` (LoRA+
            style).
        freeze_batchnorm: keep every BatchNorm layer in eval mode while training, so it normalises
            with its pretrained running statistics instead of re-estimating them from each small
            batch of the new domain (measured on EfficientNet-Lite0, see benchmarks/investigations.md).
    """

    #: Name under which checkpoints record the task, so ``export`` rebuilds the right module; a
    #: subclass that sets it is registered in :data:`TASKS` by that alone.
    task: ClassVar[str] = ""
    #: PEFT's ``task_type`` in exported adapter configs (``CAUSAL_LM``, ``SEQ_CLS``, ...); None: the
    #: generic ``PeftModel``, which wraps any model.
    peft_task_type: ClassVar[str | None] = None
    #: Endings of metric names whose best value is the lowest, beyond loss, perplexity, mse, mae,
    #: rmse and error (the run summary's "best" takes the minimum of those).
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    #: The splits whose metrics :meth:`build_metrics` makes.
    metric_splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: What validation inside ``fit`` logs (``tune`` refuses a metric outside it; empty: not declared).
    validation_metrics: ClassVar[tuple[str, ...]] = ()
    #: The metric ``tune`` optimises unless told another.
    tune_metric: ClassVar[str] = "val/loss"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("task")
        if not name:
            return
        path = class_path(cls)
        known = TASKS.get(name)
        if known is not None and class_path(known) != path:
            raise ValueError(f"task {name!r} is already registered by {class_path(known)}; give {path} another name.")
        TASKS[name] = cls
        TASK_PATHS[name] = path

    #: Hyper-parameters that shape the trained weights: a checkpoint that differs in one is refused.
    shaping_hparams: ClassVar[tuple[str, ...]] = ("backbone", "backbone_kwargs", "head_only")

    def __init__(
        self,
        backbone: str,
        pretrained: bool = True,
        checkpoint_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        head_only: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        activation_checkpointing: bool = False,
        fsdp_blocks: list[str] | None = None,
        adapter_lr: float | dict[str, float] | None = None,
        adapter_weight_decay: float | None = None,
        adapter_lr_multipliers: dict[str, float] | None = None,
        freeze_batchnorm: bool = False,
    ) -> None:
        rates = adapter_lr if isinstance(adapter_lr, dict) else {"": adapter_lr}
        for method, rate in rates.items():
            if rate is not None and not (is_number(rate) and rate > 0):
                name = f"adapter_lr.{method}" if method else "adapter_lr"
                raise ValueError(
                    f"{name}={rate!r} is not valid; give a positive number, a rate per method "
                    "({genlora: 0.02, lora: 0.003}), or null for the optimizer's lr."
                )
        if adapter_weight_decay is not None and not (is_number(adapter_weight_decay) and adapter_weight_decay >= 0):
            raise ValueError(f"adapter_weight_decay={adapter_weight_decay!r} is not valid; give a number >= 0 or null.")
        for kind, factor in (adapter_lr_multipliers or {}).items():
            if not (is_number(factor) and factor > 0):
                raise ValueError(f"adapter_lr_multipliers.{kind}={factor!r} is not valid; give a positive number.")
        super().__init__()
        # Records this class's and the subclass's arguments (Lightning walks the __init__ frames).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.backbone_name = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.backbone: nn.Module | None = None
        self._backbone_hooks: dict[str, Callable[[nn.Module], None]] = {}

    # ----------------------------------------------------------------- backbone
    def build_backbone(self) -> nn.Module:
        """The task's backbone, built from the hyper-parameters (the frozen weights included)."""
        raise NotImplementedError

    def build_empty_backbone(self) -> tuple[nn.Module, Callable[[nn.Module], None]] | None:
        """For FSDP2: the backbone with its parameters on the meta device, and the function that fills
        a module's meta parameters from the checkpoint (called block by block as they are sharded);
        None where the task cannot build one (then every rank loads it whole first)."""
        return None

    def new_head(self, backbone: nn.Module) -> list[str]:
        """The modules the task adds to the pretrained model and must train in full (what the
        adapter callback's ``modules_to_save: head`` means): a classifier's head."""
        return head_names(backbone)

    def adapt_backbone(self, name: str, fn: Callable[[nn.Module], None]) -> None:
        """Run ``fn(backbone)`` once the backbone exists (now, if it already does)."""
        self._backbone_hooks[name] = fn
        if self.backbone is not None:
            fn(self.backbone)

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        hp = self.hparams
        mesh = self.device_mesh  # set by ModelParallelStrategy only
        empty = self.build_empty_backbone() if mesh is not None else None
        backbone, fill = empty if empty is not None else (self.build_backbone(), None)
        if hp.head_only:
            heads = head_names(backbone)
            backbone.requires_grad_(False)
            for name in heads:
                backbone.get_submodule(name).requires_grad_(True)
        self.backbone = backbone
        self.train()  # from_pretrained returns eval mode; Lightning switches modes per loop from here
        for fn in self._backbone_hooks.values():
            fn(backbone)
        if hp.activation_checkpointing:
            enable_activation_checkpointing(backbone)
        if mesh is not None:
            shard_fsdp2(backbone, mesh["data_parallel"], hp.fsdp_blocks, fill=fill)
            left = [n for n, p in backbone.named_parameters() if p.is_meta]
            if left:
                raise ValueError(f"{len(left)} parameters were never filled after sharding (e.g. {left[0]}).")
        # Kept out of nn.Module registration: a second name for the backbone would duplicate every
        # key of the state dict.
        self.__dict__["_compiled"] = torch.compile(backbone, mode=hp.get("compile_mode")) if hp.compile else None

    def train(self, mode: bool = True) -> AdapterTask:
        """Lightning switches modes around every loop; with ``freeze_batchnorm`` BatchNorm stays in eval."""
        super().train(mode)
        if mode and self.hparams.get("freeze_batchnorm") and self.backbone is not None:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def model(self) -> nn.Module:
        """What the steps call: the compiled backbone when ``compile`` is on, else the backbone."""
        compiled = self.__dict__.get("_compiled")
        return compiled if compiled is not None else self.backbone

    # ----------------------------------------------------------------- steps
    def build_metrics(self, split: str) -> MetricCollection | None:
        """The metrics of ``split`` (``train``, ``val``, ``test``), updated with ``(outputs, targets)``
        of :meth:`model_step` and logged as ``<split>/<name>``; None: loss only."""
        return None

    def model_step(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """``(loss, outputs, targets)`` of a batch; the metrics get ``outputs`` and ``targets``."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if not self.__dict__.get("_metrics_built"):  # before the strategy moves the module to its device
            for split in self.metric_splits:
                metrics = self.build_metrics(split)
                if metrics is not None:
                    self.add_module(f"{split}_metrics", metrics)
            self.__dict__["_metrics_built"] = True

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        loss, outputs, targets = self.model_step(batch)
        metric = self._modules.get(f"{split}_metrics")
        size = _batch_size(targets)
        if metric is not None:
            metric(outputs, targets) if split == "train" else metric.update(outputs, targets)
            self.log_dict(metric, batch_size=size)
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=split != "train", batch_size=size)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """What ``predict`` returns for a batch; by default the outputs of :meth:`model_step`'s forward."""
        return {"prediction": self(batch)}

    def prediction_rows(self, output: Any, indices: list[int], describe: Callable[[int], dict] | None) -> list[dict]:
        """One JSON-ready row per example of a :meth:`predict_step` output: its index in the prediction
        split, what the data module says about the input (``describe``), and the prediction."""
        values = output["prediction"].float().cpu().tolist()
        return [
            {"index": i, **(describe(i) if describe else {}), "prediction": value}
            for i, value in zip(indices, values, strict=True)
        ]

    def chance_level(self) -> dict[str, float]:
        """What validation metrics a model that learned nothing reaches (``{"val/acc_balanced": 0.2}``):
        the fit's summary warns when the best stays there. None known by default."""
        return {}

    # ----------------------------------------------------------------- export
    def save_merged(self, plain: nn.Module, folder: Path) -> None:
        """Write the merged backbone (no adapters left in it) into the existing ``folder`` for
        ``export``'s ``merged/``: a ``timm:`` or ``hf:`` backbone in its library's own format
        (:func:`~genlora_pl.backbones.save_backbone`), any other its state dict as
        ``model.safetensors`` and its class."""
        try:
            BackboneSpec.parse(self.backbone_name)
        except ValueError:  # a task's own backbone, named its own way
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, folder / "model.safetensors")
            meta = {"class": class_path(type(plain)), "task": self.task, "backbone": self.backbone_name}
            (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
            return
        save_backbone(plain, self.backbone_name, folder)

    # ----------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trained parameters in named groups: ``head`` (everything trained that is not an
        adapter: the head, ``modules_to_save``; all of the model in a full fine-tune) and one
        ``adapter.<kind>`` group per kind of adapter parameter (GenLoRA: latent, center, width, amp)."""
        kinds: dict[str, list[nn.Parameter]] = {}
        taken: set[int] = set()
        for layer in adapter_layers(self.backbone).values():
            for name, param in layer.adapter_parameters().items():
                if param.requires_grad and id(param) not in taken:  # shared tensors (GenLoRA groups) once
                    kinds.setdefault(layer.parameter_kind(name), []).append(param)
                    taken.add(id(param))
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        groups = [{"name": "head", "params": rest}] if rest else []
        groups += [{"name": f"adapter.{kind}", "params": params} for kind, params in sorted(kinds.items())]
        unknown = sorted(set(self.hparams.get("adapter_lr_multipliers") or {}) - set(kinds))
        if unknown and kinds:
            raise ValueError(
                f"adapter_lr_multipliers names {unknown}, which are no kind of this model's adapter parameters; "
                f"the kinds are {sorted(kinds)}."
            )
        return groups

    def adapter_rate(self) -> float | None:
        """This run's ``adapter_lr``: the number, or the entry of the adapters' method (GenLoRA: of its
        reading, ``genlora_signed``, where the plain ``genlora`` entry is the default reading's); a table
        without it is refused (it would silently train at the optimizer's rate, or at another reading's)."""
        rate = self.hparams.get("adapter_lr")
        if not isinstance(rate, dict):
            return rate
        config = getattr(self.backbone, CONFIG_ATTR, None)
        if config is None:
            return None  # no adapters: the rate of adapters does not apply
        keys = config.rate_keys()
        found = next((key for key in keys if key in rate), None)
        if found is None:
            raise ValueError(
                f"adapter_lr gives rates for {', '.join(sorted(rate))} but the adapters are {keys[-1]}; "
                f"add model.adapter_lr.{keys[-1]} (or give one number)."
            )
        return float(rate[found])

    def configure_optimizers(self) -> Any:
        groups = self.parameter_groups()
        if not groups:
            raise ValueError("no parameter requires grad: nothing would be trained; check the adapter targets.")
        try:
            optimizer = self.optimizer_factory(groups)
        except ValueError as err:  # torch's own checks: "Invalid learning rate: -1.0"
            raise ValueError(f"model.optimizer.init_args are not valid: {first_line(err)}.") from None
        hp = self.hparams
        config = getattr(self.backbone, CONFIG_ATTR, None)
        # the method's own factors (GenLoRA mixed: its signed rows), under the ones the user gives
        multipliers = {
            **(config.rate_multipliers() if config is not None else {}),
            **(hp.get("adapter_lr_multipliers") or {}),
        }
        adapter_lr = self.adapter_rate()
        for group in optimizer.param_groups:  # now filled with the optimizer's defaults
            if group["name"].startswith("adapter."):
                lr = adapter_lr if adapter_lr is not None else group["lr"]
                group["lr"] = lr * multipliers.get(group["name"].removeprefix("adapter."), 1.0)
                if hp.get("adapter_weight_decay") is not None:
                    group["weight_decay"] = hp.adapter_weight_decay
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
        checkpoint["task"] = self.task
        checkpoint["task_class"] = class_path(type(self))
        checkpoint["format_version"] = FORMAT_VERSION
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
        saved = checkpoint.get("hyper_parameters", {})
        keys = [k for k in self.shaping_hparams if k in saved]
        out = config_differences({k: saved[k] for k in keys}, {k: self.hparams.get(k) for k in keys})
        theirs = adapter_config_of(checkpoint)
        mine = getattr(self.backbone, CONFIG_ATTR, None)
        if (theirs is None) != (mine is None):
            out.append(f"{'adapters' if theirs else 'no adapters'} there, {'adapters' if mine else 'none'} here")
        elif theirs and mine:
            out += config_differences(theirs, mine, ignore=("modules_to_save",))
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
        migrate_checkpoint(checkpoint, self)  # compat: 0.1 layouts
