"""Files the framework tests train on, written in the real on-disk formats."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

WORDS = ["goal", "match", "team", "score", "win", "market", "shares", "profit", "bank", "price", "the", "a", "today"]


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT with its tokenizer, saved with save_pretrained: an offline 'hf:' backbone."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def write_text_csv(path: Path, n: int = 96, seed: int = 0) -> Path:
    """A learnable two-topic corpus: sports words vs finance words."""
    rng = np.random.default_rng(seed)
    sports, finance = WORDS[:5], WORDS[5:10]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = "sports" if i % 2 == 0 else "finance"
            words = rng.choice(sports if label == "sports" else finance, size=6).tolist() + ["today"]
            writer.writerow([" ".join(words), label])
    return path


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20) -> Path:
    """A CIFAR-10 folder in the official python format (pickled batches), with random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": (np.arange(n) % 10).tolist()}

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_tiny_vit_weights(path: Path) -> Path:
    """A timm checkpoint file for the tiny ViT (the 'pretrained' weights of checkpoint_path)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    save_file(model.state_dict(), str(path))
    return path


class RankDump(L.Callback):
    """Saves every rank's adapters at the end of fit (``class_path: helpers.RankDump``)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        from genlora_pl.distributed import full_parameters
        from genlora_pl.state import adapter_state_dict

        with full_parameters(trainer.strategy.model, pl_module.backbone):
            state = {k: v.detach().clone().contiguous() for k, v in adapter_state_dict(pl_module.backbone).items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(self.folder / f"rank{trainer.global_rank}.safetensors"))


class BuildMemory(L.Callback):
    """Records how far this rank's resident memory rose while the model was built and wrapped:
    the high-water mark at ``on_fit_start`` less the resident memory at ``setup`` (which runs before
    ``configure_model``), into ``build_memory<rank>.json`` (``class_path: helpers.BuildMemory``).
    The high-water mark is ``/proc``'s ``VmHWM``, which starts afresh at ``exec``: ``getrusage``'s
    ``ru_maxrss`` keeps the peak of the process it was forked from (a pytest that held a model)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.before = 0

    @staticmethod
    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.before = self.status("VmRSS")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        peak = self.status("VmHWM")
        path = self.folder / f"build_memory{trainer.global_rank}.json"
        path.write_text(json.dumps({"before": self.before, "peak": peak, "growth": peak - self.before}))


class Sleep(L.Callback):
    """Pauses after every training batch (``class_path: helpers.Sleep``) and marks the pause with a
    file ``sleeping<rank>`` in ``marker_dir``, so a test can signal a CPU DDP job while every rank is
    outside a blocking gloo collective, where Python runs the handler at once."""

    def __init__(self, seconds: float, marker_dir: str) -> None:
        self.seconds = seconds
        self.marker_dir = Path(marker_dir)

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        import time

        marker = self.marker_dir / f"sleeping{trainer.global_rank}"
        marker.touch()
        time.sleep(self.seconds)
        marker.unlink(missing_ok=True)


ROOT = Path(__file__).resolve().parents[1]


def small_trainer(tmp_path: Path, callbacks: list, **kw) -> L.Trainer:
    """A CPU Trainer for a few steps that writes nothing but what a test asks for."""
    defaults = dict(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    return L.Trainer(callbacks=callbacks, **{**defaults, **kw})


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m genlora_pl ARGS`` in a child process (needed where Lightning relaunches the command
    for more ranks), with this folder importable for ``class_path: helpers.*``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(
        [sys.executable, "-m", "genlora_pl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def fit_debug(folder: Path, overlay: dict, *extra: str) -> Path:
    """``fit`` of configs/debug.yaml plus an overlay config written into ``folder``; must succeed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    debug = str(ROOT / "configs" / "debug.yaml")
    out = run_cli("fit", "--config", debug, "--config", str(folder / "overlay.yaml"), *extra, cwd=folder)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return folder


class PoisonAt(L.Callback):
    """Sets one trained parameter to NaN before training batch ``step`` (``class_path:
    helpers.PoisonAt``): a deterministic stand-in for a run that diverges there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m genlora_pl ARGS`` started in the background (for tests that signal it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.Popen(
        [sys.executable, "-m", "genlora_pl", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


LM_WORDS = ["add", "sub", "what", "is", "the", "sum", "of", "and", "answer", "please", "user", "assistant", ":"]


def write_tiny_llama(folder: Path, chat_template: bool = True, turn_end: bool = False) -> Path:
    """A 2-layer Llama with a word-level tokenizer (digits and a few words), saved with
    save_pretrained: an offline ``hf:`` causal LM. The tokenizer has no pad token on purpose (many
    causal LMs do not), and a chat template when asked; with ``turn_end`` the template ends an
    assistant turn with a special ``<end>`` token, not with ``<eos>`` (as Llama 3's ``<|eot_id|>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["<unk>", "<bos>", "<eos>", *LM_WORDS, *[str(d) for d in range(20)], *(["<end>"] if turn_end else [])]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    if turn_end:
        tokenizer.add_tokens(["<end>"], special_tokens=True)
    if chat_template:
        end = "<end> " if turn_end else "{{ eos_token }}"
        tokenizer.chat_template = (
            "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% if m['role'] == 'assistant' %}"
            + end
            + "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
        )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_sums(path: Path, n: int = 64, seed: int = 0) -> Path:
    """JSONL instructions: ``what is the sum of a and b`` -> ``a+b`` (numbers below 20)."""
    import json

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = (int(v) for v in rng.integers(0, 10, size=2))
            f.write(json.dumps({"prompt": f"what is the sum of {a} and {b}", "response": str(a + b)}) + "\n")
    return path
