"""``python -m genlora_pl {fit,validate,test,predict}``: LightningCLI over the task modules, the data
modules and four callback sections: ``adapter`` (:class:`AdapterCallback`), ``monitor``
(:class:`AdapterMonitor`), ``faults`` (:class:`FaultTolerance`) and ``predictions``
(:class:`PredictionWriter`).

The task is chosen like the data: ``model.class_path`` names it (``genlora_pl.tasks.CausalLMModule``),
and a ``model`` section without one is a classifier (``ClassificationModule``), as configs have always
been. A classification data module decides ``num_classes`` and the class names (linked into the model);
every data module receives the model's ``backbone`` name (linked into the data) to pick transforms or
the tokenizer.

Run folders: ``fit`` writes logs, checkpoints, plots and ``results.json`` into a new version folder of
its loggers; ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues in that same folder (keeping
the ``metrics.csv`` rows up to the checkpoint, which Lightning's CSV logger would delete); a fit that
fails before its first optimizer step removes the folders it created; ``validate``, ``test`` and
``predict`` open no logger folder: they write ``<stage>_results.json`` or ``predictions.jsonl`` beside
the checkpoint's run, or nothing.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import json
import os
import re
import shutil
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

import genlora_pl.compat as compat
from genlora_pl.callbacks import AdapterCallback, AdapterMonitor, FaultTolerance, PredictionWriter
from genlora_pl.checkpoints import read_checkpoint, run_folder
from genlora_pl.console import ProgressBar, quiet
from genlora_pl.data import DataModule  # imports every data module: short class paths resolve
from genlora_pl.errors import missing_checkpoint, one_line
from genlora_pl.files import atomic_write_text
from genlora_pl.tasks import TASKS, AdapterTask, ClassificationModule, task_class

PROG = "python -m genlora_pl"
SIGTERM_EXIT = 143  # 128 + SIGTERM: what a scheduler expects from a job it stopped
EVALUATION = ("validate", "test", "predict")


def shipped_configs() -> Path:
    """The folder of the configs that ship inside the package (``configs/`` in a source checkout)."""
    return Path(str(resources.files("genlora_pl") / "configs"))


def resolve_config_names(argv: list[str]) -> list[str]:
    """``--config vit_cifar.yaml`` (or ``vit_cifar``) names a shipped config when no such file
    exists where the command runs; so does ``configs/vit_cifar.yaml``, the repository's path that
    the docs and SLURM scripts use, where no ``configs/`` folder holds it (the Docker image, an
    install outside the clone). A path that exists always wins."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            value, prefix, where = out[i + 1], "", i + 1
        elif arg.startswith("--config="):
            value, prefix, where = arg.split("=", 1)[1], "--config=", i
        else:
            continue
        path = Path(value)
        if path.exists() or (path.name != value and path.parent != Path("configs")):
            continue
        for name in (path.name, f"{path.name}.yaml"):
            shipped = shipped_configs() / name
            if shipped.is_file():
                out[where] = prefix + str(shipped)
                break
    return out


def check_config_files(argv: list[str]) -> None:
    """An empty ``--config`` file, or one that holds a list or a bare value instead of sections,
    gets a sentence naming the file (jsonargparse says ``Unexpected config:`` or prints the list's
    last item). Missing or unparsable files are left to the parser, which names them."""
    import yaml

    for i, arg in enumerate(argv):
        path = (
            argv[i + 1]
            if arg == "--config" and i + 1 < len(argv)
            else arg.split("=", 1)[1]
            if arg.startswith("--config=")
            else None
        )
        if path is None or not Path(path).is_file():
            continue
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if content is None:
            raise ValueError(
                f"the config file {path} is empty; give sections such as trainer:, model:, data:, adapter:."
            )
        if not isinstance(content, dict):
            raise ValueError(
                f"the config file {path} holds a YAML {type(content).__name__}, not a mapping of sections "
                "(trainer:, model:, data:, adapter:, ...)."
            )


#: What people type for a setting that has another name here (PEFT's, Hugging Face Trainer's, ...).
SYNONYMS = {
    "learning_rate": "model.optimizer.init_args.lr",
    "lr": "model.optimizer.init_args.lr",
    "weight_decay": "model.optimizer.init_args.weight_decay",
    "rank": "adapter.r",
    "lora_r": "adapter.r",
    "lora_alpha": "adapter.alpha",
    "lora_dropout": "adapter.dropout",
    "group_size": "adapter.options.group_size",
    "epochs": "trainer.max_epochs",
    "num_train_epochs": "trainer.max_epochs",
    "steps": "trainer.max_steps",
    "gpus": "trainer.devices",
    "seed": "seed_everything",
    "per_device_train_batch_size": "data.init_args.batch_size",
    "batch_size": "data.init_args.batch_size",
}


def _known_keys() -> list[str]:
    """Every setting the CLI takes, as a dotted key: trainer, the callback sections, and the init
    arguments of every registered task and data module."""
    import lightning as L

    def params(cls: Any) -> list[str]:
        return [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs")]

    keys = [f"trainer.{n}" for n in params(L.Trainer)]
    for section, cls in (("adapter", AdapterCallback), ("monitor", AdapterMonitor), ("faults", FaultTolerance)):
        keys += [f"{section}.{n}" for n in params(cls)]
    for cls in (AdapterTask, *TASKS.values()):
        keys += [f"model.init_args.{n}" for n in params(cls)]
    modules, seen = [DataModule], set()
    while modules:
        cls = modules.pop()
        if cls not in seen:
            seen.add(cls)
            keys += [f"data.init_args.{n}" for n in params(cls)]
            modules += cls.__subclasses__()
    return sorted(set(keys) | set(SYNONYMS.values()))


def explain_unknown_key(message: str, argv: list[str]) -> str:
    """An "unrecognized arguments" / "does not accept option" sentence with the key as it was given
    (on the command line, or in which --config file) and the closest setting that exists."""
    found = re.search(r"unrecognized arguments: --([\w.]+)|does not accept option '([\w.]+)'", message)
    if found is None:
        return message
    key = found.group(1) or found.group(2)
    section, _, leaf = key.rpartition(".")
    typed = next((a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0].endswith(f".{leaf}")), None)
    if typed and typed != f"--{key}":
        message = message.replace(f"--{key}", typed, 1)
    holder = None
    if typed is None:
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        holder = next((f for f in files if _yaml_has(f, key)), None)
        if holder:
            message += f" (in {holder})"
    guess = SYNONYMS.get(leaf.lower())
    if guess is None:
        close = difflib.get_close_matches(leaf.lower(), list(SYNONYMS), n=1, cutoff=0.8)
        guess = SYNONYMS[close[0]] if close else None
    if guess is None:  # only now: walking every task and data module's signature is the costly part
        known = _known_keys()
        same = [k for k in known if k.split(".")[0] == section.split(".")[0]] or known
        leaves = {k.rsplit(".", 1)[-1]: k for k in same}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
        guess = leaves[close[0]] if close else None
    if guess is None:
        return message
    return f"{message}; did you mean {guess}?" if holder else f"{message}; did you mean --{guess}?"


def _yaml_has(path: str, key: str) -> bool:
    import yaml

    try:
        node: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


class Parser(LightningArgumentParser):
    """Reports a bad command line or config in one line instead of a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", PROG)
        super().__init__(*args, **kwargs)

    #: The command line being parsed (``run`` sets it), to quote a bad key as the user typed it.
    argv: ClassVar[list[str]] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(
            f"error: {explain_unknown_key(one_line(ValueError(message)), self.argv)} (see `{PROG} fit --help`)\n"
        )
        self.exit(2)


class SaveConfigOnFit(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, for ``fit`` only: an evaluation run makes no folder."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def _attribute(name: str) -> Any:
    def read(data: Any) -> Any:
        return getattr(data, name, None)

    return read


def logger_entries(config: Any) -> list[Any]:
    """The logger entries (with ``init_args``) of a trainer config, whether it holds one or a list."""
    logger = config.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    return [e for e in entries if hasattr(e, "get") and e.get("init_args") is not None]


def _reopen_csv(logger: CSVLogger, step: int) -> None:
    """Open a CSV logger on the folder of a run it logged before, keeping the rows up to ``step``
    (Lightning's writer deletes an existing ``metrics.csv`` when it starts)."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= step]
    writer = logger.experiment  # created now: this is where it deletes the file
    writer.metrics_keys = sorted(header)
    writer.metrics = rows
    writer.save()


def requeue_id() -> str | None:
    """``slurm-<job id>`` (``slurm-<array job>_<task>``) when the sbatch scripts ask for requeue-safe
    runs (``GENLORA_PL_AUTO_RESUME=1``) inside a SLURM job, else None. A requeued job keeps its id, so
    its loggers reopen the same version folder, and its fit resumes from what the last attempt saved."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("GENLORA_PL_AUTO_RESUME", "0") in ("0", "", "false") or not job:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{array}_{task}" if array and task else f"slurm-{job}"


def requeued_checkpoint(fit: Any) -> str | None:
    """The newer (by modification time) of the SLURM requeue checkpoint Lightning writes on SIGUSR1
    (``<default_root_dir>/hpc_ckpt_<n>.ckpt``) and the ``last.ckpt`` of this job's run folder (written at
    epoch ends, every N steps, and on SIGTERM), or None on a job's first start."""
    job = requeue_id()
    root = Path(fit.trainer.get("default_root_dir") or ".")
    found = sorted(root.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))[-1:]
    for logger in logger_entries(fit.trainer):
        args = logger.init_args
        folder = (
            Path(args.get("save_dir") or root) / (args.get("name") or "lightning_logs") / (args.get("version") or job)
        )
        found += [p for p in [folder / "checkpoints" / "last.ckpt"] if p.exists()]  # a DCP last.ckpt is a folder
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    others = [str(p) for p in found if p != newest]
    if os.environ.get("SLURM_PROCID", "0") == "0":
        print(f"{job} restarted: resuming from {newest}" + (f" (newer than {', '.join(others)})" if others else ""))
    return str(newest)


class GenLoRACLI(LightningCLI):
    """LightningCLI with the ``adapter``, ``monitor``, ``faults`` and ``predictions`` sections
    always present (see the module docstring for where runs write)."""

    resume_step: int | None = None

    def _parse_ckpt_path(self) -> None:
        """A checkpoint's hyper-parameters become the model settings of this run (LightningCLI's
        behaviour), read once, through our safe reader (a damaged or hostile file is one sentence),
        and only those the checkpoint's task takes: a link such as a classifier's ``num_classes`` is
        recorded for every task, and a causal LM would refuse it."""
        subcommand = self.config.get("subcommand")
        if subcommand == "fit" and requeue_id() and not self.config.fit.get("ckpt_path"):
            self.config.fit.ckpt_path = requeued_checkpoint(self.config.fit)
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and not Path(path).exists() and "://" not in str(path):  # before Lightning says it restores it
            raise missing_checkpoint(path)
        if not (path and Path(path).is_file()):
            return
        checkpoint = read_checkpoint(path)
        self.resume_step = int(checkpoint.get("global_step", 0))
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        cls = (
            task_class(checkpoint.get("task"), hparams["_class_path"])
            if "_class_path" in hparams
            else ClassificationModule
        )
        accepted = set(inspect.signature(cls.__init__).parameters) | set(
            inspect.signature(AdapterTask.__init__).parameters
        )
        settings = {k: v for k, v in hparams.items() if k in accepted}
        model = {"class_path": hparams["_class_path"], "init_args": settings} if "_class_path" in hparams else settings
        self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)

    def _run_subcommand(self, subcommand: str) -> None:
        """Runs the subcommand; a fit that fails before its first optimizer step takes the run
        folders it created with it (a SIGTERM keeps them: it saved a checkpoint there)."""
        created = self._new_run_folders() if subcommand == "fit" else []
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if self.trainer.global_step == 0 and self.trainer.is_global_zero and not isinstance(err, SIGTERMException):
                for folder in created:
                    shutil.rmtree(folder, ignore_errors=True)
            raise

    def _new_run_folders(self) -> list[Path]:
        """The loggers' run folders that do not exist yet, each as its outermost missing folder."""
        folders = []
        for logger in self.trainer.loggers:
            if getattr(logger, "log_dir", None):
                folder = Path(logger.log_dir).absolute()
                if folder.exists():
                    continue
                while not folder.parent.exists():
                    folder = folder.parent
                folders.append(folder)
        return folders

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(AdapterCallback, "adapter")
        parser.add_lightning_class_args(AdapterMonitor, "monitor")
        parser.add_lightning_class_args(FaultTolerance, "faults")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.set_defaults({"model": {"class_path": "genlora_pl.tasks.ClassificationModule"}})
        parser.link_arguments("model.init_args.backbone", "data.init_args.backbone")
        # links into model settings only the task has (a classifier's num_classes, class_names)
        parser.link_arguments("data", "model.init_args.num_classes", _attribute("num_classes"), apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.class_names", _attribute("classes"), apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        compat.move_adapter_keys(config)
        if self.subcommand in EVALUATION:
            config.trainer.logger = False  # no new version folder for an evaluation
            # without a logger the checkpoint callbacks point elsewhere than in the fit: irrelevant here
            warnings.filterwarnings("ignore", message="The dirpath has changed")
        elif self.subcommand == "fit":
            job = requeue_id()
            for logger in logger_entries(config.trainer) if job else []:
                if logger.init_args.get("version") is None:  # one folder per job, kept across requeues
                    logger.init_args.version = job
            self._continue_in_run_folder(config)

    @staticmethod
    def _continue_in_run_folder(config: Any) -> None:
        """A resumed fit logs into the run folder its checkpoint came from, not a new version."""
        run = run_folder(config.get("ckpt_path"))
        if run is None or not run.is_dir():
            return
        for logger in logger_entries(config.trainer):
            args = logger.init_args
            root = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
            if args.get("version") is None and (root / run.name).absolute().is_dir():
                args.version = run.name

    def before_fit(self) -> None:
        if self.resume_step is None or run_folder(self.config.fit.get("ckpt_path")) is None:
            return
        # resuming in the run's own folder: Lightning would warn that it is not empty, and its CSV
        # logger would delete metrics.csv; keep the rows the checkpoint had seen
        warnings.filterwarnings("ignore", message=r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
        for logger in self.trainer.loggers:
            if isinstance(logger, CSVLogger) and self.trainer.is_global_zero:
                _reopen_csv(logger, self.resume_step)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = list(kwargs.pop("callbacks", None) or trainer_config.get("callbacks") or [])
        has_bar = any(type(c).__name__.endswith("ProgressBar") for c in callbacks)
        if trainer_config.get("enable_progress_bar", True) is not False and not has_bar:
            callbacks.append(ProgressBar())
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def _write_results(self, stage: str) -> None:
        run = run_folder(self.config[self.subcommand].get("ckpt_path"))
        if run is None or not run.is_dir() or not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in sorted(self.trainer.callback_metrics.items()) if v.numel() == 1}
        path = run / f"{stage}_results.json"
        atomic_write_text(path, json.dumps({"checkpoint": str(self.trainer.ckpt_path), "metrics": metrics}, indent=2))
        print(f"{stage} results written to {path}")

    def after_validate(self) -> None:
        self._write_results("validate")

    def after_test(self) -> None:
        self._write_results("test")


def _close_process_group() -> None:
    """End the distributed process group of a finished run. Left to the interpreter's exit, gloo's
    threads were torn down under a live group: one rank of a finished 2-process CPU run died with
    "terminate called without an active exception" (exit 134), and the job looked failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(args: list[str] | None = None, callbacks: list[Any] | None = None) -> GenLoRACLI:
    """Parse ``args`` (``sys.argv`` when None) and run the subcommand; ``callbacks`` join the trainer's
    own (``tune`` adds its pruning callback to each trial's fit this way)."""
    quiet()
    if args is None:
        sys.argv[1:] = resolve_config_names(sys.argv[1:])
    else:
        args = resolve_config_names(args)
    Parser.argv = list(sys.argv[1:] if args is None else args)
    check_config_files(sys.argv[1:] if args is None else args)
    try:
        cli = GenLoRACLI(
            AdapterTask,
            DataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigOnFit,
            save_config_kwargs={"overwrite": True},
            args=args,
            parser_class=Parser,
            auto_configure_optimizers=False,
            trainer_defaults={"callbacks": callbacks} if callbacks else None,
        )
        _close_process_group()
        return cli
    except SIGTERMException:  # a SystemExit with code 0 otherwise: the job would look finished
        raise SystemExit(SIGTERM_EXIT) from None
