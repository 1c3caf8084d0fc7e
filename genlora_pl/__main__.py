"""Entry point: ``python -m genlora_pl <subcommand> ...``.

Top-level help is answered before torch and Lightning are imported. Errors a user can fix
(a bad config value, a missing file, an unknown backbone) end as one line on stderr with exit
code 2; set ``GENLORA_PL_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
import sys

from genlora_pl.errors import is_user_error, one_line

USAGE = """\
usage: python -m genlora_pl {fit,tune,validate,test,predict,export,evaluate,task_file} [options]

Fine-tune timm and Hugging Face transformers models with GenLoRA adapters.

subcommands:
  fit        train (and validate) a model: --config quickstart.yaml
  tune       find a config's rates (or any settings) with Optuna: trials of fit, pruned, resumable
  validate   run one validation epoch (with --ckpt_path: of a trained model)
  test       run one test epoch
  predict    write predictions (predictions.jsonl beside the checkpoint's run)
  export     write the merged backbone, a PEFT LoRA folder and the adapter from a checkpoint
  evaluate   run lm-evaluation-harness tasks on a causal LM's checkpoint, merged or PEFT export
  task_file  write a config's instruction data as an lm-evaluation-harness task file (offline)

`--config NAME.yaml` takes a file path, or the name of a config shipped with the package:
@CONFIGS@

Run `python -m genlora_pl SUBCOMMAND --help` for the options of each, and
`python -m genlora_pl fit --config FILE --print_config` to see a resolved config.
"""


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = argv if explicit else sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        from importlib import resources

        shipped = sorted(
            p.name for p in resources.files("genlora_pl").joinpath("configs").iterdir() if p.name.endswith(".yaml")
        )
        print(USAGE.replace("@CONFIGS@", "  " + ", ".join(shipped)))
        return 0
    try:
        if argv[0] == "tune":
            from genlora_pl.tune.cli import cli as tune_cli

            return tune_cli(argv[1:])
        if argv[0] == "export":
            from genlora_pl.export.cli import cli as export_cli

            export_cli(argv[1:])
        elif argv[0] in ("evaluate", "task_file"):
            from genlora_pl.console import quiet

            quiet()  # before the harness imports peft, and peft torchao
            from genlora_pl.harness import cli as harness_cli

            harness_cli(argv[0], argv[1:])
        else:
            from genlora_pl.cli import run

            run(argv if explicit else None)
    except Exception as err:
        if not is_user_error(err) or os.environ.get("GENLORA_PL_DEBUG"):
            raise
        message = one_line(err)
        if type(err).__name__ == "MisconfigurationException":
            message = f"these trainer settings cannot run here: {message}"
            if "gpu backend" in message:
                message += "; to run on the CPU instead pass --trainer.accelerator cpu --trainer.precision 32"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
