"""Exports: adapters as standard PEFT LoRA folders (:func:`export_peft`) and whole fit checkpoints
to merged, PEFT and adapter folders (:func:`export_checkpoint`, the ``export`` subcommand)."""

from __future__ import annotations

from genlora_pl.export.checkpoint import export_checkpoint, restore_module
from genlora_pl.export.peft import export_peft, peft_config, peft_state_dict

__all__ = ["export_checkpoint", "export_peft", "peft_config", "peft_state_dict", "restore_module"]
