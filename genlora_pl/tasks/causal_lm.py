"""Causal language models: instruction fine-tuning of any decoder-only Hugging Face model.

The loss is next-token cross-entropy over the response tokens only (the data module labels prompt and
padding ``-100``), and only their logits are computed: a hook on the output head hands it the hidden
states of labelled positions alone, so a step's logits take ``(response tokens, vocab)`` memory instead
of ``(batch, tokens, vocab)`` in fp32 (about 10 GB at vocab 152 K, batch 32, 512 tokens). Packed
batches (``position_ids`` restarting per example, no attention mask) go through the same path.

The frozen base loads in ``dtype`` (bf16 on a CUDA GPU by default) or, with ``quantize: nf4``, with
its linear weights in 4-bit NF4 (:mod:`genlora_pl.quantize`); adapters and the GenLoRA generator keep
fp32 parameters either way. Every evaluation (``validate``, ``test``, and the validation inside ``fit``)
reports, per split: ``loss``, ``perplexity`` (``exp`` of the mean token loss), ``token_acc`` (how often
the most likely next token is the reference one) and ``exact_match``: the model answers every prompt
by greedy decoding, in batches, and the data module scores the answers
(``InstructionData.score``: an answer extractor, or reasoning-gym's own checker). ``predict`` returns
prompts and generations, which the prediction writer saves as JSONL.

Generation in ``test`` and ``predict`` runs on merged weights (the adapters folded into the base
layers for the duration, then taken out again), so it costs what plain ``generate`` on the merged
model costs; inside ``fit`` the adapters stay apart, as training needs them. A base below fp32
(bf16, fp16, NF4) is never merged in place: taking the update out again would not restore the
rounded weights exactly, so generation runs with the adapters apart there. Generation stops at the
end-of-turn token of the chat template as well as at end-of-sequence.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from genlora_pl.backbones import (
    BackboneSpec,
    build_causal_lm,
    check_causal,
    check_hf_source,
    hf_path,
    load_tokenizer,
    meta_filler,
    stop_ids,
)
from genlora_pl.checks import is_int
from genlora_pl.injection import adapter_layers, merge_adapters, unmerge_adapters
from genlora_pl.quantize import DTYPES, QUANTIZATIONS, frozen_bytes, quantize_nf4, resolve_dtype
from genlora_pl.tasks.base import AdapterTask


class CausalLMModule(AdapterTask):
    """Fine-tune a decoder-only language model on instructions.

    Args:
        backbone: ``hf:<hub id, save_pretrained folder, .gguf file or folder holding one>``.
        max_new_tokens: the longest answer generated for exact match and ``predict``.
        generate_in_fit: also generate (exact match) in the validation inside ``fit``; off, fit
            reports loss, perplexity and token accuracy only (cheaper on a CPU).
        dtype: the frozen base's dtype, loaded directly in it: ``auto`` (bfloat16 on a CUDA GPU that
            has it, float32 elsewhere), ``float32``, ``bfloat16`` or ``float16``. Adapters stay fp32.
        quantize: ``nf4`` keeps the base's linear weights in 4-bit NF4 (torchao; CPU and GPU); ``null``
            keeps them in ``dtype``. The LM head and embeddings stay in ``dtype``.
        base_model_id: the hub id the base came from, for exports' ``base_model_name_or_path`` when the
            backbone is a local file or folder (a GGUF file's own metadata is read otherwise).
        **kwargs: the shared settings of :class:`~genlora_pl.tasks.base.AdapterTask` (pretrained,
            backbone_kwargs, optimizer, lr_scheduler, adapter_lr, compile, activation_checkpointing,
            fsdp_blocks, ...).
    """

    task: ClassVar[str] = "causal_lm"
    peft_task_type: ClassVar[str | None] = "CAUSAL_LM"
    metric_splits: ClassVar[tuple[str, ...]] = ()  # evaluation sums its own token counts (see _eval_step)
    # exact match only where validation generates (generate_in_fit, the default)
    validation_metrics: ClassVar[tuple[str, ...]] = ("val/loss", "val/perplexity", "val/token_acc", "val/exact_match")
    tune_metric: ClassVar[str] = "val/exact_match"

    def __init__(
        self,
        backbone: str,
        max_new_tokens: int = 32,
        generate_in_fit: bool = True,
        dtype: str = "auto",
        quantize: str | None = None,
        base_model_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not valid; choose auto, {', '.join(DTYPES)}.")
        if quantize is not None and quantize not in QUANTIZATIONS:
            raise ValueError(f"quantize={quantize!r} is not valid; choose {', '.join(QUANTIZATIONS)} or null.")
        spec = BackboneSpec.parse(backbone)
        if spec.library != "hf":
            build_causal_lm(backbone)  # raises the sentence for a non-hf backbone
        check_hf_source(spec.name)
        from transformers import AutoConfig

        check_causal(AutoConfig.from_pretrained(hf_path(spec.name)), backbone)
        if not is_int(max_new_tokens, 1):
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is not valid; give a positive number of tokens.")
        super().__init__(backbone, **kwargs)
        self._tokenizer: Any = None
        self._labelled: torch.Tensor | None = None  # positions whose logits the head computes this step
        self.metrics = nn.ModuleDict(
            {
                split: nn.ModuleDict(
                    {
                        "loss": MeanMetric(),
                        "correct": SumMetric(),
                        "tokens": SumMetric(),
                        "exact_match": MeanMetric(),
                    }
                )
                for split in ("val", "test")
            }
        )

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(BackboneSpec.parse(self.backbone_name).name)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and not hasattr(datamodule, "score"):
            raise ValueError(
                f"data {type(datamodule).__name__} is classification data; the causal-LM task needs instruction "
                "data (genlora_pl.data.InstructionData or genlora_pl.data.ReasoningGymData)."
            )

    def new_head(self, backbone: nn.Module) -> list[str]:
        return []  # the pretrained LM head stays as it is (often tied to the input embeddings)

    @property
    def base_dtype(self) -> torch.dtype:
        trainer = self._trainer
        device = trainer.strategy.root_device.type if trainer is not None else self.device.type
        return resolve_dtype(self.hparams.get("dtype", "float32"), device)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        backbone = build_causal_lm(self.backbone_name, hp.pretrained, hp.backbone_kwargs, dtype=self.base_dtype)
        if hp.get("quantize") == "nf4":
            backbone.requires_grad_(False)
            quantize_nf4(backbone)
        self._hook_head(backbone)
        print(f"frozen base: {frozen_bytes(backbone, everything=True) / 2**20:,.1f} MiB ({self.describe_base()})")
        return backbone

    def build_empty_backbone(self) -> tuple[nn.Module, Any] | None:
        """The base on the meta device, filled shard by shard from its safetensors folder (a pretrained,
        unquantized base; NF4 quantizes whole weights, so it loads in full first)."""
        hp = self.hparams
        if not hp.pretrained or hp.get("quantize"):
            return None
        name = self.backbone_name
        backbone = build_causal_lm(name, hp.pretrained, hp.backbone_kwargs, dtype=self.base_dtype, empty=True)
        self._hook_head(backbone)
        print(f"frozen base: built empty, filled block by block as FSDP2 shards it ({self.describe_base()})")
        return backbone, meta_filler(backbone, name, self.base_dtype)

    def _hook_head(self, backbone: nn.Module) -> None:
        head = backbone.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(self._labelled_only)

    def describe_base(self) -> str:
        hp = self.hparams
        dtype = str(self.base_dtype).removeprefix("torch.")
        return f"{dtype}, linear weights in NF4" if hp.get("quantize") == "nf4" else dtype

    def _labelled_only(self, head: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Forward pre-hook of the output head: while a loss is computed, only the hidden states that
        predict a labelled token reach it (``(tokens, hidden)`` instead of ``(batch, length, hidden)``).
        Inside the model's own forward, so FSDP, compile and a model's logit scaling all still apply."""
        if self._labelled is None:
            return None
        hidden = args[0]
        return (hidden[:, :-1][self._labelled], *args[1:])

    # ----------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The model's logits; a padding-free (packed) batch has ``position_ids`` and no attention mask."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        return self.model(**inputs, use_cache=False).logits

    def losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token losses of the response tokens, whether each top prediction was right, and how many
        tokens were labelled. Only the labelled positions' logits are computed (and cast to fp32)."""
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        self._labelled = mask
        try:
            logits = self(batch).float()  # (labelled tokens, vocab)
        finally:
            self._labelled = None
        target = labels[mask]
        token_loss = F.cross_entropy(logits, target, reduction="none")
        correct = logits.argmax(-1) == target
        return token_loss, correct, mask.sum()

    def model_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, None, torch.Tensor]:
        token_loss, _, _ = self.losses(batch)
        return token_loss.mean(), None, batch["labels"]

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        token_loss, correct, count = self.losses(batch)
        metrics = self.metrics[split]
        metrics["loss"].update(token_loss.detach())
        metrics["correct"].update(correct.sum())
        metrics["tokens"].update(count)
        if split == "test" or self.hparams.generate_in_fit or self.trainer.state.fn != "fit":
            generations = self.generate(batch)
            datamodule = self.trainer.datamodule
            scores = datamodule.score(split, batch["index"].tolist(), generations)
            metrics["exact_match"].update(torch.tensor(scores, device=self.device))

    def _eval_epoch_end(self, split: str) -> None:
        metrics = self.metrics[split]
        loss = metrics["loss"].compute()
        values = {
            f"{split}/loss": loss,
            f"{split}/perplexity": torch.exp(loss),
            f"{split}/token_acc": metrics["correct"].compute() / metrics["tokens"].compute().clamp_min(1),
        }
        if metrics["exact_match"].update_count:
            values[f"{split}/exact_match"] = metrics["exact_match"].compute()
        self.log_dict(values, prog_bar=True, sync_dist=False)
        for metric in metrics.values():
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        generations = self.generate(batch)
        rows = [
            {"index": int(i), "prompt": p, "generation": g, "reference": a}
            for i, p, g, a in zip(batch["index"].tolist(), batch["prompts"], generations, batch["answers"], strict=True)
        ]
        return {"rows": rows}

    def prediction_rows(self, output: dict[str, Any], indices: list[int], describe: Any) -> list[dict[str, Any]]:
        return output["rows"]

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[str]:
        """Greedy answers to the batch's prompts (left-padded), decoded without special tokens."""
        tokenizer = self.tokenizer
        output = self.backbone.generate(
            input_ids=batch["prompt_ids"],
            attention_mask=batch["prompt_mask"],
            max_new_tokens=self.hparams.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(tokenizer),
        )
        new = output[:, batch["prompt_ids"].shape[1] :]
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    def _merge_for_generation(self) -> None:
        layers = adapter_layers(self.backbone)
        # only an fp32 base is restored exactly by unmerge (see the module docstring)
        if (
            layers
            and all(type(layer.base_layer.weight.data) is torch.Tensor for layer in layers.values())
            and all(layer.base_layer.weight.dtype == torch.float32 for layer in layers.values())
        ):
            merge_adapters(self.backbone)

    def _unmerge_after_generation(self) -> None:
        if any(layer.merged for layer in adapter_layers(self.backbone).values()):
            unmerge_adapters(self.backbone)

    def on_test_start(self) -> None:
        self._merge_for_generation()

    def on_test_end(self) -> None:
        self._unmerge_after_generation()

    def on_predict_start(self) -> None:
        self._merge_for_generation()

    def on_predict_end(self) -> None:
        self._unmerge_after_generation()
