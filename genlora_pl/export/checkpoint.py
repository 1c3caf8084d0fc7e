"""``python -m genlora_pl export``: from a training checkpoint to files the ecosystem reads.

Writes into ``output_dir``:

- ``merged/``: the backbone with every adapter merged, in its native format (the task's
  ``save_merged``): a timm model as
  ``model.safetensors`` + ``config.json`` (``timm.create_model(arch, pretrained_cfg_overlay=
  {"file": ".../model.safetensors"}, num_classes=N)`` loads it; the class names are in
  ``config.json``'s ``pretrained_cfg.label_names``), a transformers model through ``save_pretrained``
  with ``id2label`` and its tokenizer or image processor; any other module as ``model.safetensors``;
- ``peft/``: the adapters as a standard PEFT LoRA folder whose ``base_model_name_or_path`` is the
  backbone's hub id (or the name the config gave), not a path on this machine;
- ``adapter/``: the genlora_pl adapter folder (``load_adapter``).

Everything is written into a temporary folder beside ``output_dir`` and moved into place at the
end (``files.write_folder``), so an existing export is never left half-overwritten.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch

from genlora_pl.adapters import config_from_dict
from genlora_pl.backbones import BackboneSpec, hub_id
from genlora_pl.checkpoints import adapter_config_of, read_checkpoint
from genlora_pl.export.formats import parse_formats
from genlora_pl.export.peft import PEFT_CONFIG_NAME, export_peft, vllm_advice
from genlora_pl.files import recover_folder, write_folder
from genlora_pl.injection import inject_adapters, merge_and_unload
from genlora_pl.quantize import dequantize, resolve_dtype
from genlora_pl.state import save_adapter
from genlora_pl.tasks import AdapterTask, task_class


def restore_module(checkpoint: dict[str, Any]) -> AdapterTask:
    """Rebuild the task module of a checkpoint with its adapters and trained weights, in eval mode."""
    cls = task_class(checkpoint.get("task"), checkpoint.get("task_class"))
    hparams = checkpoint.get("hyper_parameters", {})
    accepted = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(AdapterTask.__init__).parameters)
    module = cls(**{k: v for k, v in hparams.items() if k in accepted and k != "compile"})
    config = adapter_config_of(checkpoint)
    if config is not None:
        adapter = config_from_dict(config)
        module.adapt_backbone("adapters", lambda backbone: inject_adapters(backbone, adapter))
    module.on_load_checkpoint(checkpoint)  # builds the backbone and checks every key and shape
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)
    return module.eval()


def portable_name(backbone_name: str, base_model_id: str | None = None) -> str:
    """What ``base_model_name_or_path`` should say, never a path into a cache or an environment:
    ``base_model_id`` when the config gives one, the hub id (also of a model read from a packaged
    copy, or the one a GGUF file's metadata names), else the ``save_pretrained`` folder as the config
    named it."""
    if base_model_id:
        return base_model_id
    try:
        spec = BackboneSpec.parse(backbone_name)
    except ValueError:  # a task's own backbone, named its own way
        return backbone_name
    if spec.library == "timm":
        return spec.name
    local = Path(spec.name).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return spec.name
    known = hub_id(spec.name)
    if known is None:
        print(
            f"warning: no hub id is known for backbone {backbone_name!r}; the PEFT folder names it as given. "
            "Set model.init_args.base_model_id to the id it came from.",
            file=sys.stderr,
        )
    return known or spec.name


def _save_merged(module: AdapterTask, folder: Path) -> None:
    backbone, hparams = module.backbone, module.hparams
    if hparams.get("quantize"):  # an NF4 base merges into its dtype: a 4-bit weight would round the update away
        dtype = resolve_dtype(hparams.get("dtype", "auto"), "cuda" if torch.cuda.is_available() else "cpu")
        dequantize(backbone, dtype)
    plain = merge_and_unload(backbone)
    folder.mkdir(parents=True)
    module.save_merged(plain, folder)


def export_checkpoint(
    ckpt_path: str, output_dir: str, formats: str | list[str] | None = None, overwrite: bool = False
) -> dict[str, str]:
    """Export a fit checkpoint.

    Args:
        ckpt_path: a ``.ckpt`` written by ``fit``.
        output_dir: folder to create; ``merged/``, ``peft/`` and ``adapter/`` go inside.
        formats: any of ``merged``, ``peft``, ``adapter`` (default: all three), as a list or a
            comma-separated string.
        overwrite: replace an existing, non-empty ``output_dir``.

    Returns:
        The written folders by format.
    """
    formats = parse_formats(formats)
    out = Path(output_dir)
    recover_folder(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir!r} exists and is not empty; pass --overwrite true to replace it."
        )
    checkpoint = read_checkpoint(ckpt_path)
    module = restore_module(checkpoint)
    has_adapters = adapter_config_of(checkpoint) is not None
    if not has_adapters and ("peft" in formats or "adapter" in formats):
        raise ValueError(f"{ckpt_path} was trained without adapters; only formats=['merged'] applies.")

    def fill(folder: Path) -> None:
        if "adapter" in formats:
            save_adapter(module.backbone, folder / "adapter")
        if "peft" in formats:
            name = portable_name(module.backbone_name, module.hparams.get("base_model_id"))
            export_peft(module.backbone, folder / "peft", base_model_name=name, task_type=module.peft_task_type)
        if "merged" in formats:  # last: merging removes the adapter modules
            _save_merged(module, folder / "merged")

    write_folder(out, fill)
    written = {f: str(out / f) for f in formats}
    print(json.dumps(written, indent=2))
    peft_folder = out / "peft"
    if "peft" in formats and module.peft_task_type == "CAUSAL_LM":
        command, problems = vllm_advice(json.loads((peft_folder / PEFT_CONFIG_NAME).read_text()), peft_folder)
        print(f"serve it with vLLM:\n  {command}")
        for problem in problems:
            print(f"warning: vLLM would refuse this adapter: {problem}.", file=sys.stderr)
    return written
