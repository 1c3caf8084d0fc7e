"""``python -m genlora_pl tune``: find the rates (or any settings) for a config, with Optuna.

``tune`` takes everything ``fit`` takes (``--config``, any ``--key value``) plus the options below.
Each trial is a real ``fit`` of that config with the trial's values, through the same LightningCLI
path, in a folder of its own; trials that fall behind are pruned on the validation metric as it is
logged. The study lives in a storage (module :mod:`genlora_pl.tune.storage`): rerun the command to
resume it, or start the same command on many machines to share it.
"""

from __future__ import annotations

import argparse

EXAMPLE = "python -m genlora_pl tune --config configs/quickstart.yaml --trials 8"


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m genlora_pl tune",
        description="Tune a config's settings with Optuna: each trial is a real `fit` of the config with the "
        "trial's values; unpromising trials are pruned on the validation metric. Every other option "
        "(--config, --trainer..., --model..., --data..., --adapter...) is fit's and goes to every trial.",
        epilog=f"example:\n  {EXAMPLE}\n  python -m genlora_pl tune --config configs/llm_quickstart.yaml --trials 6 "
        "--steps 100 --space 'model.adapter_lr.genlora=loguniform(3e-3, 3e-2)' 'adapter.r=choice(16, 32, 64)'\n\n"
        "It writes into --output_dir: study.db (the study), trial_<n>/ (each trial's trial.yaml, fit.log, logs "
        "and checkpoints), trials.csv, best.yaml (python -m genlora_pl fit --config <output_dir>/best.yaml), "
        "history.png and params.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=8,
                        help="trials to finish (completed or pruned; failed ones are retried), over all workers "
                        "(default: 8)")  # fmt: skip
    parser.add_argument("--space", nargs="+", action="extend", default=[], metavar="KEY=DIST",
                        help="a setting and its values: loguniform(low, high), uniform(low, high), int(low, high), "
                        "logint(low, high), choice(a, b, ...); or a YAML file of them. Default: the chosen "
                        "method's adapter rate over the range our own sweeps found for it")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per trial (default: the config's own budget)")  # fmt: skip
    parser.add_argument("--reports", type=int, default=4,
                        help="validations per trial with --steps, the last at the end (default: 4)")  # fmt: skip
    parser.add_argument("--metric", default=None,
                        help="the validation metric to optimise (default: the task's: val/acc for a classifier, "
                        "val/exact_match for a causal LM)")  # fmt: skip
    parser.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                        help="default: minimize a loss, perplexity or error, maximize anything else")  # fmt: skip
    parser.add_argument("--output_dir", default=None,
                        help="where the study's files go (default: <the config's default_root_dir>/tune)")  # fmt: skip
    parser.add_argument("--storage", default=None,
                        help="an Optuna storage URL (default: sqlite:///<output_dir>/study.db), or journal:FILE "
                        "(or FILE.journal) for many workers on a shared file system")  # fmt: skip
    parser.add_argument("--study_name", default=None, help="default: the config file's name")
    parser.add_argument("--sampler", choices=("tpe", "random", "qmc"), default="tpe",
                        help="Optuna's sampler (default: tpe)")  # fmt: skip
    parser.add_argument("--pruner", choices=("median", "none"), default="median",
                        help="median: stop a trial below the median of earlier trials at the same step, after 2 "
                        "finished trials (default)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: 0)")
    return parser


def split_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``tune``'s own options, and the rest for ``fit``."""
    if any(a in ("-h", "--help") for a in argv):
        arguments().print_help()
        raise SystemExit(0)
    options, rest = arguments().parse_known_args(argv)
    for name, least in (("trials", 1), ("reports", 1)):
        if getattr(options, name) < least:
            raise ValueError(f"--{name} {getattr(options, name)} is not valid; give a positive number.")
    if options.steps is not None and options.steps < 1:
        raise ValueError(f"--steps {options.steps} is not valid; give a positive number of steps.")
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        raise ValueError(f"tune needs a config: give --config FILE (for example: {EXAMPLE}).")
    return options, rest


def cli(argv: list[str]) -> int:
    """``tune``'s options are checked (and ``--help`` answered) before Lightning and torch load."""
    options, fit_args = split_arguments(argv)
    from genlora_pl.tune.study import tune

    return tune(options, fit_args)
