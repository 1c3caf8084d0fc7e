"""Tasks: LightningModules that share the lazy backbone, the adapter hook, the steps and trained-only
checkpoints (:class:`AdapterTask`) and differ in backbone, loss, metrics and predictions. A task is
one file: a subclass of :class:`AdapterTask` that sets ``task = "<name>"`` is registered by that."""

from __future__ import annotations

from genlora_pl.tasks.base import TASKS, AdapterTask, class_path, task_class, trained_state_keys
from genlora_pl.tasks.causal_lm import CausalLMModule
from genlora_pl.tasks.classification import ClassificationModule

__all__ = [
    "TASKS",
    "AdapterTask",
    "CausalLMModule",
    "ClassificationModule",
    "class_path",
    "task_class",
    "trained_state_keys",
]
