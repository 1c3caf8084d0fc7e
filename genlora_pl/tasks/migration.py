"""Reading checkpoints written by genlora_pl 0.1 into today's layout, so ``fit --ckpt_path`` resumes
them exactly.

Two things changed in 0.2. The optimizer holds named parameter groups (``head``, ``adapter.<kind>``)
instead of one group of every trained parameter; and GenLoRA keeps the generator tensors of
same-shaped layers stacked in shape groups, where 0.1 had 8 tensors per layer. The model's weights
need nothing (state dicts show every layer's tensors under its own name, as before), but the
optimizer state is stored by position: each moment of a 0.1 parameter is moved to the group, and
the slice of the stacked tensor, that holds that parameter now. Checkpoints record
``format_version`` from 0.2 on; one without it is a 0.1 checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genlora_pl.adapters.genlora import GENERATOR, GenLoRAGroup, GenLoRALayer

FORMAT_VERSION = 2


def legacy_parameter_order(module: nn.Module) -> list[tuple[nn.Parameter, int | None]]:
    """The trained parameters in the order 0.1 handed them to the optimizer (``module.parameters()``
    with grad), each as ``(today's parameter, slice of it or None)``."""
    order: list[tuple[nn.Parameter, int | None]] = []
    seen: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, GenLoRAGroup):
            continue  # its tensors are listed where 0.1 had them: in each layer
        if isinstance(sub, GenLoRALayer) and sub.group is not None:
            index = sub.__dict__["_index"]
            order += [
                (sub.group._parameters[name], index) for name in GENERATOR if sub.group._parameters[name].requires_grad
            ]
        for param in sub._parameters.values():
            if param is not None and param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                order.append((param, None))
    return order


def migrate_optimizer_state(checkpoint: dict[str, Any], module: Any) -> None:
    """Rewrite a 0.1 checkpoint's optimizer and LR-scheduler states, in place, for ``module``'s
    parameter groups (see the module docstring); a state that does not fit is left alone, and
    Lightning's own check then names the difference."""
    states = checkpoint.get("optimizer_states") or []
    if len(states) != 1 or len(states[0].get("param_groups", [])) != 1:
        return
    old = states[0]
    old_group = old["param_groups"][0]
    order = legacy_parameter_order(module)
    if len(order) != len(old_group["params"]):
        return
    moments: dict[int, dict[int | None, dict[str, Any]]] = {}
    for position, (param, index) in zip(old_group["params"], order, strict=True):
        if position in old["state"]:
            moments.setdefault(id(param), {})[index] = old["state"][position]
    groups = module.parameter_groups()
    new_state: dict[int, dict[str, Any]] = {}
    new_groups = []
    position = 0
    for group in groups:
        positions = []
        for param in group["params"]:
            parts = moments.get(id(param))
            if parts:
                if None in parts:
                    new_state[position] = parts[None]
                else:  # a stack: one slice per layer of its shape group
                    first = parts[min(parts)]
                    new_state[position] = {
                        key: torch.stack([parts[i][key] for i in sorted(parts)])
                        if torch.is_tensor(value) and value.ndim
                        else value
                        for key, value in first.items()
                    }
            positions.append(position)
            position += 1
        new_groups.append(
            {**{k: v for k, v in old_group.items() if k != "params"}, "params": positions, "name": group["name"]}
        )
    checkpoint["optimizer_states"] = [{"state": new_state, "param_groups": new_groups}]
    for scheduler in checkpoint.get("lr_schedulers") or []:
        for key, value in list(scheduler.items()):
            if isinstance(value, list) and len(value) == 1:  # one entry per parameter group
                scheduler[key] = value * len(new_groups)
