"""Causal language models: instruction fine-tuning of any decoder-only Hugging Face model.

The loss is next-token cross-entropy over the response tokens only (the data module labels prompt and
padding ``-100``). Every evaluation (``validate``, ``test``, and the validation inside ``fit``)
reports, per split: ``loss``, ``perplexity`` (``exp`` of the mean token loss), ``token_acc`` (how often
the most likely next token is the reference one) and ``exact_match``: the model answers every prompt
by greedy decoding, in batches, and the data module scores the answers
(``InstructionData.score``: an answer extractor, or reasoning-gym's own checker). ``predict`` returns
prompts and generations, which the prediction writer saves as JSONL.

Generation in ``test`` and ``predict`` runs on merged weights (the adapters folded into the base
layers for the duration, then taken out again), so it costs what plain ``generate`` on the merged
model costs; inside ``fit`` the adapters stay apart, as training needs them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from genlora_pl.backbones import BackboneSpec, build_causal_lm, check_causal, check_hf_source, hf_path, load_tokenizer
from genlora_pl.injection import adapter_layers, merge_adapters, unmerge_adapters
from genlora_pl.tasks.base import AdapterTask


class CausalLMModule(AdapterTask):
    """Fine-tune a decoder-only language model on instructions.

    Args:
        backbone: ``hf:<hub id, save_pretrained folder, .gguf file or folder holding one>``.
        max_new_tokens: the longest answer generated for exact match and ``predict``.
        generate_in_fit: also generate (exact match) in the validation inside ``fit``; off, fit
            reports loss, perplexity and token accuracy only (cheaper on a CPU).
        **kwargs: the shared settings of :class:`~genlora_pl.tasks.base.AdapterTask` (pretrained,
            backbone_kwargs, optimizer, lr_scheduler, adapter_lr, compile, activation_checkpointing,
            fsdp_blocks, ...).
    """

    task: ClassVar[str] = "causal_lm"

    def __init__(self, backbone: str, max_new_tokens: int = 32, generate_in_fit: bool = True, **kwargs: Any) -> None:
        spec = BackboneSpec.parse(backbone)
        if spec.library != "hf":
            build_causal_lm(backbone)  # raises the sentence for a non-hf backbone
        check_hf_source(spec.name)
        from transformers import AutoConfig

        check_causal(AutoConfig.from_pretrained(hf_path(spec.name)), backbone)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is not valid; give a positive number of tokens.")
        super().__init__(backbone, **kwargs)
        self._tokenizer: Any = None
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
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and not hasattr(datamodule, "score"):
            raise ValueError(
                f"data {type(datamodule).__name__} is classification data; the causal-LM task needs instruction "
                "data (genlora_pl.data.InstructionData or genlora_pl.data.ReasoningGymData)."
            )

    def new_head(self, backbone: nn.Module) -> list[str]:
        return []  # the pretrained LM head stays as it is (often tied to the input embeddings)

    def build_backbone(self) -> nn.Module:
        hp = self.hparams
        return build_causal_lm(self.backbone_name, hp.pretrained, hp.backbone_kwargs)

    # ----------------------------------------------------------------- steps
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token losses of the response tokens, whether the top prediction was right, and the mask."""
        logits = self(batch)[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
        correct = (logits.argmax(-1) == labels) & mask
        return token_loss[mask], correct, mask

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        token_loss, _, _ = self.losses(batch)
        loss = token_loss.mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        token_loss, correct, mask = self.losses(batch)
        metrics = self.metrics[split]
        metrics["loss"].update(token_loss.detach())
        metrics["correct"].update(correct.sum())
        metrics["tokens"].update(mask.sum())
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
            eos_token_id=tokenizer.eos_token_id,
        )
        new = output[:, batch["prompt_ids"].shape[1] :]
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    def _merge_for_generation(self) -> None:
        if adapter_layers(self.backbone):
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
