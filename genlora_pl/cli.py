"""``python -m genlora_pl {fit,validate,test,predict}``: LightningCLI over the module, the data
modules and the GenLoRA callback.

The data module decides ``num_classes`` (linked into the model) and receives the model's
``backbone`` name (linked into the data) to pick transforms or the tokenizer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genlora_pl.callback import GenLoRACallback  # imports genlora_pl.schedules too
from genlora_pl.checkpoints import read_checkpoint
from genlora_pl.data import ClassificationData  # imports every data module: short class paths resolve
from genlora_pl.errors import one_line
from genlora_pl.faults import FaultTolerance
from genlora_pl.module import ClassificationModule


class Parser(LightningArgumentParser):
    """Reports a bad command line or config in one line instead of a usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(f"error: {one_line(ValueError(message))} (see `python -m genlora_pl fit --help`)\n")
        self.exit(2)


class GenLoRACLI(LightningCLI):
    """LightningCLI with an ``adapter:`` section (the :class:`GenLoRACallback`) and a ``faults:``
    section (:class:`FaultTolerance`), both always present."""

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters before anything else, with torch's
        # own errors; read it through ours first so that a damaged or hostile file is one sentence.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            read_checkpoint(path)
        super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(GenLoRACallback, "adapter")
        parser.add_lightning_class_args(FaultTolerance, "faults")
        parser.link_arguments("model.backbone", "data.init_args.backbone")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


SIGTERM_EXIT = 143  # 128 + SIGTERM: what a scheduler expects from a job it stopped


def run(args: list[str] | None = None) -> GenLoRACLI:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return GenLoRACLI(
            ClassificationModule,
            ClassificationData,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            parser_class=Parser,
            auto_configure_optimizers=False,
        )
    except SIGTERMException:  # a SystemExit with code 0 otherwise: the job would look finished
        raise SystemExit(SIGTERM_EXIT) from None
