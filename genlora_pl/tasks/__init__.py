"""Tasks: LightningModules that share the lazy backbone, the adapter hook and trained-only
checkpoints (:class:`AdapterTask`) and differ in loss, metrics and data."""

from __future__ import annotations

from genlora_pl.tasks.base import AdapterTask, trained_state_keys
from genlora_pl.tasks.causal_lm import CausalLMModule
from genlora_pl.tasks.classification import ClassificationModule

#: The tasks by the name their checkpoints record (``checkpoint["task"]``); checkpoints written
#: before the name was recorded are classification ones.
TASKS: dict[str, type[AdapterTask]] = {cls.task: cls for cls in (ClassificationModule, CausalLMModule)}


def task_class(name: str | None) -> type[AdapterTask]:
    """The task module a checkpoint was written by, or a ValueError naming the known tasks."""
    try:
        return TASKS[name or ClassificationModule.task]
    except KeyError:
        raise ValueError(f"task={name!r} is unknown; the known tasks are {', '.join(sorted(TASKS))}.") from None


__all__ = ["TASKS", "AdapterTask", "CausalLMModule", "ClassificationModule", "task_class", "trained_state_keys"]
