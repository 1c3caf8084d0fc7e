"""What a user of the command line sees: our lines, not third-party chatter.

Every subcommand calls :func:`quiet` once. It drops messages that say nothing about the user's run
(Lightning's litlogger / litmodels advertisements, a ``_pytree`` deprecation inside Lightning,
torch's deprecation of how torchao registers its enums, transformers' weight-loading progress bars),
prints warnings as one ``warning: ...`` line instead of a file path and a source line, and installs
:class:`ProgressBar`, which shows ``Epoch 0 (max_steps 6)`` where a step-limited run would show
``Epoch 0/-2``. Nothing here changes a result.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

# (logger, a part of the message) of log lines that say nothing about the user's run: Lightning's
# advertisements; torch >= 2.10 on torchao's `register_constant` of its Enums, twice at every import of
# torchao (by peft and transformers as well as by a 4-bit base): torchao's to change, not the user's
_ADVERTS = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
)
# warnings that concern Lightning's or torch's own code, not the user's run
_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",  # lightning.pytorch.utilities._pytree on torch >= 2.10
    r".*'set_vital' is deprecated",  # torchdata 0.11
)


class _DropLines(logging.Filter):
    def __init__(self, part: str) -> None:
        super().__init__()
        self.part = part

    def filter(self, record: logging.LogRecord) -> bool:
        return self.part not in str(record.getMessage())


def _one_line_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    prefix = "deprecated" if issubclass(category, (FutureWarning, DeprecationWarning)) else "warning"
    return f"{prefix}: {str(message).strip()}\n"


def quiet() -> None:
    """Install the filters described in the module docstring (idempotent)."""
    for name, part in _ADVERTS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) and f.part == part for f in logger.filters):
            logger.addFilter(_DropLines(part))
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.formatwarning = _one_line_warning
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _step_description(trainer: Any, current_epoch: int) -> str:
    """``Epoch 2/9`` for an epoch-limited run, ``Epoch 0 (max_steps 6)`` for a step-limited one
    (Lightning's own bar shows ``Epoch 0/-2`` there)."""
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        return f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
    if trainer.max_steps and trainer.max_steps > 0:
        return f"Epoch {current_epoch} (max_steps {trainer.max_steps})"
    return f"Epoch {current_epoch}"


class RichStepProgressBar(RichProgressBar):
    """Lightning's rich bar, with :func:`_step_description` as the training description. Written to a
    file or a pipe (a batch job's log) it is 160 columns wide, not rich's 80, so the metrics are not
    cut off; :meth:`finish` draws it a last time before a summary is printed under it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        console = dict(kwargs.pop("console_kwargs", None) or {})
        if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
            console.setdefault("width", 160)
        super().__init__(*args, console_kwargs=console, **kwargs)

    def finish(self) -> None:
        self._stop_progress()

    def _get_train_description(self, current_epoch: int) -> str:
        description = _step_description(self.trainer, current_epoch)
        return f"{description:{len(self.validation_description)}}"


class TQDMStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with :func:`_step_description` as the training description (closed at
    the end of training, before the summary)."""

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_step_description(trainer, trainer.current_epoch))


ProgressBar = RichStepProgressBar if _RICH_AVAILABLE else TQDMStepProgressBar
