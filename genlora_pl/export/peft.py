"""Export a GenLoRA (or LoRA) adapter as a standard PEFT LoRA folder.

GenLoRA's generated ``A`` and ``B`` are ordinary LoRA factors, so the export is lossless: the folder
holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<path>.lora_A.weight`` (``r x n``) and ``.lora_B.weight`` (``m x r``), every scale
(``s``, ``gate``; the temperature is already inside the generated factors) folded into ``B`` and
``lora_alpha == r`` so PEFT's own scale is 1. Trained heads go in as ``modules_to_save``. The
GenLoRA settings that produced the factors are kept beside them in ``genlora_config.json``, which
PEFT ignores. Train compactly with GenLoRA, serve with any LoRA-serving stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlora_pl.files import atomic_write_text, save_safetensors, write_folder
from genlora_pl.injection import adapter_layers, model_config, modules_to_save
from genlora_pl.state import CONFIG_NAME, WEIGHTS_NAME, saved_modules_state

PEFT_CONFIG_NAME = "adapter_config.json"
PREFIX = "base_model.model."


def _base_model_name(model: nn.Module) -> str | None:
    hf = getattr(getattr(model, "config", None), "_name_or_path", None)
    if hf:
        return hf
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        return cfg.get("hf_hub_id") or cfg.get("architecture")
    return None


@torch.no_grad()
def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The PEFT-format tensors of the model's adapters (fp32, scale folded into ``lora_B``)."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        a, b = layer.factors()
        a, b = a.detach().float(), b.detach().float() * layer.scale.float()
        if layer.kind == "conv2d":
            base = layer.base_layer
            if any(d != 1 for d in base.dilation):
                raise ValueError(
                    f"cannot export {name!r} to PEFT: it is a dilated convolution (dilation={base.dilation}), "
                    "which PEFT's LoRA Conv2d does not reproduce."
                )
            a = a.reshape(layer.r, *base.weight.shape[1:])  # (r, c_in, kh, kw)
            b = b[:, :, None, None]  # (m, r, 1, 1)
        state[f"{PREFIX}{name}.lora_A.weight"] = a
        state[f"{PREFIX}{name}.lora_B.weight"] = b
        state.update({f"{PREFIX}{name}.{key}": value for key, value in layer.peft_state().items()})
    state.update({f"{PREFIX}{key}": value.detach() for key, value in saved_modules_state(model).items()})
    return state


def guess_task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` for a bare model: ``CAUSAL_LM`` for a transformers ``*ForCausalLM``, else
    None (the generic ``PeftModel``). A task module knows better: its ``peft_task_type``."""
    return "CAUSAL_LM" if type(model).__name__.endswith("ForCausalLM") else None


def peft_config(model: nn.Module, base_model_name: str | None = None, task_type: str | None = "auto") -> dict[str, Any]:
    """A PEFT ``LoraConfig`` as JSON: ``lora_alpha == r`` and per-layer ranks via ``rank_pattern``.

    ``base_model_name`` is what ``base_model_name_or_path`` says: give the hub id (or a portable
    name) the model came from; by default it is read off the model, which for a local copy is a
    path on this machine. ``task_type`` is PEFT's (``auto``: :func:`guess_task_type`)."""
    config = model_config(model)
    layers = adapter_layers(model)
    ranks = {name: layer.r for name, layer in layers.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    rank_pattern = {n: k for n, k in ranks.items() if k != r}
    patterns = {"rank_pattern": rank_pattern, "alpha_pattern": dict(rank_pattern)} if rank_pattern else {}
    extra = {k: v for layer in layers.values() for k, v in type(layer).peft_config_extra.items()}
    return {
        **extra,
        "peft_type": "LORA",
        "task_type": guess_task_type(model) if task_type == "auto" else task_type,
        "base_model_name_or_path": base_model_name or _base_model_name(model),
        "r": r,
        "lora_alpha": r,
        **patterns,  # alpha == r per layer keeps PEFT's scale at 1
        "target_modules": target_names(model, list(layers)),
        "modules_to_save": list(modules_to_save(model, config)) or None,
        "lora_dropout": config.dropout,
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,  # PEFT switches it on by itself for transformers Conv1D layers
        "init_lora_weights": True,
        "inference_mode": True,
    }


def target_names(model: nn.Module, adapted: list[str]) -> list[str]:
    """The adapted modules as PEFT (and vLLM) list them: short names (``q_proj``, ``v_proj``) when
    those select exactly the adapted modules, else the full names."""
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    chosen = {n for n, _ in model.named_modules() if n and n.rsplit(".", 1)[-1] in suffixes}
    return suffixes if chosen == set(adapted) else adapted


def export_peft(
    model: nn.Module, directory: str | os.PathLike, base_model_name: str | None = None, task_type: str | None = "auto"
) -> Path:
    """Write the model's adapters as a PEFT LoRA folder that ``PeftModel.from_pretrained`` loads
    (built whole beside ``directory`` and renamed into place); ``base_model_name`` and ``task_type``
    as in :func:`peft_config`."""
    config = model_config(model)
    state, peft_meta = peft_state_dict(model), peft_config(model, base_model_name, task_type)
    meta = {"exported_as": "peft-lora", "config": config.to_dict(), "layers": list(adapter_layers(model))}

    def fill(folder: Path) -> None:
        save_safetensors(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_text(folder / PEFT_CONFIG_NAME, json.dumps(peft_meta, indent=2) + "\n")
        atomic_write_text(folder / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")

    return write_folder(directory, fill, owned={WEIGHTS_NAME, PEFT_CONFIG_NAME, CONFIG_NAME})


# The ranks vLLM's ``--max-lora-rank`` accepts (its LoRAConfig); an adapter of rank r needs one >= r.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_advice(config: dict[str, Any], folder: str | os.PathLike, name: str = "genlora") -> tuple[str, list[str]]:
    """How to serve a PEFT folder with vLLM, and why vLLM would refuse it where it would: a rank
    above the largest ``--max-lora-rank``, ``modules_to_save`` (vLLM loads LoRA weights only), DoRA."""
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    rank = max(ranks)
    problems = []
    fitting = [n for n in VLLM_MAX_LORA_RANKS if n >= rank]
    if not fitting:
        problems.append(f"rank {rank} is above {VLLM_MAX_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts")
    if config.get("modules_to_save"):
        problems.append(
            f"it trains modules_to_save {config['modules_to_save']}, which vLLM does not load (serve the merged model)"
        )
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter, which vLLM does not serve (serve the merged model)")
    command = (
        f"vllm serve {config.get('base_model_name_or_path')} --enable-lora --max-lora-rank "
        f"{fitting[0] if fitting else rank} --lora-modules {name}={Path(folder).resolve()}"
    )
    return command, problems
